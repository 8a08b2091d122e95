"""The tasks a server holds, and how one batch of requests for many of them runs (engine-independent:
the LitServe worker and the Ray Serve replica both hold one ``TaskPool``).

- Tasks whose artifacts name the same backbone (name, ``weights_id`` = hub tag or ``file:<sha256>`` of the
  weights file, model kwargs) share ONE backbone object (``backbones``).
- Classifiers (``vpt.PromptedModel``) on one backbone with the same preprocessing form a group, one
  ``vpt.MultiTaskModel``: a batch mixing their requests runs in one forward pass (per-sample prompts and heads).
- Other models (CLIP, detection) run each on its own: their requests in a batch form one forward per task.

Every request's answer is a dict: ``{"status": 200, ...}`` or ``{"status": 4xx, "error": "..."}``; a bad
request never fails the rest of its batch.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..artifact import Artifact
from ..errors import ArtifactError
from ..schema import DEFAULT_MAX_PARAMS
from .images import ImageInputError, decode_image

_logger = logging.getLogger(__name__)


def backbone_key(art: Artifact) -> str:
    """What makes two artifacts' backbones the same object: name, weights id (hub tag or file sha256), kwargs."""
    bb = art.backbone
    return json.dumps([bb.get("name"), bb.get("weights_id"), bb.get("model_kwargs") or {}], sort_keys=True)


def task_info(name: str, art: Artifact, path: str, max_params: int = DEFAULT_MAX_PARAMS) -> Dict[str, Any]:
    """What ``GET /tasks`` lists for a task: read from the artifact, measured on the meta device (nothing
    built); raises ArtifactError for anything loading would refuse (``vpt inspect``'s checks)."""
    report = art.inspect(max_params=max_params)
    bb = art.backbone
    return {"name": name, "model_type": art.model_type, "task": art.task, "classes": art.class_names,
            "num_classes": art.num_classes, "backbone": {"name": bb.get("name"), "weights_id": bb.get("weights_id")},
            "artifact": path, "artifact_sha256": _sha256(art.weights_path),
            "trainable_parameters": report["parameters"]["trainable"],
            "tensor_bytes": sum(_numel(t["shape"]) * _itemsize(t["dtype"]) for t in report["tensors"])}


def _sha256(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
            "BOOL": 1}.get(str(dtype), 4)


@dataclass
class _Task:
    name: str
    backbone: str  # backbone_key: the artifact itself is not kept (its meta-device model would cost memory)
    model: torch.nn.Module
    group: Optional[Tuple[str, str]]  # (backbone key, preprocessing) for classifiers sharing a MultiTaskModel
    transform: Any
    kind: str  # "classification" | "detection"
    class_names: List[str] = field(default_factory=list)


class TaskPool:
    """Loaded tasks on shared backbones; ``run(requests)`` answers one mixed batch. Thread-safe for load /
    unload against run (one lock: a task is never dropped in the middle of a batch that uses it)."""

    def __init__(self, device: str = "cpu", max_params: int = DEFAULT_MAX_PARAMS, weights: Optional[str] = None):
        self.device = torch.device(device)
        self.max_params, self.weights = max_params, weights
        self.tasks: Dict[str, _Task] = {}
        self.backbones: Dict[str, Any] = {}  # backbone key -> the one adapter object
        self.groups: Dict[Tuple[str, str], Any] = {}  # (backbone key, preprocessing) -> MultiTaskModel
        self._transforms: Dict[str, Any] = {}
        self._lock = threading.RLock()

    # --- loading ------------------------------------------------------------------------------------------
    def load(self, name: str, path: str) -> Dict[str, Any]:
        """Load (or replace) task ``name`` from the artifact folder ``path``; ArtifactError names the problem."""
        from ..model import PromptedModel
        from ..multitask import BASE, MultiTaskModel
        if name == BASE:
            raise ArtifactError(f"'{BASE}' is reserved for the plain backbone; pick another task name")
        art = Artifact.open(path)
        info = task_info(name, art, path, self.max_params)
        key = backbone_key(art)
        with self._lock:
            shared = self.backbones.get(key)
            model = art.load(weights=self.weights, max_params=self.max_params, backbone=shared)
            model.eval()
            if shared is None and getattr(model, "backbone", None) is not None:
                self.backbones[key] = model.backbone.to(self.device)
            model.to(self.device)
            if name in self.tasks:  # a replacement: the old one goes once the new one has loaded
                self._drop(name)
                if getattr(model, "backbone", None) is not None:
                    self.backbones.setdefault(key, model.backbone)
            if isinstance(model, PromptedModel):
                pre = repr(model.data_config)
                gkey = (key, pre)
                group = self.groups.get(gkey)
                if group is None:
                    self.groups[gkey] = MultiTaskModel({name: model})
                else:
                    group.tasks[name] = model
                self.tasks[name] = _Task(name, key, model, gkey, self._transform(model.data_config), "classification",
                                         list(model.class_names or [str(i) for i in range(model.num_classes)]))
            elif art.task == "detection":
                self.tasks[name] = _Task(name, key, model, None, None, "detection")
            else:  # CLIP and other classifiers that are not PromptedModel: one forward per task
                names = getattr(model, "class_names", None) or [str(i) for i in range(int(art.num_classes or 0))]
                self.tasks[name] = _Task(name, key, model, None, self._transform(model.data_config), "classification",
                                         list(names))
        return info

    def _transform(self, data_config):
        """One EvalTransform per preprocessing, shared by the tasks that use it."""
        from ..data.transforms import EvalTransform
        key = repr(data_config)
        if key not in self._transforms:
            self._transforms[key] = EvalTransform(data_config)
        return self._transforms[key]

    def unload(self, name: str) -> bool:
        with self._lock:
            if name not in self.tasks:
                return False
            self._drop(name)
            return True

    def _drop(self, name: str) -> None:
        t = self.tasks.pop(name)
        if t.group is not None:
            group = self.groups[t.group]
            del group.tasks[name]
            if not len(group.tasks):
                del self.groups[t.group]
        used = {x.backbone for x in self.tasks.values()}
        for key in [k for k in self.backbones if k not in used]:
            del self.backbones[key]  # the last task on a backbone frees it

    # --- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, requests: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """``[{"task", "image": bytes, "top_k", "score_thresh"}]`` -> one answer dict per request (module doc)."""
        out: List[Optional[Dict[str, Any]]] = [None] * len(requests)
        with self._lock:
            prepared: Dict[Any, List[Tuple[int, Any]]] = {}  # group key or task name -> [(request, input)]
            for i, r in enumerate(requests):
                t = self.tasks.get(r.get("task"))
                if t is None:
                    out[i] = {"status": 404, "error": f"task {r.get('task')!r} is not loaded (it was removed while "
                                                      f"the request waited); loaded: {', '.join(self.names()) or 'none'}"}
                    continue
                try:
                    img = decode_image(r["image"], r.get("max_pixels"))
                except ImageInputError as e:
                    out[i] = {"status": e.status, "error": str(e)}
                    continue
                if t.kind == "detection":
                    import numpy as np
                    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
                else:
                    x = t.transform(img)
                prepared.setdefault(t.group if t.group is not None else t.name, []).append((i, x))
            for key, items in prepared.items():
                rows = [i for i, _ in items]
                if isinstance(key, tuple):
                    self._run_group(key, rows, [x for _, x in items], requests, out)
                else:
                    self._run_single(self.tasks[key], rows, [x for _, x in items], requests, out)
        return out  # type: ignore[return-value]

    def _run_group(self, key, rows, xs, requests, out) -> None:
        model = self.groups[key]
        names = [requests[i]["task"] for i in rows]
        logits = model(torch.stack(xs).to(self.device), names)
        for i, name, lg in zip(rows, names, logits):
            out[i] = _classes(self.tasks[name], lg, requests[i])

    def _run_single(self, t: _Task, rows, xs, requests, out) -> None:
        if t.kind == "detection":
            for i, res in zip(rows, t.model([x.to(self.device) for x in xs])):
                thresh = requests[i].get("score_thresh")
                thresh = 0.3 if thresh is None else float(thresh)
                dets = [{"label": t.model.label_name(lab), "index": int(lab), "score": float(s),
                         "xyxy": [round(float(v), 2) for v in b]}
                        for b, s, lab in zip(res["boxes"].cpu(), res["scores"].cpu(), res["labels"].cpu())
                        if float(s) >= thresh]
                out[i] = {"status": 200, "task": t.name, "detections": dets}
            return
        logits = t.model(torch.stack(xs).to(self.device))
        for i, lg in zip(rows, logits):
            out[i] = _classes(t, lg, requests[i])

    def names(self) -> List[str]:
        return list(self.tasks)


def _classes(t: _Task, logits: torch.Tensor, request: Dict[str, Any]) -> Dict[str, Any]:
    """Top-k of one sample's logits, rounded as ``vpt predict`` rounds them."""
    names = t.class_names
    k = min(int(request.get("top_k") or 5), len(names))
    p, c = logits.float().cpu().softmax(dim=-1).topk(k)
    return {"status": 200, "task": t.name,
            "predictions": [{"label": names[ci], "index": ci, "score": round(pi, 6)}
                            for pi, ci in zip(p.tolist(), c.tolist())]}



def handle_batch(pool: TaskPool, items: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One batch from the queue: admin operations (``op`` load / unload) first, in arrival order, then every
    prediction in one ``pool.run``. Each answer carries ``batch_id``, ``batch_size`` (predictions in the
    batch) and ``queue_s`` (arrival -> batch start) for the server's metrics."""
    import time
    import uuid
    start = time.time()
    out: List[Optional[Dict[str, Any]]] = [None] * len(items)
    preds = []
    for i, it in enumerate(items):
        op = it.get("op", "predict")
        if op == "predict":
            preds.append(i)
        elif op == "load":
            try:
                out[i] = {"status": 200, "info": pool.load(it["task"], it["path"])}
            except ArtifactError as e:
                out[i] = {"status": 422, "error": f"{it['path']}: {e}"}
        elif op == "unload":
            out[i] = {"status": 200 if pool.unload(it["task"]) else 404, "tasks": pool.names()}
        elif op == "names":
            out[i] = {"status": 200, "tasks": pool.names()}
        else:
            out[i] = {"status": 422, "error": f"unknown operation {op!r}"}
    if preds:
        for i, ans in zip(preds, pool.run([items[i] for i in preds])):
            out[i] = ans
    bid = uuid.uuid4().hex
    for i, it in enumerate(items):
        out[i].update(batch_id=bid, batch_size=len(preds), queue_s=start - float(it.get("t", start)))
    return out  # type: ignore[return-value]
