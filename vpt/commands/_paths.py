"""Checks of output paths given on the command line, made before any work is done (a wrong path should
not cost an evaluation)."""
from __future__ import annotations

import os

from ..errors import UserError


def check_output_file(path: str, flag: str, example: str) -> None:
    """``path`` can be written as a file: it is not a folder, and no part of its folder path is a file."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a folder; give the file to write, e.g. {os.path.join(path, example)}")
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {path!r}: {folder!r} is a file, not a folder; choose another path")
