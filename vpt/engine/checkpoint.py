"""Run state (resume) and artifacts, written so that a failed write never replaces a good file.

- ``run_state.pt``: optimizer, scheduler, scaler, completed epoch, RNG, trainable tensors, best so far;
  written to a temp file, fsynced, then renamed (``vpt.io.atomic_write``); loaded with weights_only.
- artifacts (``best/``, ``last/``): saved into a temp folder, then swapped in with renames.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import torch

from ..io import atomic_write

_logger = logging.getLogger(__name__)
STATE_NAME = "run_state.pt"
STATE_VERSION = 2  # 2: one engine for every task; 'epoch' counts finished epochs


from ..errors import ResumeError  # noqa: F401  (re-exported)


def save_run_state(path: str, state: Dict[str, Any]) -> None:
    """Atomically write a run state dict (tensors, numbers, strings, lists, dicts)."""
    atomic_write(path, lambda tmp: torch.save({"version": STATE_VERSION, **state}, tmp))


def load_run_state(path: str) -> Dict[str, Any]:
    if os.path.isdir(path):
        path = os.path.join(path, STATE_NAME)
    if not os.path.isfile(path):
        raise ResumeError(f"no run state at {path!r}; --resume needs a run folder written by `vpt train` "
                          f"(it holds {STATE_NAME} after the first finished epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise ResumeError(f"run state {path!r} is unreadable ({type(e).__name__}: {e}); start again with "
                          f"--overwrite") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else None
        raise ResumeError(f"{path!r} is not a vpt run state of version {STATE_VERSION} (found version {found}; "
                          f"written by another vpt version); start the run again with --overwrite")
    return state


def save_artifact_atomic(model: Any, directory: str) -> None:
    """``model.save_pretrained`` into a sibling temp folder, then swap it in; the old folder survives a
    failure anywhere before the swap."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(directory) + ".", suffix=".tmp", dir=parent)
    old: Optional[str] = None
    try:
        model.save_pretrained(tmp)
        if os.path.exists(directory):
            old = directory + ".old"
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old and not os.path.exists(directory):
            os.replace(old, directory)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def trainable_tensors(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_tensors(model: torch.nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    unknown = sorted(n for n in tensors if n not in params)
    if missing or unknown:
        raise ResumeError(f"the run state does not fit this model (missing {missing[:4]}, unknown {unknown[:4]}); "
                          f"resume with the config the run was started with")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
