"""Shared CLI plumbing: YAML config files (a path or a packaged recipe's name), ``--set section.field=value``
overrides (a ``kind`` switch drops the recipe's fields the new kind lacks), ``--model`` replacing the backbone."""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Type, TypeVar

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
    path = recipe_path(path)
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


def recipe_path(spec: str) -> str:
    """``-c SPEC`` -> a file: SPEC itself when it exists, else the packaged recipe of that name
    (``tiny_offline`` or ``tiny_offline.yaml``, see ``vpt list recipes``); UserError naming both ways."""
    from .. import recipes
    from ..registry import did_you_mean
    found = recipes.find(spec)
    if found is None:
        bare = os.path.basename(spec)
        bare = bare[:-5] if bare.endswith(".yaml") else bare
        hint = did_you_mean(bare, recipes.names())
        raise UserError(f"config file not found: {spec!r} is neither a file nor a packaged recipe{hint}; pass a "
                        f"recipe name (`vpt list recipes`, e.g. -c tiny_offline) or the path of a YAML file")
    return found


def parse_value(text: str) -> Any:
    """YAML scalar/list syntax for --set values: 1e-3, true, [1, 2], null, strings as is."""
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_sets(data: Dict[str, Any], sets: Optional[Iterable[str]]) -> Dict[str, Any]:
    """Apply ``section.field=value`` strings (the ``--set`` flag) to a nested dict in place.

    A value may be a YAML mapping, which replaces the whole section: ``--set 'model.prompt={kind: pixel_pad,
    width: 4}'``. Switching a section's kind (``--set model.prompt.kind=pixel_pad`` on a recipe with
    ``vpt_deep`` prompts) drops the recipe's fields the new kind does not have, with a logged note."""
    for item in sets or ():
        if "=" not in item:
            raise ConfigError(f"--set expects section.field=value, got {item!r}")
        key, value = item.split("=", 1)
        key, value = key.strip(), parse_value(value)
        if key.endswith(".kind") and key.count(".") >= 1:
            switch_kind(data, key[:-len(".kind")], value)
        set_dotted(data, key, value)
    return data


# a section's last name -> the registry of its kinds (a lookup imports the built-in ones); the kind's config
# class says which fields it has
_KIND_SECTIONS = {"prompt": "PROMPTS", "head": "HEADS"}


def _kind_fields(section: str, kind: Any) -> Optional[set]:
    """The field names of ``kind``'s config class in ``section`` (None when unknown: leave the data alone)."""
    import dataclasses

    from .. import registry
    entry = _KIND_SECTIONS.get(section.rsplit(".", 1)[-1])
    if entry is None or not isinstance(kind, str):
        return None
    try:
        cls = getattr(registry, entry).get(kind).config_cls
    except Exception:  # an unknown kind: the config check names it and the available ones
        return None
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    return {f.name for f in dataclasses.fields(cls)}


def switch_kind(data: Dict[str, Any], section: str, kind: Any) -> None:
    """Before ``--set SECTION.kind=KIND``: when the recipe's section has another kind, drop its fields that
    ``KIND`` lacks (e.g. ``num_tokens`` going from vpt_deep to pixel_pad), saying so."""
    node: Any = data
    for key in section.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or node.get("kind") in (None, kind):
        return
    fields = _kind_fields(section, kind)
    if fields is None:
        return
    dropped = {k: v for k, v in node.items() if k != "kind" and k not in fields}
    for k in dropped:
        del node[k]
    if dropped:
        listed = ", ".join(f"{k}: {v!r}" for k, v in dropped.items())
        logging.getLogger("vpt.commands").warning(
            "--set %s.kind=%s switches %s from %r: dropped the recipe's %s (%s has no such field); set its own "
            "fields with --set %s.FIELD=VALUE, or the whole section at once: --set '%s={kind: %s, ...}'",
            section, kind, section, node.get("kind"), listed, kind, section, section, kind)


def replace_backbone(data: Dict[str, Any], name: Optional[str], weights: Optional[str],
                     where: str = "model.backbone") -> None:
    """``--model NAME`` replaces the recipe's backbone section (its weights, ``pretrained``, ``init_seed`` and
    ``model_kwargs`` describe the recipe's backbone, not NAME's) and ``--weights FILE`` sets the file to load
    (``pretrained: true``); what was dropped is logged. ``--set model.backbone.FIELD=...`` still applies after."""
    log = logging.getLogger("vpt.commands")
    node: Dict[str, Any] = data
    keys = where.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {}) if isinstance(node.get(key), dict) or node.get(key) is None else {}
    section = node.get(keys[-1]) if isinstance(node.get(keys[-1]), dict) else {}
    if name is not None:
        kept = {"name": name}
        dropped = {k: v for k, v in section.items() if k != "name"}
        if dropped and section.get("name") != name:
            log.info("--model %s replaces the recipe's backbone %s (dropped its %s); add a field back with "
                     "--set %s.FIELD=VALUE", name, section.get("name"),
                     ", ".join(f"{k}: {v!r}" for k, v in dropped.items()), where)
        elif section.get("name") == name:
            kept = dict(section)
        section = kept
    if weights is not None:
        section = dict(section)
        if section.get("pretrained") is False:
            log.info("--weights %s: loading it (the recipe's %s.pretrained: false meant a random init)", weights, where)
        section.pop("pretrained", None)
        section["weights"] = weights
    node[keys[-1]] = section


def deep_merge(base: Dict[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config(cls: Type[C], config_path: Optional[str], flags: Mapping[str, Any],
                   sets: Optional[Iterable[str]], fill: Optional[Callable[[Dict[str, Any]], None]] = None) -> C:
    """Recipe file (defaults) <- dotted flags that were given <- --set; then ``fill`` may set what the merged
    mapping leaves unset; then typed, unknown keys refused."""
    data = load_yaml(config_path) if config_path else {}
    for dotted, value in flags.items():
        if value is not None:
            set_dotted(data, dotted, value)
    apply_sets(data, sets)
    if fill is not None:
        fill(data)
    return from_dict(cls, data)
