"""Shared CLI plumbing: YAML config files, ``--set section.field=value`` overrides."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar

from ..config import from_dict, set_dotted
from ..errors import ConfigError, UserError

C = TypeVar("C")


def load_yaml(path: str) -> Dict[str, Any]:
    import yaml
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path!r}; recipes live in configs/ (e.g. configs/tiny_offline.yaml)")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
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
