"""Name -> entry registries for prompt kinds, backbone families, heads, model types and tasks.

A new prompt kind is one file in ``vpt/prompts/`` with its config dataclass and one decorator line,
``@PROMPTS.register("my_kind", MyConfig, help=...)``: the decorator is the only place its name is written
(peft's ``register_peft_method``, timm's ``@register_model``). The registry stamps the name on the config
class (``MyConfig.kind``) and on the modules it builds, and refuses a name registered twice.

``import vpt`` imports no model code. A registry with a built-in ``package`` imports every module of that
package on its first lookup or listing, so a lookup never depends on what was imported before; a module
whose optional dependency is missing is listed as unavailable with the pip command that installs it. The
registries whose entries live in heavy, separate modules (model types, tasks, backbone families) name the
module of each built-in entry instead, so a lookup imports just that one.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, Type, TypeVar

T = TypeVar("T")

# optional dependencies of built-in modules -> what installs them (the message of an unavailable entry)
PIP_NAMES = {"peft": "peft", "open_clip": "open_clip_torch", "torchvision": "torchvision", "optuna": "optuna",
             "faster_coco_eval": "faster-coco-eval", "pycocotools": "pycocotools", "albumentations": "albumentations"}


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


@dataclass(frozen=True)
class Unavailable:
    """A built-in module that could not be imported (an optional dependency is missing)."""
    module: str
    missing: str  # the missing import's name

    @property
    def fix(self) -> str:
        return f"pip install {PIP_NAMES.get(self.missing.split('.')[0], self.missing.split('.')[0])}"


def _stamp_kind(config_cls: Optional[Type], name: str, what: str) -> None:
    """``config_cls.kind = name`` for a config class of one kind (a class with a ``kind`` field, such as a
    head config that several kinds share, keeps its field)."""
    if config_cls is None:
        return
    if dataclasses.is_dataclass(config_cls) and "kind" in {f.name for f in dataclasses.fields(config_cls)}:
        return
    own = config_cls.__dict__.get("kind")
    if own is not None and own != name:
        raise ValueError(f"{config_cls.__name__} is already the config of {what} {own!r}; a config class "
                         f"belongs to one kind (subclass it for {name!r})")
    config_cls.kind = name


class Registry(Generic[T]):
    """A small name -> entry map whose errors list the available names and the closest one.

    ``package``: the built-in package whose modules register entries (all imported on first use);
    ``lazy``: built-in entry name -> the module that registers it (imported on lookup of that name).
    """

    def __init__(self, what: str, package: Optional[str] = None, lazy: Optional[Dict[str, str]] = None,
                 stamp_kind: bool = False):
        self.what = what
        self.package = package
        self.stamp_kind = stamp_kind
        self._entries: Dict[str, Entry[T]] = {}
        self._lazy = dict(lazy or {})
        self._unavailable: Dict[str, Unavailable] = {}
        self._scanned = package is None  # every module of the package imported
        self._scanning = False
        self._lock = threading.RLock()

    # --- built-in entries ---------------------------------------------------------------------------
    def _import(self, module: str) -> None:
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing = getattr(e, "name", None) or module
            if missing.startswith("vpt"):  # a bug in vpt itself, not a missing optional dependency
                raise
            self._unavailable[module] = Unavailable(module, missing)

    def _scan(self) -> None:
        """Import every module of the built-in package once (its decorators register the entries)."""
        if self._scanned:
            return
        with self._lock:  # another thread waits here until the scan is complete
            if self._scanned or self._scanning:  # done, or a lookup from a module this scan is importing
                return
            self._scanning = True
            try:
                pkg = importlib.import_module(self.package)
                for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
                    if not info.name.startswith("_"):
                        self._import(f"{self.package}.{info.name}")
                self._scanned = True
            finally:
                self._scanning = False

    def _load(self, name: str) -> None:
        self._scan()
        module = self._lazy.get(name)
        if module and name not in self._entries and module not in self._unavailable:
            self._import(module)

    # --- registration -------------------------------------------------------------------------------
    def register(self, name: str, config_cls: Optional[Type] = None, help: str = "") -> Callable[[T], T]:
        """Decorator: ``factory`` under ``name``; a name registered twice is refused (a typo or a clash)."""
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"{self.what} names are lowercase letters, digits and '_', got {name!r}")

        def deco(factory: T) -> T:
            with self._lock:
                if name in self._entries:
                    raise ValueError(f"{self.what} {name!r} is already registered (by "
                                     f"{getattr(self._entries[name].factory, '__module__', '?')}); choose another name")
                if self.stamp_kind:
                    _stamp_kind(config_cls, name, self.what)
                self._entries[name] = Entry(name, factory, config_cls, help)
            return factory

        return deco

    # --- lookup ---------------------------------------------------------------------------------------
    def get(self, name: str) -> Entry[T]:
        """The entry of ``name``; KeyError (available names, the closest one) for an unknown name, ImportError
        with the pip command for a built-in one whose optional dependency is missing."""
        self._load(name)
        module = self._lazy.get(name)
        if name not in self._entries and module in self._unavailable:
            u = self._unavailable[module]
            raise ImportError(f"{self.what} {name!r} needs {u.missing!r}, which is not installed: {u.fix}",
                              name=u.missing)
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; available: {', '.join(self.names())}"
                           f"{did_you_mean(name, self.names())}{self.unavailable_note()}") from None

    def __contains__(self, name: str) -> bool:
        self._load(name)
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        self._scan()
        for name in list(self._lazy):
            self._load(name)
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> List[str]:
        self._scan()
        return sorted(set(self._entries) | {n for n, m in self._lazy.items() if m not in self._unavailable})

    def unavailable(self) -> List[Unavailable]:
        """Built-in modules that could not be imported here, each with the pip command that fixes it."""
        list(iter(self))
        return sorted(self._unavailable.values(), key=lambda u: u.module)

    def unavailable_note(self) -> str:
        """' (not importable here: MODULE needs 'dep', pip install dep)' or ''."""
        if not self._unavailable:
            return ""
        return " (not importable here: " + "; ".join(f"{u.module} needs {u.missing!r}, {u.fix}"
                                                     for u in self._unavailable.values()) + ")"


# Prompt kinds and heads: every module of the package registers its own (one decorator line each).
PROMPTS: Registry[Any] = Registry("prompt kind", package="vpt.prompts", stamp_kind=True)
HEADS: Registry[Any] = Registry("head kind", package="vpt.heads")
# vision PEFT methods peft lacks (adapters, SSF, BitFit, ...): one module each in vpt/methods/
METHODS: Registry[Any] = Registry("method", package="vpt.methods", stamp_kind=True)
# These name the module of each built-in entry, so a lookup imports only that one (a classifier never
# imports the detection stack).
BACKBONES: Registry[Any] = Registry("backbone library", lazy={"timm": "vpt.backbones", "open_clip": "vpt.backbones",
                                                              "vpt": "vpt.weights"})
# artifact model_type -> class with from_config and its ``config_sections`` (the artifact fields it adds)
MODEL_TYPES: Registry[Any] = Registry("model type", lazy={"classifier": "vpt.model", "clip": "vpt.clip",
                                                          "detection": "vpt.detection.model", "lora": "vpt.lora",
                                                          "peft": "vpt.peft_model"})
# task name -> vpt.engine.task.Task subclass; each task file registers itself when imported
TASKS: Registry[Any] = Registry("task", lazy={"classification": "vpt.tasks.classification", "clip": "vpt.tasks.clip",
                                              "detection": "vpt.tasks.detection"})
