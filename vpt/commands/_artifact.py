"""Flags shared by the commands that load an artifact (``vpt predict``, ``vpt eval``, ``vpt inspect``)."""
from __future__ import annotations

import argparse

from ..errors import UserError


def add_artifact_flags(p: argparse.ArgumentParser) -> None:
    """``--weights FILE`` and ``--max-params N``: how an artifact's backbone is found and how big a model may be."""
    from ..schema import DEFAULT_MAX_PARAMS
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if the artifact's has moved")
    p.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS,
                   help=f"refuse artifacts whose model (backbone included) has more parameters + buffers than "
                        f"this (default {DEFAULT_MAX_PARAMS:,}); the artifact itself can't raise it")


def check_max_params(value: int) -> int:
    if value < 1:
        raise UserError(f"--max-params must be a positive number of parameters, got {value}; the default is the "
                        f"safe limit, raise it only for an artifact you trust")
    return value
