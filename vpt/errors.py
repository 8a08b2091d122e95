"""The library's exception classes. Every message names the problem and the fix; the CLI (``vpt/cli.py``)
maps them to ``vpt COMMAND: error: ...`` and exit code 2, without a traceback.

All derive from :class:`VptError` (so ``except vpt.errors.VptError`` catches any of them) and from the
built-in class callers caught before this module existed (``ValueError`` / ``RuntimeError``).
This module imports nothing from vpt: every layer may raise these.
"""
from __future__ import annotations


class VptError(Exception):
    """Base of every error vpt raises for a problem the user can fix (config, data, files, weights)."""


class ConfigError(VptError, ValueError):
    """A config key or value that cannot be used; the message names it and the fix."""


class BackboneError(VptError, ValueError):
    """A backbone that can't be built or can't take the requested prompt."""


class ArtifactError(VptError, ValueError):
    """An artifact that cannot be loaded; the message names the file or field and the fix."""


class DataError(VptError, ValueError):
    """A data folder, CSV or annotation that can't be used; the message names the path and the fix."""


class AnnotationError(DataError):
    """A detection annotation that cannot be used; the message names the file and the fix."""


class CorruptImageError(VptError, RuntimeError):
    """An image file that can't be decoded while skipping is off (data.skip_corrupt: false)."""


class RunDirError(VptError, RuntimeError):
    """An output folder that can't be used as asked; the message gives the flag that fixes it."""


class ResumeError(VptError, RuntimeError):
    """A run state that can't be resumed; the message says why and what to do."""


class UserError(VptError, RuntimeError):
    """Any other problem with the user's input (paths, flags, files) that a message can explain."""


class DivergenceError(VptError, FloatingPointError):
    """Training produced a non-finite loss, gradient or weight; the message names the step, the value and
    the likely fix. Nothing non-finite was saved."""
