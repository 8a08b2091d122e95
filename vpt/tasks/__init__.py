"""Tasks: one file each (classification, clip, detection), each a :class:`vpt.engine.Task` subclass
registered in ``vpt.registry.TASKS``; the engine trains any of them. A new task is one new file with its
run config and a ``@TASKS.register(name)`` class, plus one entry in ``TASKS``'s lazy map (or an import)."""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import TASKS


def task_class(name: str) -> type:
    """The Task subclass registered under ``name``; ConfigError lists the available tasks."""
    try:
        return TASKS.get(str(name)).factory
    except KeyError as e:
        raise ConfigError(f"task: {e.args[0]}") from None


__all__ = ["TASKS", "task_class"]
