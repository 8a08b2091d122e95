"""Tasks on the Hugging Face Hub, the loading side: fetch one task's files by its hub id, safely.

A task is data, never code, wherever it comes from. Loading ``hf://ORG/NAME[@REVISION]``:

- only the artifact's own files are fetched (``ALLOWED_FILES``: adapter_config.json,
  adapter_model.safetensors, README.md, results.json; never ``*.bin`` / ``*.pt`` / ``*.pkl`` or code);
- each file's size is checked against the repo's metadata BEFORE it is downloaded: the config, card and
  results against fixed bounds, the weights against the exact size of the tensors the (validated) config
  builds, and again on disk after the download;
- the revision is resolved to a commit once and every file comes from that commit (a branch that moves
  meanwhile can't mix two versions); ``Artifact.revision`` / ``source`` record it in results and predictions;
- the files then go through the same checks as a local folder (``vpt.artifact``), and the model card may
  not claim another base model than the config's backbone;
- ``HF_HUB_OFFLINE=1`` (read when vpt looks, not only at import) loads from the local cache
  (``HF_HUB_CACHE`` / ``HF_HOME``) without touching the network; a missing entry is a message, never a hang.

Pushing lives in ``vpt.hub_push`` (it reads artifacts, so it sits above ``vpt.artifact``; this module sits
below it). ``huggingface_hub`` is an optional dependency: ``pip install 'vpt[hub]'``.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from .errors import ArtifactError

_logger = logging.getLogger(__name__)

PREFIX = "hf://"
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, RESULTS_NAME = ("adapter_config.json", "adapter_model.safetensors",
                                                      "README.md", "results.json")
ALLOWED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, RESULTS_NAME)  # nothing else is ever fetched
MAX_CARD_BYTES = 1 << 20
MAX_RESULTS_BYTES = 16 << 20
_SHA = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


# --- hub ids ----------------------------------------------------------------------------------------
def is_hub_uri(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def as_hub_uri(spec: str) -> str:
    """``vpt.from_pretrained``'s argument: a local folder stays one; ``org/name`` that is no local path
    becomes ``hf://org/name`` (peft's ``from_pretrained("user/repo")``)."""
    if is_hub_uri(spec) or os.path.exists(spec):
        return spec
    if _REPO_ID.match(spec) and "/" in spec and ".." not in spec:
        return PREFIX + spec
    return spec


def parse_uri(spec: str, revision: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """``hf://org/name[@rev]`` (+ ``revision=``) -> (repo id, revision or None); ArtifactError otherwise."""
    body = spec[len(PREFIX):]
    repo_id, at, rev = body.partition("@")
    repo_id = repo_id.strip("/")
    if at and not rev:
        raise ArtifactError(f"{spec!r}: nothing after '@'; write hf://ORG/NAME@REVISION (a branch, tag or commit "
                            f"sha) or drop the '@'")
    if rev and revision is not None and rev != revision:
        raise ArtifactError(f"{spec!r} names revision {rev!r} but revision={revision!r} was given too; give one")
    if repo_id.count("/") > 1 or not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ArtifactError(f"{spec!r} is not a hub task id; write hf://ORG/NAME[@REVISION] (e.g. "
                            f"hf://my-org/cifar10-vpt-deep@main); tasks in subfolders of a repo are not supported")
    return repo_id, rev or revision


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError("sharing tasks on the Hugging Face Hub needs huggingface_hub: pip install 'vpt[hub]'") \
            from None
    return huggingface_hub


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now; huggingface_hub reads it once, at import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if value.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE) and not value
    except ImportError:
        return False


def endpoint() -> Optional[str]:
    """HF_ENDPOINT (a mirror, a private hub), read now; None: huggingface_hub's default."""
    return os.environ.get("HF_ENDPOINT") or None


def cache_dir() -> str:
    """The hub cache, with huggingface_hub's precedence, read now: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
    HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.path.expandvars(os.environ[var]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(os.path.expandvars(home)), "hub")


def _cached_revisions(repo_id: str, cache: str) -> List[str]:
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    out = []
    refs = os.path.join(folder, "refs")
    if os.path.isdir(refs):
        out += sorted(f"{r} -> {_read_small(os.path.join(refs, r))[:12]}" for r in os.listdir(refs)
                      if os.path.isfile(os.path.join(refs, r)))
    snaps = os.path.join(folder, "snapshots")
    if os.path.isdir(snaps):
        out += sorted(s[:12] for s in os.listdir(snaps))
    return out


def _read_small(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(100).strip()
    except OSError:
        return "?"


# --- loading ----------------------------------------------------------------------------------------
@dataclass
class HubFiles:
    """The files of one hub task at one commit, fetched on demand (``Artifact.hub``)."""
    repo_id: str
    commit: str
    directory: str  # the cache snapshot folder the files land in
    sizes: Optional[Dict[str, int]]  # the repo's metadata (None offline: the cached files are the source)
    token: Union[None, bool, str] = field(repr=False)  # never printed
    cache: str = ""

    @property
    def uri(self) -> str:
        return f"{PREFIX}{self.repo_id}@{self.commit}"

    def fetch(self, name: str, limit: int) -> Optional[str]:
        """``name`` (an ALLOWED_FILES entry) at this commit, at most ``limit`` bytes; None if the repo lacks it."""
        assert name in ALLOWED_FILES, name
        where = f"{self.uri} {name}"
        if self.sizes is not None:
            if name not in self.sizes:
                return None
            if self.sizes[name] is not None and self.sizes[name] > limit:
                raise ArtifactError(f"{where} is {self.sizes[name]:,} bytes, over the {limit:,} this file may have "
                                    f"(checked before downloading): the repo does not hold a vpt task as vpt "
                                    f"wrote it; nothing was downloaded")
        path = _download(self.repo_id, name, self.commit, self.token, self.cache, local_only=self.sizes is None)
        if path is None:
            return None
        size = os.stat(path).st_size
        if size > limit or (self.sizes is not None and self.sizes[name] is not None and size != self.sizes[name]):
            raise ArtifactError(f"{where}: {size:,} bytes on disk, the hub's metadata says "
                                f"{(self.sizes or {}).get(name)}, the limit is {limit:,}; delete it from the cache "
                                f"({path}) and load again")
        return path

    def fetch_extras(self, config: Dict[str, Any]) -> None:
        """The card (checked against the validated ``config``: it may not claim another backbone) and the
        run's results.json, when the repo has them."""
        card = self.fetch(CARD_NAME, MAX_CARD_BYTES)
        if card is not None:
            check_card(card, config, self.uri)
        self.fetch(RESULTS_NAME, MAX_RESULTS_BYTES)

    def fetch_weights(self, tensor_bytes: int, num_tensors: int) -> str:
        """The weights, refused before download when larger than the tensors the config builds need
        (plus a bounded safetensors header)."""
        limit = tensor_bytes + 8 + (64 << 10) + 1024 * num_tensors
        path = self.fetch(WEIGHTS_NAME, limit)
        if path is None:
            raise ArtifactError(f"{self.uri} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the task is incomplete "
                                f"(vpt loads safetensors only, never *.bin / *.pt)")
        return path


def _download(repo_id: str, name: str, commit: str, token, cache: str, local_only: bool) -> Optional[str]:
    hub = _hub()
    from huggingface_hub import errors
    try:
        return hub.hf_hub_download(repo_id, name, revision=commit, cache_dir=cache, token=token,
                                   local_files_only=local_only, endpoint=endpoint())
    except errors.LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: first)
        if local_only:
            if name in (CARD_NAME, RESULTS_NAME):
                return None
            raise ArtifactError(_offline_message(repo_id, commit, cache, f"{name} of commit {commit[:12]}")) from None
        raise ArtifactError(f"hf://{repo_id}@{commit[:12]}: {name} could not be downloaded and is not in the "
                            f"cache ({cache}); check the network and try again") from None
    except errors.EntryNotFoundError:
        return None
    except errors.HfHubHTTPError as e:
        raise ArtifactError(f"hf://{repo_id}@{commit[:12]}: downloading {name} failed ({str(e).splitlines()[0]}); "
                            f"try again later") from None
    except Exception as e:  # noqa: BLE001  (a dropped connection: a message, not a traceback)
        if not _is_network_error(e):
            raise
        raise ArtifactError(f"hf://{repo_id}@{commit[:12]}: the network failed while downloading {name} "
                            f"({type(e).__name__}); try again, or set HF_HUB_OFFLINE=1 to use what is cached") from None


def _offline_message(repo_id: str, revision: str, cache: str, what: str = "") -> str:
    have = _cached_revisions(repo_id, cache)
    return (f"HF_HUB_OFFLINE is set and hf://{repo_id}@{revision} {('(' + what + ') ') if what else ''}is not in the "
            f"hub cache {cache} (cached: {', '.join(have) if have else 'nothing of this repo'}); run once with "
            f"network access (unset HF_HUB_OFFLINE), set HF_HUB_CACHE to the cache that holds it, or pin a cached "
            f"revision (hf://{repo_id}@REVISION)")


def _is_network_error(e: BaseException) -> bool:
    mod = type(e).__module__ or ""
    return (type(e).__name__ in ("OfflineModeIsEnabled", "ConnectError", "ConnectTimeout", "ReadTimeout",
                                 "TimeoutException", "ConnectionError", "Timeout")
            or mod.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3", "socket"))


def _resolve_online(repo_id: str, revision: Optional[str], token) -> Tuple[str, Dict[str, Optional[int]]]:
    """(commit sha, {allowed file: size}) from the repo's metadata."""
    hub = _hub()
    from huggingface_hub import errors
    rev = revision or "main"
    try:
        info = hub.HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision, files_metadata=True, token=token)
    except errors.GatedRepoError:
        raise ArtifactError(f"hf://{repo_id} is gated: accept its conditions at https://huggingface.co/{repo_id} "
                            f"and log in (`hf auth login` or HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise ArtifactError(f"hf://{repo_id} has no revision {rev!r} (a branch, tag or commit sha): it may have "
                            f"moved (a rewritten branch drops its old commits); pick one at "
                            f"https://huggingface.co/{repo_id}/commits/main, or load the cached copy with "
                            f"HF_HUB_OFFLINE=1") from None
    except errors.RepositoryNotFoundError:
        raise ArtifactError(f"no hub repo hf://{repo_id}, or it is private and this machine is not logged in: "
                            f"check the id at https://huggingface.co/{repo_id}, or log in (`hf auth login` or "
                            f"HF_TOKEN) if it is yours") from None
    sha = getattr(info, "sha", None)
    if not sha:
        raise ArtifactError(f"the hub answered no commit for hf://{repo_id}@{rev}; try again later")
    sizes = {s.rfilename: getattr(s, "size", None) for s in (info.siblings or []) if s.rfilename in ALLOWED_FILES}
    return sha, sizes


def fetch_hub(spec: str, revision: Optional[str] = None, token: Union[None, bool, str] = None) -> "HubFiles":
    """``Artifact.open("hf://org/name[@rev]")``: resolve the commit and fetch the config into the cache; the
    returned ``HubFiles`` fetches the rest (``fetch_extras`` once the config is validated; the weights when
    first needed). This module never reads an artifact itself (``vpt.artifact`` does: imports go down)."""
    from .schema import MAX_CONFIG_BYTES

    repo_id, rev = parse_uri(spec, revision)
    _hub()
    cache = cache_dir()
    sizes: Optional[Dict[str, Optional[int]]] = None
    commit: Optional[str] = None
    if not offline():
        try:
            commit, sizes = _resolve_online(repo_id, rev, token)
        except ArtifactError:
            raise
        except Exception as e:  # noqa: BLE001  (only network / server failures fall back to the cache)
            from huggingface_hub import errors
            if not (_is_network_error(e) or isinstance(e, errors.HfHubHTTPError)):
                raise
            _logger.warning("cannot reach the Hugging Face Hub (%s: %s); looking in the cache %s", type(e).__name__,
                            str(e).splitlines()[0][:200] if str(e) else "", cache)
    if commit is None:
        commit = _cached_commit(repo_id, rev, cache)
    files = HubFiles(repo_id, commit, "", sizes, token, cache)
    if sizes is not None and CONFIG_NAME not in sizes:
        raise ArtifactError(f"{files.uri} holds no {CONFIG_NAME}: it is not a vpt task (peft adapters and other "
                            f"models load with their own libraries); check the id")
    config_path = files.fetch(CONFIG_NAME, MAX_CONFIG_BYTES)
    if config_path is None:
        raise ArtifactError(f"{files.uri} holds no {CONFIG_NAME}: it is not a vpt task; check the id")
    files.directory = os.path.dirname(config_path)
    return files


def _cached_commit(repo_id: str, revision: Optional[str], cache: str) -> str:
    """The commit a revision names in the local cache (refs/<branch or tag>, or a snapshot sha)."""
    rev = revision or "main"
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    if _SHA.match(rev):
        if os.path.isdir(os.path.join(folder, "snapshots", rev)):
            return rev
    else:
        ref = os.path.join(folder, "refs", *rev.split("/"))
        if os.path.isfile(ref):
            sha = _read_small(ref)
            if _SHA.match(sha) and os.path.isdir(os.path.join(folder, "snapshots", sha)):
                return sha
    raise ArtifactError(_offline_message(repo_id, rev, cache) if offline() else
                        f"cannot reach the Hugging Face Hub and hf://{repo_id}@{rev} is not in the cache {cache} "
                        f"(cached: {', '.join(_cached_revisions(repo_id, cache)) or 'nothing of this repo'}); check "
                        f"the network (or a proxy: HTTPS_PROXY) and try again")


def check_card(path: str, config: Dict[str, Any], uri: str) -> None:
    """A card may describe the task but not claim another backbone than the config it ships with."""
    from .backbones.hub_ids import base_model_id
    data = _card_data(path)
    if not data:
        return
    have = base_model_id(config["backbone"])
    claimed = data.get("base_model")
    claimed = claimed[0] if isinstance(claimed, list) and len(claimed) == 1 else claimed
    if claimed is not None and claimed != have:
        raise ArtifactError(f"{uri}: its model card claims base_model {claimed!r}, but its {CONFIG_NAME} names the "
                            f"backbone {config['backbone'].get('name')!r} ({have or 'no hub id'}); the card and the "
                            f"task disagree, so it is refused. Ask the author to fix the card (vpt push writes it)")
    vpt_meta = data.get("vpt") if isinstance(data.get("vpt"), dict) else {}
    if vpt_meta.get("backbone") not in (None, config["backbone"].get("name")):
        raise ArtifactError(f"{uri}: its model card says backbone {vpt_meta.get('backbone')!r}, its {CONFIG_NAME} "
                            f"{config['backbone'].get('name')!r}; the card and the task disagree, so it is refused")


def _card_data(path: str) -> Dict[str, Any]:
    """The card's YAML metadata (safe_load: data only); {} when there is none or it does not parse."""
    import yaml
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(MAX_CARD_BYTES + 1)
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        _logger.warning("%s: the card's metadata does not parse (%s); ignored", path, str(e).splitlines()[0])
        return {}
    return data if isinstance(data, dict) else {}
