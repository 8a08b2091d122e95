"""Name -> factory registries for prompt kinds, backbone families and heads.

A new prompt kind is one file with its config dataclass and a ``@PROMPTS.register`` decorator;
nothing else needs editing (timm's ``@register_model``, peft's one-folder-per-method layout).
"""
from __future__ import annotations

import difflib
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

    def __init__(self, what: str):
        self.what = what
        self._entries: Dict[str, Entry[T]] = {}

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
        try:
            return self._entries[name]
        except KeyError:
            avail = ", ".join(sorted(self._entries))
            raise KeyError(
                f"unknown {self.what} {name!r}; available: {avail}{did_you_mean(name, self._entries)}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self):
        return sorted(self._entries)


PROMPTS: Registry[Any] = Registry("prompt kind")
HEADS: Registry[Any] = Registry("head kind")
BACKBONES: Registry[Any] = Registry("backbone library")
MODEL_TYPES: Registry[Any] = Registry("model type")  # artifact model_type -> class with from_config
