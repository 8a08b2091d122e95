"""Tasks: one file each (classification, clip, detection), each a :class:`vpt.engine.Task` subclass
registered in ``vpt.registry.TASKS``; the engine trains any of them. A new task is one new file with its
run config and a ``@TASKS.register(name)`` class, plus one entry in ``TASKS``'s lazy map (or an import).

Which task evaluates / predicts a saved artifact is said by its model class (``task = "classification"``
on ``PromptedModel``, read through ``vpt.Artifact.task``): :func:`task_for_artifact` imports that one task
and no other."""
from __future__ import annotations

from typing import Any, Optional

from ..errors import ConfigError
from ..registry import TASKS


def task_class(name: str) -> type:
    """The Task subclass registered under ``name``; ConfigError lists the available tasks."""
    try:
        return TASKS.get(str(name)).factory
    except KeyError as e:
        raise ConfigError(f"task: {e.args[0]}") from None


def task_for_artifact(artifact: Any, name: Optional[str] = None) -> type:
    """The Task subclass that evaluates ``artifact`` (a :class:`vpt.Artifact`): the task its model class names.
    ``name`` (``--task``) may choose that task or one it derives from (``classification`` evaluates ``clip``
    artifacts too); any other is a ConfigError that names the artifact's own task."""
    own = task_class(artifact.task)
    if name is None or name == artifact.task:
        return own
    chosen = task_class(name)
    if not issubclass(own, chosen):
        raise ConfigError(f"{artifact.directory} holds a {artifact.model_type!r} model of task {artifact.task!r}, "
                          f"which task {name!r} does not evaluate; drop --task (the artifact names its own task) "
                          f"or pass --task {artifact.task}")
    return chosen


__all__ = ["TASKS", "task_class", "task_for_artifact"]
