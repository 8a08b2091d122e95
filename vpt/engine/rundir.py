"""The run folder guard: never write into a folder that holds another run by accident."""
from __future__ import annotations

import logging
import os
import shutil

_logger = logging.getLogger(__name__)

# files and folders `vpt train` writes; their presence means "this folder holds a run"
RUN_FILES = ("config.yaml", "run_state.pt", "results.json", "metrics.csv", "train.log", "best", "last",
             "confusion_matrix.png", "tb")


from ..errors import RunDirError  # noqa: F401  (re-exported)


def holds_run(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in RUN_FILES[:4])


def prepare_run_dir(path: str, resume: bool = False, overwrite: bool = False) -> str:
    """Create ``path`` for a new run, or check it for a resume.

    A folder that already holds a run is refused unless ``resume`` (continue it) or ``overwrite``
    (delete the files an earlier `vpt train` wrote there; other files are left alone).
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"output path {path!r} is a file, not a folder; choose another --output")
    if resume:
        if not holds_run(path):
            raise RunDirError(f"--resume: {path!r} holds no run to resume; drop --resume to start a new run")
        return path
    if holds_run(path):
        if not overwrite:
            raise RunDirError(f"output folder {path!r} already holds a run; pass --resume to continue it, "
                              f"--overwrite to replace it, or choose another --output")
        for name in RUN_FILES:
            p = os.path.join(path, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.unlink(p)
        _logger.warning("--overwrite: removed the previous run's files from %s", path)
    os.makedirs(path, exist_ok=True)
    return path
