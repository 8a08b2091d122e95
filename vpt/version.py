"""The package version, in a module of its own so that any layer can read it without importing ``vpt``."""
from __future__ import annotations

import functools
import os
import subprocess
from typing import Optional

__version__ = "0.1.0"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def source_commit(package_dir: str = _PACKAGE_DIR) -> Optional[str]:
    """The git commit of the vpt source this process runs, with ``-dirty`` when tracked files differ from it;
    None when vpt is not run from a git checkout of itself (an installed wheel, an archive, no git).

    Results files record it beside ``__version__``, which does not change between commits. Only a work tree
    whose top level holds this very package counts, so vpt installed inside some other repository reports
    None rather than that repository's commit."""
    def git(*args: str) -> Optional[str]:
        try:
            # core.fsmonitor off: a repository's config could name a program for `git status` to run
            out = subprocess.run(["git", "-c", "core.fsmonitor=false", "-C", package_dir, *args], capture_output=True,
                                 text=True, timeout=10, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or os.path.realpath(os.path.join(top, os.path.basename(package_dir))) != os.path.realpath(package_dir):
        return None
    head = git("rev-parse", "HEAD")
    if not head:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return head if status == "" else f"{head}-dirty"
