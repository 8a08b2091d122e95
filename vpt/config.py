"""Typed configs: dataclasses that check themselves. YAML is parsed only in the CLI.

- ``from_dict`` turns a plain dict into a (possibly nested) dataclass and refuses unknown keys with the
  closest valid name; only loading an old saved artifact may drop unknown keys (``strict=False``), with a
  warning.
- ``option(default, help, range=, choices=)`` declares a field with its help (``vpt list``) and its bounds;
  a config class derives from :class:`Checked`, whose ``__post_init__`` enforces them (peft's
  ``PromptTuningConfig`` style), so a config is valid however it was made: a recipe, an artifact, Python.
- ``one_of(spec)`` marks a polymorphic section (``model.prompt``): ``from_dict`` resolves it by its ``kind``
  key through a registry to that kind's config class, so a recipe is typed when it is loaded.

Errors name the field by its full path (``model.prompt.num_tokens``): a check raises :class:`FieldError`
with the path inside its class, and every enclosing ``from_dict`` puts its section in front.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

from .registry import HEADS, METHODS, PROMPTS, Registry, did_you_mean

_logger = logging.getLogger(__name__)
C = TypeVar("C")


from .errors import ConfigError  # noqa: F401  (re-exported: vpt.config.ConfigError)

_MISSING = dataclasses.MISSING


class FieldError(ConfigError):
    """A ConfigError about one field: ``before + path + after``; ``under(section)`` prefixes the path."""

    def __init__(self, path: str, after: str, before: str = ""):
        self.path, self.before, self.after = path, before, after
        super().__init__(f"{before}{path}{after}")

    def under(self, section: str) -> "FieldError":
        return FieldError(f"{section}.{self.path}" if section else self.path, self.after, self.before)


# --- declaring fields ----------------------------------------------------------------------------------
def option(default: Any = _MISSING, help: str = "", range: Optional[Tuple[Optional[float], Optional[float]]] = None,
           choices: Optional[Sequence[Any]] = None, default_factory: Any = _MISSING, **meta: Any) -> Any:
    """A dataclass field with its help text and checks: ``range=(lo, hi)`` (inclusive; None: unbounded; a
    third item ``'[)'``, ``'(]'`` or ``'()'`` excludes an end; for a list, each item) and ``choices``. :class:`Checked` enforces them; ``vpt list`` and the artifact schema
    read them."""
    metadata = {"help": help, **meta}
    if range is not None:
        metadata["range"] = tuple(range)
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_range(rng: Tuple[Any, ...]) -> str:
    """'in [0, 1)', '> 0', '>= 1' for a declared range ``(lo, hi[, '[]' | '[)' | '(]' | '()'])``."""
    lo, hi, ends = (tuple(rng) + ("[]",))[:3]
    if lo is not None and hi is not None:
        return f"in {ends[0]}{_fmt(lo)}, {_fmt(hi)}{ends[1]}"
    if lo is not None:
        return f"{'>=' if ends[0] == '[' else '>'} {_fmt(lo)}"
    return f"{'<=' if ends[1] == ']' else '<'} {_fmt(hi)}"


def in_range(x: float, rng: Tuple[Any, ...]) -> bool:
    lo, hi, ends = (tuple(rng) + ("[]",))[:3]
    if not math.isfinite(x):
        return False
    if lo is not None and (x < lo or (ends[0] == "(" and x == lo)):
        return False
    return not (hi is not None and (x > hi or (ends[1] == ")" and x == hi)))


def field_meta(cls: type, name: str) -> Mapping[str, Any]:
    """The declaration metadata of field ``name``: its own, or the closest base class's when a subclass only
    changed the default (``epochs: int = 12`` in a task's train section keeps the base's help and range)."""
    for base in cls.__mro__:
        f = getattr(base, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return f.metadata
    return {}


def check_fields(cfg: Any) -> None:
    """Check every field of dataclass instance ``cfg`` against its declared ``range`` / ``choices``; a
    FieldError names the field, the allowed values and what was given."""
    for f in dataclasses.fields(cfg):
        meta = field_meta(type(cfg), f.name)
        rng, choices = meta.get("range"), meta.get("choices")
        if rng is None and choices is None:
            continue
        value = getattr(cfg, f.name)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) and rng is not None else [value]
        for item in items:
            if choices is not None and item not in choices:
                raise FieldError(f.name, f" must be one of {', '.join(repr(c) for c in choices)}, got {item!r}"
                                         f"{did_you_mean(item, choices)}")
            if rng is not None:
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise FieldError(f.name, f" must be a number, got {item!r}")
                if not in_range(item, rng):
                    raise FieldError(f.name, f" must be {describe_range(rng)}, got {item!r}; fix the value")


class Checked:
    """Mixin of a config dataclass: ``__post_init__`` checks the declared ranges and choices, then
    ``check()`` (the class's own conflicts; raise FieldError naming the field)."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        pass


def field_help(cls: type) -> Dict[str, str]:
    """Field name -> its help text plus choices / bounds, for ``vpt list`` and docs."""
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = field_meta(cls, f.name)
        text = meta.get("help", "")
        if "choices" in meta:
            text += f" ({' | '.join(str(c) for c in meta['choices'])})"
        if "range" in meta:
            text += f" ({describe_range(meta['range'])})"
        out[f.name] = text.strip()
    return out


# --- polymorphic sections ------------------------------------------------------------------------------
@dataclass(frozen=True)
class OneOf:
    """A section whose config class is chosen by its ``kind`` key through ``registry``.

    ``accept(config_cls)`` returns None for a kind that belongs here, else the rest of a sentence saying
    where it goes (``{kind}`` is filled in); ``default_kind`` is used when the section names none."""
    registry: Registry
    default_kind: Optional[str] = None
    accept: Optional[Callable[[type], Optional[str]]] = None
    what: Optional[str] = None  # how errors name a kind (default: the registry's word, e.g. 'prompt kind')

    @property
    def noun(self) -> str:
        return self.what or self.registry.what

    def kinds(self) -> list:
        out = []
        for name in self.registry.names():
            try:
                cls = self.registry.get(name).config_cls
            except (KeyError, ImportError):
                continue
            if self.accept is None or self.accept(cls) is None:
                out.append(name)
        return out

    def resolve(self, value: Any, strict: bool = True, where: str = "") -> Any:
        """None | 'kind' | {'kind': ..., fields} | a config instance -> that kind's config instance."""
        if value is None:
            return None
        if isinstance(value, str):
            value = {"kind": value}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            self._check_accepted(type(value), where)
            return value
        if not isinstance(value, Mapping):
            raise FieldError(where, f" must be a {self.noun} name or a section with a 'kind', got "
                                    f"{type(value).__name__} {str(value)[:60]!r}")
        data = dict(value)
        kind = data.get("kind", self.default_kind)
        if kind is None:
            raise FieldError(where, f" needs a 'kind'; available: {', '.join(self.kinds())}")
        path = f"{where}.kind" if where else "kind"
        try:
            if not isinstance(kind, str):
                raise KeyError(kind)
            cls = self.registry.get(kind).config_cls
        except KeyError:
            kinds = self.kinds()
            raise FieldError(path, f": unknown {self.noun} {kind!r}; available: {', '.join(kinds)}"
                                   f"{did_you_mean(kind, kinds)}{self.registry.unavailable_note()}") from None
        except ImportError as e:  # a built-in kind whose optional dependency is missing: the pip command
            raise FieldError(path, f": {e}") from None
        self._check_accepted(cls, where, kind)
        if "kind" in {f.name for f in dataclasses.fields(cls)}:
            data["kind"] = kind
        else:
            data.pop("kind", None)
        return from_dict(cls, data, strict=strict, where=where)

    def _check_accepted(self, cls: type, where: str, kind: Any = None) -> None:
        refusal = self.accept(cls) if self.accept is not None else None
        if refusal:
            kind = kind or getattr(cls, "kind", cls.__name__)
            raise FieldError(f"{where}.kind" if where else "kind",
                             f": {self.registry.what} {kind!r} {refusal.format(kind=kind)} (available here: "
                             f"{', '.join(self.kinds())})")


def one_of(spec: OneOf, default: Any = None, help: str = "", default_factory: Any = _MISSING) -> Any:
    """A polymorphic section field (see :class:`OneOf`); ``from_dict`` resolves it to a typed config."""
    return option(default, help=help, default_factory=default_factory, one_of=spec)


def image_prompt_only(cls: type) -> Optional[str]:
    """``accept`` of an image prompt section: CLIP text kinds go in ``model.text``."""
    if getattr(cls, "needs", None) == "text":
        return ("is a CLIP text prompt: put it in a CLIP model's text config (model.type: clip, model.text: "
                "{{kind: {kind}}}), not in the image prompt")
    return None


def text_prompt_only(cls: type) -> Optional[str]:
    """``accept`` of a CLIP ``text`` section: only the CoOp family."""
    if getattr(cls, "needs", None) != "text":
        return "prompts the image encoder: put it in the image prompt (model.prompt), not in text"
    return None


PROMPT_SECTION = OneOf(PROMPTS, accept=image_prompt_only)  # model.prompt of every model type
TEXT_SECTION = OneOf(PROMPTS, default_kind="coop", accept=text_prompt_only, what="text prompt kind")  # CLIP model.text
HEAD_SECTION = OneOf(HEADS, default_kind="linear")  # model.head of a classifier
METHOD_SECTION = OneOf(METHODS)  # model.method of a classifier (vpt.methods)


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (Union, getattr(types, "UnionType", Union)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _accepts_none(tp) -> bool:
    return tp is Any or (typing.get_origin(tp) in (Union, getattr(types, "UnionType", Union))
                         and type(None) in typing.get_args(tp))


def _needs_value(tp) -> bool:
    return tp in (int, float, bool, list, tuple) or typing.get_origin(tp) in (list, tuple)


def _coerce(value: Any, tp: Any, where: str, strict: bool) -> Any:
    if value is None:
        return None
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) or origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a section of 'key: value' fields, got {type(value).__name__} "
                              f"{str(value)[:60]!r}")
        if dataclasses.is_dataclass(tp):
            return from_dict(tp, value, strict=strict, where=where)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):  # inf / nan never make sense as a setting (an lr of inf trains to NaN)
                raise ConfigError(f"{where} must be a finite number, got {value!r}; fix the value")
            return out
        if tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if origin in (list, tuple) or tp in (list, tuple):
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            args = typing.get_args(tp)
            if args and args[-1] is not Ellipsis and origin is tuple and len(args) == len(value):
                out = [_coerce(v, a, where, strict) for v, a in zip(value, args)]
            elif args:
                out = [_coerce(v, args[0], where, strict) for v in value]
            else:
                out = list(value)
            return tuple(out) if (origin is tuple or tp is tuple) else out
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: cannot read {value!r} as {getattr(tp, '__name__', tp)}; fix the value"
        ) from None
    return value


def from_dict(cls: Type[C], data: Optional[Mapping[str, Any]], strict: bool = True, where: str = "") -> C:
    """Build dataclass ``cls`` from a dict; unknown keys raise ConfigError (or warn if not strict)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise FieldError(where or cls.__name__, f" must be a section of 'key: value' fields, got "
                                                f"{type(data).__name__} {str(data)[:60]!r}")
    data = dict(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            after = f"'; valid keys: {', '.join(sorted(fields))}{did_you_mean(key, fields)}"
            if strict:
                raise FieldError(name, after, before="unknown config key '")
            _logger.warning("ignoring unknown config key '%s%s (saved by another vpt version)", name, after)
            continue
        spec = fields[key].metadata.get("one_of")
        if spec is not None:  # a polymorphic section: typed by its kind
            kwargs[key] = spec.resolve(value, strict=strict, where=name)
            continue
        if value is None and not _accepts_none(hints[key]):
            if dataclasses.is_dataclass(hints[key]):  # an empty section (`optim:` in YAML): its defaults
                continue
            if _needs_value(hints[key]):  # a number, switch or list can't be "nothing" (str / dict fields may)
                raise ConfigError(f"{name} is empty (null) but needs a value; give one, or remove the key to use "
                                  f"the default")
        kwargs[key] = _coerce(value, hints[key], name, strict)
    for key, f in fields.items():  # a polymorphic default given as a dict ({'kind': 'linear'}) is typed too
        spec = f.metadata.get("one_of")
        if spec is not None and key not in kwargs:
            default = f.default_factory() if f.default_factory is not _MISSING else f.default
            if isinstance(default, (str, Mapping)):
                kwargs[key] = spec.resolve(default, strict=strict, where=f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except FieldError as e:  # a check in cls.__post_init__ names the field inside cls: put the section in front
        raise e.under(where) from None
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples become lists); a registered kind's config leads with its
    ``kind``, so the dict resolves back to the same class."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            out = {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
            kind = getattr(type(v), "kind", None)  # a registered kind's name (a class attribute, not a field)
            return {"kind": kind, **out} if isinstance(kind, str) and "kind" not in out else out
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def set_dotted(data: Dict[str, Any], dotted: str, value: Any, what: str = "--set") -> None:
    """``data[a][b][c] = value`` for ``'a.b.c'``, creating missing sections; a section that is a value is a
    ConfigError naming ``what`` (the flag or file the field came from)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{what} {dotted}: '{key}' is a value in this config, not a section")
        node = nxt
    node[keys[-1]] = value


def drop_none(d: Mapping[str, Any]) -> Dict[str, Any]:
    """``None`` means "the library's default": drop it before calling timm / open_clip."""
    return {k: v for k, v in d.items() if v is not None}
