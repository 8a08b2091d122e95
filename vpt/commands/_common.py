"""Shared CLI plumbing: YAML config files, ``--set section.field=value`` overrides."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar

from ..config import from_dict, set_dotted
from ..errors import ConfigError, UserError

C = TypeVar("C")


MAX_YAML_BYTES = 1 << 20  # a recipe is a few KiB
MAX_YAML_VALUES = 100_000


def _check_tree(node: Any, path: str, depth: int = 0, seen: Optional[list] = None) -> None:
    """Plain YAML data only: string keys, bounded nesting and size, counted with aliases expanded (so a
    small file of nested aliases can't become a billion values downstream)."""
    seen = [0] if seen is None else seen
    seen[0] += 1
    if seen[0] > MAX_YAML_VALUES:
        raise ConfigError(f"{path} expands to more than {MAX_YAML_VALUES} values (nested aliases?); "
                          f"a vpt config is a few sections of fields")
    if depth > 32:
        raise ConfigError(f"{path} nests deeper than 32 levels; a vpt config is sections of fields")
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path}: key {k!r} is not a string; write section and field names as text")
            _check_tree(v, path, depth + 1, seen)
    elif isinstance(node, list):
        for v in node:
            _check_tree(v, path, depth + 1, seen)


def load_yaml(path: str) -> Dict[str, Any]:
    """A recipe file -> its sections; every problem (missing, unreadable, binary, not YAML, not a mapping)
    is a ConfigError / UserError naming the file."""
    import yaml
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path!r}; recipes live in configs/ (e.g. configs/tiny_offline.yaml)")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r} ({e.strerror or e}); check its permissions") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"config file {path!r} is over {MAX_YAML_BYTES} bytes; is it really a vpt recipe?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} is not UTF-8 text (a binary file?); pass a YAML recipe") from None
    if "\x00" in text:
        raise ConfigError(f"config file {path!r} holds NUL bytes (a binary file?); pass a YAML recipe")
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError) as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e)[:500]}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    _check_tree(data, path)
    return data


def parse_value(text: str) -> Any:
    """YAML scalar/list syntax for --set values: 1e-3, true, [1, 2], null, strings as is."""
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_sets(data: Dict[str, Any], sets: Optional[Iterable[str]]) -> Dict[str, Any]:
    """Apply ``section.field=value`` strings (the ``--set`` flag) to a nested dict in place."""
    for item in sets or ():
        if "=" not in item:
            raise ConfigError(f"--set expects section.field=value, got {item!r}")
        key, value = item.split("=", 1)
        set_dotted(data, key.strip(), parse_value(value))
    return data


def deep_merge(base: Dict[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config(cls: Type[C], config_path: Optional[str], flags: Mapping[str, Any],
                   sets: Optional[Iterable[str]]) -> C:
    """Recipe file (defaults) <- dotted flags that were given <- --set; then typed, unknown keys refused."""
    data = load_yaml(config_path) if config_path else {}
    for dotted, value in flags.items():
        if value is not None:
            set_dotted(data, dotted, value)
    apply_sets(data, sets)
    return from_dict(cls, data)
