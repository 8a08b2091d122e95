"""Share a task on the Hugging Face Hub: ``push_to_hub(model_or_folder, repo_id)`` (also ``model.push_to_hub``
and ``vpt push``) uploads the artifact files, a run's ``results.json`` and a ``README.md`` made with
huggingface_hub's ``ModelCard``. The artifact is validated (``vpt.Artifact``) before anything is sent. Loading
by hub id is ``vpt.hub`` (through ``vpt.Artifact.open``). Needs ``pip install 'vpt[hub]'``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .errors import UserError
from .hub import (ALLOWED_FILES, CARD_NAME, CONFIG_NAME, PREFIX, RESULTS_NAME, WEIGHTS_NAME, _REPO_ID, _hub,
                  endpoint, offline)


PIPELINE_TAGS = {"classification": "image-classification", "clip": "image-classification",
                 "detection": "object-detection"}


def _run_parts(folder: str) -> Tuple[str, Optional[str]]:
    """(artifact folder, results.json or None): a run folder pushes best/ and its results; best/ inside a
    run pushes the run's results too; any other artifact folder pushes itself alone."""
    folder = os.path.abspath(folder)
    if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        results = os.path.join(os.path.dirname(folder), RESULTS_NAME)
        keep = os.path.basename(folder) == "best" and os.path.isfile(results)
        return folder, results if keep else None
    best = os.path.join(folder, "best")
    if os.path.isfile(os.path.join(best, CONFIG_NAME)):
        results = os.path.join(folder, RESULTS_NAME)
        return best, results if os.path.isfile(results) else None
    if not os.path.exists(folder):
        raise UserError(f"{folder!r} not found; pass a run folder (runs/NAME) or an artifact folder (runs/NAME/best)")
    raise UserError(f"{folder!r} is neither a run folder (with best/{CONFIG_NAME}) nor an artifact folder (with "
                    f"{CONFIG_NAME}); pass e.g. runs/NAME or runs/NAME/best")


def _metrics(results: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """{split: {metric: value, ..., 'num_samples': n}} of a results.json's val and test sections."""
    out: Dict[str, Dict[str, Any]] = {}
    for split in ("val", "test"):
        sec = (results or {}).get(split)
        if isinstance(sec, dict):
            keep = {k: v for k, v in sec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if keep:
                out[split] = keep
    return out


def make_card(config: Dict[str, Any], results: Optional[Dict[str, Any]], repo_id: str, task: str):
    """The task's ModelCard (huggingface_hub): metadata a hub search reads, and a page a person reads."""
    hub = _hub()
    from .backbones.hub_ids import base_model_id
    from .version import __version__
    bb = config["backbone"]
    prompt = config.get("prompt") or {}
    kind = prompt.get("kind") if isinstance(prompt, dict) else None
    text = config.get("text") or {}
    classes = list(config.get("class_names") or [])
    metrics = _metrics(results)
    tags = ["vpt", "visual-prompt-tuning", task] + [t for t in (kind, text.get("kind") if isinstance(text, dict)
                                                                else None, config.get("model_type")) if t]
    command = (results or {}).get("command")
    command = " ".join(command) if isinstance(command, list) else command
    eval_results = []
    for split, ms in metrics.items():
        for name, value in ms.items():
            if name in ("num_samples", "loss"):
                continue
            eval_results.append(hub.EvalResult(task_type=PIPELINE_TAGS.get(task, task), dataset_type="imagefolder",
                                               dataset_name=str((results or {}).get("data") or "imagefolder"),
                                               dataset_split=split, metric_type=name, metric_value=value))
    data = hub.ModelCardData(
        library_name="vpt", base_model=base_model_id(bb), pipeline_tag=PIPELINE_TAGS.get(task),
        tags=list(dict.fromkeys(tags)), model_name=repo_id.split("/")[-1], eval_results=eval_results or None,
        vpt={"version": __version__, "model_type": config.get("model_type", "classifier"), "task": task,
             "backbone": bb.get("name"), "weights_id": bb.get("weights_id"), "prompt": kind,
             "classes": classes, "metrics": metrics, "command": command})
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"A [vpt](https://pypi.org/project/vpt/) task ({task}): {kind or 'no'} prompt"
             f"{' + ' + text['kind'] + ' text context' if isinstance(text, dict) and text.get('kind') else ''} "
             f"on the frozen backbone `{bb.get('name')}` (weights `{bb.get('weights_id')}`). The files are data: "
             f"`adapter_config.json` + `adapter_model.safetensors`, loaded without unpickling anything.", "",
             "```bash", "pip install 'vpt[hub]'", f"vpt predict hf://{repo_id} IMAGE_OR_DIR", "```", "",
             "```python", "import vpt", f"model = vpt.from_pretrained(\"{repo_id}\")", "```", "",
             f"## Classes ({len(classes)})", "", ", ".join(f"`{c}`" for c in classes[:200])
             + (f" ... ({len(classes) - 200} more)" if len(classes) > 200 else ""), ""]
    if metrics:
        keys = sorted({k for m in metrics.values() for k in m} - {"num_samples"}) + ["num_samples"]
        lines += ["## Metrics", "", "| split | " + " | ".join(keys[:-1]) + " | images |",
                  "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {s} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |" for s, m in metrics.items()]
        lines += [""]
    if command:
        lines += ["## Training", "", "```bash", str(command), "```", ""]
    lines += [f"Made with vpt {__version__}."]
    return hub.ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@dataclass
class PushResult:
    repo_id: str
    commit: str
    url: str

    @property
    def uri(self) -> str:
        return f"{PREFIX}{self.repo_id}@{self.commit}"


def push_to_hub(source, repo_id: str, private: Optional[bool] = None, revision: Optional[str] = None,
                commit_message: Optional[str] = None, token: Optional[str] = None,
                create_pr: bool = False) -> PushResult:
    """Upload a task: ``source`` is a model (saved first), an artifact folder or a run folder (its best/
    artifact plus results.json). Returns the commit (``PushResult.uri`` = ``hf://repo@commit`` loads exactly
    it). The artifact is validated before anything is uploaded."""
    from .artifact import Artifact
    hub = _hub()
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or "/" not in repo_id or ".." in repo_id:
        raise UserError(f"{repo_id!r} is not a hub repo id; write ORG/NAME (your user name or an organisation, "
                        f"then the repo's name), e.g. my-org/cifar10-vpt-deep")
    if offline():
        raise UserError("HF_HUB_OFFLINE is set: pushing needs the network; unset HF_HUB_OFFLINE")
    token = token or hub.get_token()
    if not token:
        raise UserError("pushing to the Hugging Face Hub needs a token: run `hf auth login`, or set HF_TOKEN to a "
                        "token with write access (https://huggingface.co/settings/tokens)")
    with tempfile.TemporaryDirectory(prefix="vpt-push-") as tmp:
        if isinstance(source, (str, os.PathLike)):
            folder, results_path = _run_parts(os.fspath(source))
        else:
            folder, results_path = os.path.join(tmp, "artifact"), None
            source.save_pretrained(folder)
        art = Artifact.open(folder)
        art.inspect()  # everything a loader would refuse, refused before the upload
        results = None
        if results_path:
            with open(results_path, encoding="utf-8") as f:
                results = json.load(f)
        card = make_card(art.config, results, repo_id, art.task)
        staged = os.path.join(tmp, "upload")
        os.makedirs(staged)
        shutil.copyfile(os.path.join(folder, WEIGHTS_NAME), os.path.join(staged, WEIGHTS_NAME))
        with open(os.path.join(folder, CONFIG_NAME), encoding="utf-8") as f:
            raw = json.load(f)
        bb = raw.get("backbone") or {}
        if bb.get("weights_file"):  # a hint only (the sha256 decides): the upload names no local folders
            bb["weights_file"] = os.path.basename(bb["weights_file"])
        with open(os.path.join(staged, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=2)
        if results_path:
            shutil.copyfile(results_path, os.path.join(staged, RESULTS_NAME))
        card.save(os.path.join(staged, CARD_NAME))
        ops = [hub.CommitOperationAdd(path_in_repo=n, path_or_fileobj=os.path.join(staged, n))
               for n in ALLOWED_FILES if os.path.isfile(os.path.join(staged, n))]
        api = hub.HfApi(token=token, endpoint=endpoint())
        from huggingface_hub import errors
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
            info = api.create_commit(repo_id, operations=ops, token=token, revision=revision, create_pr=create_pr,
                                     commit_message=commit_message or f"vpt {art.task} task ({art.model_type}, "
                                                                      f"{art.backbone.get('name')})")
        except errors.HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                raise UserError(f"the hub refused the push to {repo_id} ({status}): the token can't write there; "
                                f"use a token with write access to {repo_id.split('/')[0]} (`hf auth login`)") from None
            raise UserError(f"the push to {repo_id} failed: {str(e).splitlines()[0]}") from None
    commit = getattr(info, "oid", None) or ""
    return PushResult(repo_id, commit, getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
