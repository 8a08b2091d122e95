"""The sweep's output folder: claimed with the run-folder marker and lock of `vpt train`
(:mod:`vpt.engine.rundir`), so a sweep and a run never share a folder.

- The marker ``.vpt_run`` says ``"kind": "sweep"``, the study it belongs to (``sweep``: study, storage,
  space) and a ``label`` that `vpt train` quotes when it refuses the folder.
- The OS lock is held SHARED by each of the study's workers (they share the folder legitimately); a
  `vpt train` (exclusive) there is refused while any worker runs, and by the marker afterwards.
- A sweep folder made before the marker holds ``sweep.json`` (its identity) instead; the same study
  claims it and writes the marker.
- Trials and final runs are `vpt train` runs in its subfolders.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Mapping, Optional

from ..engine.rundir import MARKER, RunLock, foreign_entries, read_marker
from ..errors import RunDirError

LEGACY_IDENTITY = "sweep.json"  # what a sweep folder held before it carried the marker (study, storage, space)


def folder_kind(path: str) -> Optional[str]:
    """"sweep", "train" (or another vpt tool's kind) from the marker, "sweep" for a pre-marker sweep folder,
    None for a folder that is neither."""
    kind = read_marker(path).get("kind")
    if kind is None and os.path.isfile(os.path.join(path, LEGACY_IDENTITY)):
        return "sweep"
    return kind


def claim_marker(path: str, content: Mapping[str, Any]) -> dict:
    """Write the marker unless one exists (atomically: the first of racing processes wins); return the marker
    the folder holds now."""
    marker = os.path.join(path, MARKER)
    if not os.path.exists(marker):
        tmp = os.path.join(path, f".{MARKER}.{os.getpid()}.tmp")  # a temporary name foreign_entries() passes over
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(dict(content), indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, marker)  # fails if another process claimed the folder first
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: exclusive create (a reader may briefly see it empty)
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(json.dumps(dict(content), indent=2) + "\n")
        finally:
            os.unlink(tmp)
    return read_marker(path)


def _check_before_claim(path: str) -> None:
    """Refuse a file, a `vpt train` run, or a folder of other files, before anything is written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"--output {path!r} is a file; choose a folder for the sweep")
    if not os.path.isdir(path):
        return
    kind = folder_kind(path)
    if kind not in (None, "sweep"):
        raise RunDirError(f"output folder {path!r} holds a vpt {kind} run; a sweep can't share its folder: "
                          f"choose another --output")
    others = foreign_entries(path) if kind is None else []
    if others:
        listed = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise RunDirError(f"output folder {path!r} is not a vpt sweep and holds other files ({listed}); "
                          f"choose a new or empty folder for the sweep")


def _legacy_identity(path: str) -> Optional[dict]:
    try:
        with open(os.path.join(path, LEGACY_IDENTITY), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def prepare_sweep_dir(path: str, identity: Dict[str, Any], command: str = "") -> RunLock:
    """Claim ``path`` for the sweep ``identity`` (study, storage, space) and return the lock, held SHARED:
    every worker of that study may hold it at once; a `vpt train` (exclusive) can't, and a folder that holds
    a run, another study's sweep or other files is refused. Release the lock when the worker ends."""
    _check_before_claim(path)
    os.makedirs(path, exist_ok=True)
    lock = RunLock(path).acquire(command, shared=True, kind="sweep")
    try:
        from ..version import __version__
        mine = {"vpt_run": 1, "kind": "sweep", "sweep": identity, "label": f"study {identity.get('study')!r}",
                "vpt_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        if not os.path.exists(os.path.join(path, MARKER)) and os.path.isfile(os.path.join(path, LEGACY_IDENTITY)):
            theirs = {"kind": "sweep", "sweep": _legacy_identity(path)}  # whose the pre-marker folder is
            if theirs["sweep"] == identity:
                theirs = claim_marker(path, mine)
        else:
            theirs = claim_marker(path, mine)
        if theirs.get("kind") != "sweep":
            raise RunDirError(f"output folder {path!r} holds a vpt train run; a sweep can't share its folder: "
                              f"choose another --output")
        if theirs.get("sweep") != identity:
            other = theirs.get("sweep") or {}
            raise RunDirError(f"output folder {path!r} is in use by another sweep (study {other.get('study')!r}, "
                              f"storage {other.get('storage')!r}"
                              + ("" if other.get("space") == identity.get("space") else ", another space")
                              + "): the workers of one study share a folder, other sweeps need their own. Run that "
                              "sweep's command to continue it, or choose another --output")
    except BaseException:
        lock.release()
        raise
    return lock


__all__ = ["prepare_sweep_dir", "claim_marker", "folder_kind", "LEGACY_IDENTITY"]
