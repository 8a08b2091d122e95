"""Typed configs: dataclasses with a comment per field. YAML is parsed only in the CLI.

``from_dict`` turns a plain dict into a (possibly nested) dataclass and refuses unknown keys with the
closest valid name; only loading an old saved artifact may drop unknown keys (``strict=False``), with a
warning.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from typing import Any, Dict, Mapping, Optional, Type, TypeVar, Union

from .registry import did_you_mean

_logger = logging.getLogger(__name__)
C = TypeVar("C")


from .errors import ConfigError  # noqa: F401  (re-exported: vpt.config.ConfigError)


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
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            msg = f"unknown config key '{name}'; valid keys: {', '.join(sorted(fields))}{did_you_mean(key, fields)}"
            if strict:
                raise ConfigError(msg)
            _logger.warning("ignoring %s (saved by another vpt version)", msg)
            continue
        if value is None and not _accepts_none(hints[key]):
            if dataclasses.is_dataclass(hints[key]):  # an empty section (`optim:` in YAML): its defaults
                continue
            if _needs_value(hints[key]):  # a number, switch or list can't be "nothing" (str / dict fields may)
                raise ConfigError(f"{name} is empty (null) but needs a value; give one, or remove the key to use "
                                  f"the default")
        kwargs[key] = _coerce(value, hints[key], name, strict)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
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
