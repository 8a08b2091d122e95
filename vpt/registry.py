"""Name -> factory registries for prompt kinds, backbone families, heads, model types and tasks.

A new prompt kind is one file with its config dataclass and a ``@PROMPTS.register`` decorator, plus
its name -> module line in the registry's lazy map below (timm's ``@register_model``, peft's
one-folder-per-method layout). The lazy map lets a lookup import just the module it needs: ``import vpt``
imports no model code, so nothing can rely on an import having registered an entry as a side effect.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Iterator, Optional, Type, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """' did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    config_cls: Optional[Type] = None
    help: str = ""


class Registry(Generic[T]):
    """A small name -> entry map whose errors list the available names and the closest one."""

    def __init__(self, what: str, lazy: Optional[Dict[str, str]] = None):
        self.what = what
        self._entries: Dict[str, Entry[T]] = {}
        self._lazy = dict(lazy or {})  # name -> module that registers it when imported (optional deps)

    def _load(self, name: str) -> None:
        module = self._lazy.get(name)
        if module and name not in self._entries:
            importlib.import_module(module)

    def register(self, name: str, config_cls: Optional[Type] = None, help: str = "") -> Callable[[T], T]:
        if name != name.lower():
            raise ValueError(f"registry keys are lowercase, got {name!r}")

        def deco(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._entries[name] = Entry(name, factory, config_cls, help)
            return factory

        return deco

    def get(self, name: str) -> Entry[T]:
        self._load(name)
        try:
            return self._entries[name]
        except KeyError:
            avail = ", ".join(self.names())
            raise KeyError(
                f"unknown {self.what} {name!r}; available: {avail}{did_you_mean(name, self._entries)}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load(name)
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        for name in list(self._lazy):
            try:
                self._load(name)
            except ImportError:  # an optional dependency is missing: list what is usable
                pass
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self):
        return sorted(set(self._entries) | set(self._lazy))


# Every built-in entry names the module that registers it: a lookup imports just that module, so it works
# whatever was imported before (``import vpt`` itself imports none of them). A new kind adds itself here.
PROMPTS: Registry[Any] = Registry("prompt kind", lazy={
    "vpt_shallow": "vpt.prompts.tokens", "vpt_deep": "vpt.prompts.tokens", "vpt_prefix": "vpt.prompts.prefix",
    "pixel_pad": "vpt.prompts.pixel", "pixel_patch": "vpt.prompts.pixel",
    "coop": "vpt.prompts.text", "cocoop": "vpt.prompts.cocoop", "kgcoop": "vpt.prompts.kgcoop",
    "maple": "vpt.prompts.maple", "promptsrc": "vpt.prompts.promptsrc"})  # CLIP text prompts: model.text
HEADS: Registry[Any] = Registry("head kind", lazy={"linear": "vpt.heads.classification",
                                                   "mlp": "vpt.heads.classification"})
BACKBONES: Registry[Any] = Registry("backbone library", lazy={"timm": "vpt.backbones", "open_clip": "vpt.backbones",
                                                              "vpt": "vpt.weights"})
# artifact model_type -> class with from_config
MODEL_TYPES: Registry[Any] = Registry("model type", lazy={"classifier": "vpt.model", "clip": "vpt.clip",
                                                          "detection": "vpt.detection.model", "lora": "vpt.lora"})
# task name -> vpt.engine.task.Task subclass; each task file registers itself when imported
TASKS: Registry[Any] = Registry("task", lazy={"classification": "vpt.tasks.classification", "clip": "vpt.tasks.clip",
                                              "detection": "vpt.tasks.detection"})
