"""The ``adapter_config.json`` schema: what an artifact may say, checked before anything is built.

An artifact is data, never code. Everything in it is checked here against a fixed, versioned schema:

- known keys only, each with its JSON type; floats finite; strings, lists and nesting bounded;
- kinds and types only from the registries (model types, prompt kinds, heads, backbone libraries);
- ``backbone.model_kwargs`` through an allow-list per backbone family: shape keys with bounds, a few
  switches; never a path, a loader or a download option (``pretrained_image_path``, ``checkpoint_path``,
  ``weights_only``, ``cache_dir``, ``pretrained_cfg`` ...);
- the prompt, head, text context, LoRA and detector sections walked through the same dataclasses a recipe
  resolves to, each field within the range its declaration gives; each model type (``MODEL_TYPES``) declares
  its own sections (``config_sections``), so this module imports nothing above registry / errors / config.

The model's size is then measured on the ``meta`` device (no memory) and bounded by the caller's
``max_params`` (``vpt.artifact``), and the stored tensors are compared with it by name, dtype and shape
before any weight is read.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .config import PROMPT_SECTION, OneOf, field_meta, from_dict
from .errors import ArtifactError, ConfigError
from .registry import BACKBONES, MODEL_TYPES, did_you_mean

FORMAT = "vpt-adapter"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 4 << 20  # an adapter_config.json is a few KiB; 4 MiB allows 100k class names
MAX_NESTING = 10
MAX_STR = 4096  # one string (a class name, a template)
MAX_LIST = 100_000  # class names, label maps; shape lists are far shorter (SHAPE_LIST)
SHAPE_LIST = 4096
MAX_INT = 2 ** 63 - 1  # seeds; shape fields have their own bounds below
DEFAULT_MAX_PARAMS = 3_000_000_000  # parameters + buffers of the rebuilt model (ViT-bigG CLIP is 2.5e9)

NUM_CLASSES = (0, 1_000_000)

# --- backbone model_kwargs: an allow-list per family --------------------------------------------------
# Options that name files, loaders or downloads: refused with a message that says so (any other unknown
# key is refused too, as unknown).
LOADER_OPTIONS = {
    "pretrained", "pretrained_cfg", "pretrained_strict", "checkpoint_path", "pretrained_image_path",
    "pretrained_text_path", "pretrained_image", "pretrained_text", "pretrained_hf", "weights_only", "cache_dir",
    "load_weights", "device", "precision", "jit", "hf_model_name", "hf_tokenizer_name", "hf_model_pretrained",
    "timm_model_name", "timm_model_pretrained", "tokenizer_kwargs", "output_dict", "file", "url", "hf_hub_id",
    "hf_hub_filename", "state_dict", "features_only", "weight_init", "fix_init", "block_fn", "mlp_layer",
    "norm_layer", "act_layer", "embed_layer", "require_pretrained",
}


def _size_or_pair(lo: int, hi: int) -> Callable[[Any, str], None]:
    def check(v, where):
        if isinstance(v, list):
            if len(v) != 2:
                raise ArtifactError(f"{where} must be an int or a pair [H, W], got {v!r}")
            for i, x in enumerate(v):
                _int(x, f"{where}[{i}]", lo, hi)
        else:
            _int(v, where, lo, hi)
    return check


def _rng(lo: float, hi: float, optional: bool = False) -> Callable[[Any, str], None]:
    def check(v, where):
        if v is None and optional:
            return
        _float(v, where, lo, hi)
    return check


def _irange(lo: int, hi: int) -> Callable[[Any, str], None]:
    return lambda v, where: _int(v, where, lo, hi)


def _flag(v, where):
    if v is not None and not isinstance(v, bool):
        raise ArtifactError(f"{where} must be true or false, got {v!r}")


def _choice(*choices: str) -> Callable[[Any, str], None]:
    def check(v, where):
        if v not in choices:
            raise ArtifactError(f"{where} must be one of {', '.join(repr(c) for c in choices)}, got {_short(v)}")
    return check


def _section(spec: Dict[str, Callable[[Any, str], None]]) -> Callable[[Any, str], None]:
    def check(v, where):
        if not isinstance(v, dict):
            raise ArtifactError(f"{where} must be a mapping, got {type(v).__name__}")
        _check_keys(v, spec, where)
    return check


_DROP = _rng(0.0, 0.999)
_IMAGE_CFG = {  # timm pretrained_cfg_overlay: preprocessing facts only (never file / url / hf_hub_id)
    "mean": lambda v, w: _floats(v, w, 3, -10.0, 10.0), "std": lambda v, w: _floats(v, w, 3, 1e-6, 10.0),
    "crop_pct": _rng(0.05, 10.0), "interpolation": _choice("nearest", "bilinear", "bicubic", "area", "lanczos"),
    "input_size": lambda v, w: _ints(v, w, 3, 1, 8192), "crop_mode": _choice("center", "squash", "border"),
}
TIMM_KWARGS: Dict[str, Callable[[Any, str], None]] = {
    "img_size": _size_or_pair(1, 4096), "patch_size": _size_or_pair(1, 1024), "embed_dim": _irange(1, 8192),
    "depth": _irange(1, 256), "num_heads": _irange(1, 256), "mlp_ratio": _rng(0.01, 16.0), "in_chans": _irange(1, 64),
    "num_classes": _irange(0, 1_000_000), "reg_tokens": _irange(0, 64), "class_token": _flag,
    "no_embed_class": _flag, "pre_norm": _flag, "final_norm": _flag, "fc_norm": _flag, "dynamic_img_size": _flag,
    "dynamic_img_pad": _flag, "qkv_bias": _flag, "qk_norm": _flag, "proj_bias": _flag,
    "init_values": _rng(0.0, 10.0, optional=True), "pos_embed": _choice("learn", "none"),
    "global_pool": _choice("", "token", "avg", "avgmax", "max", "map", "catavgmax", "fast"),
    "drop_rate": _DROP, "pos_drop_rate": _DROP, "patch_drop_rate": _DROP, "proj_drop_rate": _DROP,
    "attn_drop_rate": _DROP, "drop_path_rate": _DROP, "use_abs_pos_emb": _flag, "use_rot_pos_emb": _flag,
    "ref_feat_shape": _size_or_pair(1, 1024), "zero_init_last": _flag,
    "pretrained_cfg_overlay": _section(_IMAGE_CFG),
}
_CLIP_VISION = {
    "image_size": _size_or_pair(1, 4096), "layers": _irange(1, 256), "width": _irange(1, 8192),
    "head_width": _irange(1, 1024), "mlp_ratio": _rng(0.01, 16.0), "patch_size": _irange(1, 1024),
    "ls_init_value": _rng(0.0, 10.0, optional=True), "patch_dropout": _DROP, "no_ln_pre": _flag,
    "pos_embed_type": _choice("learnable", "sin_cos_2d"), "final_ln_after_pool": _flag,
    "pool_type": _choice("tok", "avg", "none"), "output_tokens": _flag, "qk_norm": _flag,
}
_CLIP_TEXT = {
    "context_length": _irange(1, 1024), "vocab_size": _irange(1, 1_000_000), "width": _irange(1, 8192),
    "heads": _irange(1, 256), "layers": _irange(1, 256), "mlp_ratio": _rng(0.01, 16.0),
    "ls_init_value": _rng(0.0, 10.0, optional=True), "embed_cls": _flag, "pad_id": _irange(0, 1_000_000),
    "eos_id": _irange(0, 1_000_000), "no_causal_mask": _flag, "final_ln_after_pool": _flag,
    "pool_type": _choice("argmax", "first", "last", "none"), "proj_bias": _flag,
    "proj_type": _choice("linear", "none"), "output_tokens": _flag, "qk_norm": _flag,
}
OPEN_CLIP_KWARGS: Dict[str, Callable[[Any, str], None]] = {
    "embed_dim": _irange(1, 8192), "quick_gelu": _flag, "init_logit_scale": _rng(-100.0, 100.0),
    "init_logit_bias": _rng(-100.0, 100.0, optional=True), "vision_cfg": _section(_CLIP_VISION),
    "text_cfg": _section(_CLIP_TEXT), "force_custom_text": _flag, "force_quick_gelu": _flag,
    "force_patch_dropout": _DROP, "force_image_size": _size_or_pair(1, 4096),
}
MODEL_KWARGS = {"timm": TIMM_KWARGS, "vpt": TIMM_KWARGS, "open_clip": OPEN_CLIP_KWARGS}


# --- primitive checks ---------------------------------------------------------------------------------
def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(v: Any, where: str, lo: float = -MAX_INT, hi: float = MAX_INT) -> int:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ArtifactError(f"{where} must be an integer, got {_short(v)}")
    if not lo <= v <= hi:
        raise ArtifactError(f"{where} = {v} is outside the allowed range [{lo:g}, {hi:g}]")
    return v


def _float(v: Any, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ArtifactError(f"{where} must be a number, got {_short(v)}")
    if not math.isfinite(v):
        raise ArtifactError(f"{where} must be finite, got {v}")
    if not lo <= v <= hi:
        raise ArtifactError(f"{where} = {v:g} is outside the allowed range [{lo:g}, {hi:g}]")
    return float(v)


def _floats(v: Any, where: str, n: int, lo: float, hi: float) -> None:
    if not isinstance(v, list) or len(v) != n:
        raise ArtifactError(f"{where} must be a list of {n} numbers, got {_short(v)}")
    for i, x in enumerate(v):
        _float(x, f"{where}[{i}]", lo, hi)


def _ints(v: Any, where: str, n: int, lo: int, hi: int) -> None:
    if not isinstance(v, list) or len(v) != n:
        raise ArtifactError(f"{where} must be a list of {n} integers, got {_short(v)}")
    for i, x in enumerate(v):
        _int(x, f"{where}[{i}]", lo, hi)


def _str(v: Any, where: str, max_len: int = MAX_STR) -> str:
    if not isinstance(v, str):
        raise ArtifactError(f"{where} must be a string, got {_short(v)}")
    if len(v) > max_len:
        raise ArtifactError(f"{where} is {len(v)} characters long; at most {max_len} are allowed")
    return v


def _check_keys(data: Mapping[str, Any], spec: Mapping[str, Callable[[Any, str], None]], where: str) -> None:
    for key, value in data.items():
        name = f"{where}.{key}"
        if key not in spec:
            if key in LOADER_OPTIONS or key.startswith("force_"):
                raise ArtifactError(f"{name} is not allowed in an artifact: it chooses a file, loader or download, "
                                    f"and an artifact is data only. Remove it; pass local weights with "
                                    f"weights=PATH (--weights PATH) instead")
            raise ArtifactError(f"unknown key {name}; allowed: {', '.join(sorted(spec))}{did_you_mean(key, spec)}")
        spec[key](value, name)


# --- dataclass-typed sections (prompt, head, text, lora, detector, preprocessing) ---------------------------
# The same dataclasses the recipes resolve to, walked in strict mode: each field of its JSON type, within the
# ``range`` its declaration gives (``vpt.config.option``), polymorphic sections by registered kind only; then
# the dataclass is built, so its own checks (choices, conflicts) run as for a recipe.
def _unwrap_optional(tp: Any) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return tp, False


def _typed(v: Any, tp: Any, where: str, bounds: Optional[Tuple[Any, ...]] = None) -> None:
    """``v`` (parsed JSON) must have type ``tp`` (a field's type hint), numbers within ``bounds``."""
    tp, optional = _unwrap_optional(tp)
    if v is None:
        if optional:
            return
        raise ArtifactError(f"{where} must not be null")
    lo, hi = tuple(bounds or (None, None))[:2]  # an excluded end is left to the dataclass's own check
    origin = typing.get_origin(tp)
    if tp is Any:
        if not isinstance(v, (str, int, float, bool)):
            raise ArtifactError(f"{where} must be a single value, got {type(v).__name__}")
        if isinstance(v, float):
            _float(v, where)
        return
    if tp is bool:
        _flag(v, where)
    elif tp is int:
        _int(v, where, -MAX_INT if lo is None else lo, MAX_INT if hi is None else hi)
    elif tp is float:
        _float(v, where, -math.inf if lo is None else lo, math.inf if hi is None else hi)
    elif tp is str:
        _str(v, where)
    elif origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(v, list):
            raise ArtifactError(f"{where} must be a list, got {type(v).__name__}")
        limit = SHAPE_LIST if bounds else MAX_LIST
        if len(v) > limit:
            raise ArtifactError(f"{where} has {len(v)} entries; at most {limit}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [Any]
        fixed = origin is tuple and Ellipsis not in typing.get_args(tp) and len(args) > 1
        if fixed and len(v) != len(args):
            raise ArtifactError(f"{where} must be a list of {len(args)} values, got {len(v)}")
        for i, x in enumerate(v):
            _typed(x, args[i] if fixed else args[0], f"{where}[{i}]", bounds)
    elif origin is dict or tp is dict:
        if not isinstance(v, dict) or len(v) > MAX_LIST:
            raise ArtifactError(f"{where} must be a mapping, got {type(v).__name__}")
        kt, vt = (typing.get_args(tp) or (str, Any))
        for k, x in v.items():
            _str(k, f"{where} key")
            _typed(x, vt, f"{where}.{k}", bounds)
    elif origin is typing.Union:
        errors = []
        for option in typing.get_args(tp):
            try:
                return _typed(v, option, where, bounds)
            except ArtifactError as e:
                errors.append(str(e))
        raise ArtifactError(errors[-1])
    elif dataclasses.is_dataclass(tp):
        check_dataclass(v, tp, where)
    else:  # a type this schema does not know: refuse rather than pass it through
        raise ArtifactError(f"{where}: field type {tp!r} is not allowed in an artifact")


def _one_of(v: Any, spec: OneOf, where: str) -> None:
    """A polymorphic section: a registered kind that belongs here, then that kind's dataclass."""
    if not isinstance(v, dict):
        raise ArtifactError(f"{where} must be a mapping with a 'kind', got {type(v).__name__}")
    kind = v.get("kind", spec.default_kind)
    entry = _registered(spec.registry, kind, f"{where}.kind")
    refusal = spec.accept(entry.config_cls) if spec.accept is not None else None
    if refusal:
        raise ArtifactError(f"{where}.kind {entry.name!r} does not belong in '{where}': it "
                            f"{refusal.format(kind=entry.name)}")
    check_dataclass(v, entry.config_cls, where, extra={"kind": str})


def check_dataclass(data: Any, cls: type, where: str, extra: Optional[Dict[str, Any]] = None) -> None:
    """``data`` must be a mapping of ``cls``'s init fields (plus ``extra`` names -> type), each of its type
    and within its declared range; polymorphic fields by registered kind only."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    allowed = sorted(set(fields) | set(extra or {}))
    for key, value in data.items():
        name = f"{where}.{key}"
        if key in fields:
            spec = fields[key].metadata.get("one_of")
            if spec is not None:
                if value is not None:
                    _one_of(value, spec, name)
                continue
            _typed(value, hints[key], name, field_meta(cls, key).get("range"))
        elif extra and key in extra:
            _typed(value, extra[key], name)
        else:
            raise ArtifactError(f"unknown key {name}; allowed: {', '.join(allowed)}{did_you_mean(key, allowed)}")


def build_checked(data: Dict[str, Any], cls: type, where: str) -> Any:
    """Build ``cls`` from structurally checked ``data`` so its own checks run; their ConfigError becomes an
    ArtifactError naming the field."""
    try:
        return from_dict(cls, data, strict=True, where=where)
    except ConfigError as e:
        raise ArtifactError(f"{e}; the artifact holds a value this vpt refuses (re-save it with vpt)") from None


def _registered(registry, name: Any, where: str) -> Any:
    _str(name, where, 100)
    if not re.fullmatch(r"[a-z0-9_]+", name) or name not in registry.names():
        raise ArtifactError(f"{where}: unknown {registry.what} {name!r}; available: {', '.join(registry.names())}"
                            f"{did_you_mean(name, registry.names())}")
    return registry.get(name)


def _check_backbone(bb: Any, where: str = "backbone") -> None:
    if not isinstance(bb, dict):
        raise ArtifactError(f"{where} must be a mapping, got {type(bb).__name__}")
    spec = {"name": _str, "library": _str, "arch": _str, "tag": lambda v, w: v is None or _str(v, w),
            "weights_id": _str, "weights_file": lambda v, w: v is None or _str(v, w), "pretrained": _flag,
            "init_seed": _int, "model_kwargs": lambda v, w: None}
    _check_keys(bb, spec, where)
    name = bb.get("name")
    if name is None:
        raise ArtifactError(f"{where}.name is missing; the artifact must name its backbone (e.g. 'timm:vit_base_patch16_224')")
    library, sep, spec_part = name.partition(":")
    if not sep or not spec_part or not re.fullmatch(r"[A-Za-z0-9_.\-/]+", spec_part) or ".." in spec_part:
        raise ArtifactError(f"{where}.name {_short(name)} is not 'library:architecture[.tag]'")
    _registered(BACKBONES, library, f"{where}.name (library)")
    wid = bb.get("weights_id", "")
    if wid and not re.fullmatch(r"hub:[A-Za-z0-9_.\-]+|(?:file|memory):[0-9a-f]{64}|random:-?[0-9]+", wid):
        raise ArtifactError(f"{where}.weights_id {_short(wid)} is not 'hub:TAG', 'file:SHA256', 'memory:SHA256' or "
                            f"'random:SEED'")
    kwargs = bb.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ArtifactError(f"{where}.model_kwargs must be a mapping, got {type(kwargs).__name__}")
    _check_keys(kwargs, MODEL_KWARGS.get(library, {}), f"{where}.model_kwargs")


def _check_common(config: Dict[str, Any], path: str) -> Any:
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a vpt adapter config (format={_short(config.get('format'))})")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{path}: format_version must be a positive integer, got {_short(version)}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {version}, newer than this vpt reads ({FORMAT_VERSION}); "
                            f"upgrade vpt (pip install -U vpt)")
    model_type = config.get("model_type", "classifier")
    return _registered(MODEL_TYPES, model_type, "model_type")


def check_config(config: Any, path: str = "adapter_config.json") -> Dict[str, Any]:
    """Validate a parsed adapter config; return it unchanged or raise ArtifactError naming the field.

    The common fields are checked here; the rest are the model type's ``config_sections`` dataclass (each
    model class declares its own), walked in strict mode and then built so its own checks run."""
    if not isinstance(config, dict):
        raise ArtifactError(f"{path} must hold a JSON object, got {type(config).__name__}")
    entry = _check_common(config, path)
    model_type, sections = entry.name, entry.factory.config_sections
    section_names = {f.name for f in dataclasses.fields(sections) if f.init}
    fields: Dict[str, Callable[[Any, str], None]] = {
        "format": _str, "format_version": _int, "vpt_version": lambda v, w: _str(v, w, 64), "model_type": _str,
        "backbone": _check_backbone, "prompt": lambda v, w: v is None or _one_of(v, PROMPT_SECTION, w),
        "num_classes": lambda v, w: _int(v, w, *NUM_CLASSES),
        "class_names": lambda v, w: v is None or _typed(v, typing.List[str], w),
        **{name: (lambda v, w: None) for name in section_names},  # walked below, as one dataclass
    }
    # keys a model type writes for another library's loader (peft's adapter_config keys) and ignores itself
    foreign = getattr(sections, "foreign_keys", None)
    for name in (foreign(config) if foreign is not None else ()):
        fields.setdefault(name, lambda v, w: None)
    _check_keys(config, fields, "adapter_config")
    if "backbone" not in config:
        raise ArtifactError(f"{path} names no backbone; re-save the artifact with vpt")
    own = {k: v for k, v in config.items() if k in section_names}
    check_dataclass(own, sections, "adapter_config")
    if hasattr(sections, "check_artifact"):
        try:
            sections.check_artifact(own)
        except ConfigError as e:
            raise ArtifactError(str(e)) from None
    build_checked({k: v for k, v in own.items() if v is not None}, sections, "")
    if config.get("prompt") is not None:
        _build_prompt(config["prompt"])
    names, n = config.get("class_names"), config.get("num_classes")
    if names is not None and n is not None and model_type != "detection" and n not in (0, len(names)):
        raise ArtifactError(f"{path}: num_classes is {n} but class_names lists {len(names)} names")
    return config


def _build_prompt(prompt: Dict[str, Any]) -> None:
    try:
        PROMPT_SECTION.resolve(prompt, where="prompt")
    except ConfigError as e:
        raise ArtifactError(f"{e}; the artifact holds a value this vpt refuses (re-save it with vpt)") from None


# --- parsing ----------------------------------------------------------------------------------------
def _no_constant(name: str):
    raise ArtifactError(f"non-finite number {name} in the config; JSON numbers must be finite")


def _depth(v: Any, level: int = 0) -> int:
    if level > MAX_NESTING:
        return level
    if isinstance(v, dict):
        return max([_depth(x, level + 1) for x in v.values()] or [level + 1])
    if isinstance(v, list):
        return max([_depth(x, level + 1) for x in v] or [level + 1])
    return level


def parse_config(raw: bytes, path: str) -> Any:
    """Bytes of an adapter_config.json -> parsed JSON (no NaN / Infinity, bounded size and nesting)."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ArtifactError(f"{path} is {len(raw)} bytes; an adapter config is at most {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
        config = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(f"{path} is corrupt ({type(e).__name__}: {str(e)[:200]}); re-save the artifact or "
                            f"restore it from a copy") from None
    if _depth(config) > MAX_NESTING:
        raise ArtifactError(f"{path} nests deeper than {MAX_NESTING} levels; it is not a vpt adapter config")
    return config
