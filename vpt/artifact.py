"""peft-like artifacts: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only the trainable tensors are stored, plus everything needed to rebuild the model: the backbone's
library, architecture, weights tag or file hash, the prompt and head configs, class names and
preprocessing. Loading reads JSON and safetensors only: nothing is unpickled.

An artifact is data, never code (``vpt.schema``): its config is validated before anything is built, the
model it describes is measured on the meta device and bounded by ``max_params`` (the caller's limit, never
the file's), and the stored tensors are checked against that model by name, dtype and shape before any
is read, then for finiteness.
"""
from __future__ import annotations

import json
import logging
import os
import stat
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .backbones import BackboneAdapter, BackboneConfig, create_backbone
from .backbones.base import sha256_file
from .errors import ArtifactError, BackboneError, ConfigError  # ArtifactError re-exported: vpt.ArtifactError
from .io import atomic_write, atomic_write_json
from .registry import MODEL_TYPES
from .schema import DEFAULT_MAX_PARAMS, FORMAT, FORMAT_VERSION, MAX_CONFIG_BYTES, check_config, parse_config

_logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def save_pretrained(model, save_directory: str) -> None:
    from safetensors.torch import save_file

    from .version import __version__
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "vpt_version": __version__, **model.to_config()}
    bb = config.get("backbone") or {}
    if bb.get("weights_file"):  # relative to the artifact, so the pair can move together
        bb["weights_file"] = os.path.relpath(os.path.abspath(bb["weights_file"]), os.path.abspath(save_directory))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # never write a non-finite tensor to an artifact: it would load as a model that says nothing
        raise ArtifactError(f"refusing to save {save_directory!r}: tensor(s) {', '.join(bad[:5])} hold NaN or inf "
                            f"values (the training diverged); lower the learning rate or resume from an earlier "
                            f"checkpoint")
    os.makedirs(save_directory, exist_ok=True)
    # weights first, config last: a folder with a config always has its matching weights
    atomic_write(os.path.join(save_directory, WEIGHTS_NAME),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "vpt_format": FORMAT}))
    atomic_write_json(os.path.join(save_directory, CONFIG_NAME), config)




def _read_bytes(path: str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a regular file (never a FIFO or device: no hang, bounded memory)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} is not a regular file")
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise ArtifactError(f"cannot read {path} ({e.strerror or e}); check the path and its permissions") from None


def read_config(directory: str) -> Dict[str, Any]:
    """The artifact's adapter_config.json, parsed and validated against the schema (``vpt.schema``)."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isdir(directory):
        raise ArtifactError(f"artifact folder not found: {directory!r}; pass the folder that holds {CONFIG_NAME}")
    if not os.path.isfile(path):
        raise ArtifactError(f"{directory!r} has no {CONFIG_NAME}; is it a vpt artifact folder (e.g. runs/x/best)?")
    return check_config(parse_config(_read_bytes(path, MAX_CONFIG_BYTES), path), path)


def _check_same_backbone(saved: Dict[str, Any], backbone: BackboneAdapter) -> None:
    have = backbone.identity()
    for key in ("library", "arch", "model_kwargs", "weights_id"):
        if saved.get(key) != have.get(key):
            raise ArtifactError(
                f"artifact was made for another backbone: {key} is {saved.get(key)!r} in the artifact but "
                f"{have.get(key)!r} in the backbone given ({have['name']}); load it onto the backbone it was "
                f"trained with ({saved.get('name')})")


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def find_weights_file(saved: Dict[str, Any], directory: str, weights: Optional[str]) -> Optional[str]:
    """The backbone weights file of a ``file:SHA256`` artifact: ``weights`` if given, else the artifact's
    ``weights_file`` resolved relative to the artifact folder (never the cwd, never an absolute path the file
    names); accepted only when its sha256 matches. None for hub / random / shipped backbones."""
    wid = str(saved.get("weights_id", ""))
    if str(saved.get("name", "")).startswith("vpt:") or not wid.startswith("file:"):
        if weights:
            raise ArtifactError(f"the artifact's backbone ({saved.get('name')}, {wid}) uses no weights file; "
                                f"drop weights={weights!r}")
        return None
    want = wid[5:]
    if weights:
        candidates = [weights]
    else:
        stored = saved.get("weights_file") or ""
        candidates = [] if os.path.isabs(stored) or not stored else [os.path.join(directory, stored)]
        if stored:
            candidates.append(os.path.join(directory, os.path.basename(stored)))
    tried = []
    for c in dict.fromkeys(candidates):
        if not _is_regular(c):
            tried.append(f"{c} (missing)")
            continue
        if sha256_file(c) == want:
            return c
        tried.append(f"{c} (another file: sha256 differs)")
    raise ArtifactError(f"the artifact's backbone weights file {saved.get('weights_file')!r} is missing or "
                        f"another file (sha256 {want}); tried {', '.join(tried) or 'nothing'}; pass weights=PATH "
                        f"(--weights PATH) to the file the artifact was trained with")


def _backbone_config(saved: Dict[str, Any], weights: Optional[str], pretrained: Optional[bool] = None) -> BackboneConfig:
    return BackboneConfig(name=saved["name"], weights=weights,
                          pretrained=bool(saved.get("pretrained", True)) if pretrained is None else pretrained,
                          init_seed=int(saved.get("init_seed", 0)), model_kwargs=dict(saved.get("model_kwargs") or {}))


def _backbone_from_saved(saved: Dict[str, Any], weights: Optional[str]) -> BackboneAdapter:
    if str(saved.get("name", "")).startswith("vpt:"):  # weights shipped inside the package
        bb = create_backbone(_backbone_config(saved, None))
        _check_same_backbone(saved, bb)
        return bb
    return create_backbone(_backbone_config(saved, weights))


def _model_class(config: Dict[str, Any]):
    try:
        return MODEL_TYPES.get(config.get("model_type", "classifier")).factory
    except KeyError as e:
        raise ArtifactError(f"{e.args[0]} (the artifact may need a newer vpt or an optional extra)") from None


# library errors that a schema-valid but inconsistent config can still raise while the model is put together
_BUILD_ERRORS = (AssertionError, TypeError, ValueError, RuntimeError, KeyError, IndexError, NotImplementedError,
                 ZeroDivisionError, AttributeError)


def measure(config: Dict[str, Any]) -> Tuple[int, Dict[str, Tuple[Tuple[int, ...], torch.dtype]], torch.nn.Module]:
    """Build the model a (validated) config describes on the meta device: no memory, no weights read.
    Returns (parameters + buffers, {trainable tensor name: (shape, dtype)}, the meta model)."""
    cls = _model_class(config)
    try:
        with torch.device("meta"):
            bb = create_backbone(_backbone_config(config["backbone"], None, pretrained=False))
            model = cls.from_config(config, bb)
    except (ConfigError, BackboneError) as e:
        raise ArtifactError(f"the artifact's config does not build a model: {e}") from None
    except _BUILD_ERRORS as e:
        raise ArtifactError(f"the artifact's config does not build a model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300] if str(e) else 'no detail'})") from None
    total = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.trainable_state_dict().items()}
    return total, expected, model


def upgrade_header(model: torch.nn.Module, header: Dict[str, Tuple[Tuple[int, ...], str]]
                   ) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """The header as the model's ``upgrade_tensors`` would rename it (older layouts, e.g. stacked deep
    prompts), computed on meta tensors: no data read."""
    if not hasattr(model, "upgrade_tensors") or any(d not in _ST_DTYPES for _, d in header.values()):
        return header
    fake = {k: torch.empty(s, dtype=_ST_DTYPES[d], device="meta") for k, (s, d) in header.items()}
    return {k: (tuple(v.shape), _st_name(v.dtype)) for k, v in model.upgrade_tensors(fake).items()}


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def read_header(wpath: str) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """{tensor name: (shape, safetensors dtype)} from the file's header; no tensor data is read."""
    from safetensors import SafetensorError, safe_open
    if not _is_regular(wpath):
        raise ArtifactError(f"{wpath} is missing or not a regular file; the artifact is incomplete")
    try:
        with safe_open(wpath, framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{wpath} is corrupt ({e}); re-save the artifact or restore it from a copy") from None


def check_tensors(header: Dict[str, Tuple[Tuple[int, ...], str]],
                  expected: Dict[str, Tuple[Tuple[int, ...], torch.dtype]], wpath: str) -> None:
    """The stored tensors must be exactly the model's trainable ones: same names, dtypes and shapes."""
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{wpath} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, (shape, dtype) in header.items():
        want_shape, want_dtype = expected[name]
        if shape != want_shape:
            raise ArtifactError(f"{wpath}: tensor {name} has shape {shape}, the config builds {want_shape}")
        if _ST_DTYPES.get(dtype) != want_dtype:
            raise ArtifactError(f"{wpath}: tensor {name} is {dtype}, the model holds {want_dtype}; the file was "
                                f"not written by vpt's save_pretrained")


def _check_size(total: int, max_params: int, path: str) -> None:
    if total > max_params:
        raise ArtifactError(f"{path} describes a model of {total:,} parameters, over the limit of {max_params:,}; "
                            f"if you trust it and have the memory, raise the limit: "
                            f"from_pretrained(..., max_params={total}) or --max-params {total}")


def from_pretrained(directory: str, backbone: Union[None, str, BackboneAdapter] = None,
                    weights: Optional[str] = None, device: Union[str, torch.device] = "cpu",
                    max_params: int = DEFAULT_MAX_PARAMS):
    """Rebuild a model saved with ``save_pretrained``; safe for artifacts from strangers.

    Args:
        directory: the artifact folder.
        backbone: an already built adapter to put the prompts on (checked against the artifact);
            default: rebuild the backbone the artifact names.
        weights: the backbone weights file, if the artifact was made from one that has moved.
        max_params: refuse a model (backbone included) larger than this; the artifact can't raise it.
    """
    from safetensors.torch import load_file

    config = read_config(directory)
    wpath = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(wpath):
        raise ArtifactError(f"{directory!r} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the artifact is incomplete")
    header = read_header(wpath)
    total, expected, meta = measure(config)
    _check_size(total, max_params, os.path.join(directory, CONFIG_NAME))
    check_tensors(upgrade_header(meta, header), expected, wpath)
    saved_bb = config["backbone"]
    if isinstance(backbone, BackboneAdapter):
        _check_same_backbone(saved_bb, backbone)
    elif isinstance(backbone, str) and backbone != saved_bb.get("name"):
        raise ArtifactError(f"artifact was made for backbone {saved_bb.get('name')!r}, not {backbone!r}")
    else:
        backbone = _backbone_from_saved(saved_bb, find_weights_file(saved_bb, directory, weights))
    try:
        model = _model_class(config).from_config(config, backbone)
    except ConfigError as e:
        raise ArtifactError(f"{directory}: {e}") from None
    try:
        tensors = load_file(wpath)
    except Exception as e:  # safetensors raises its own error types
        raise ArtifactError(f"{wpath} is corrupt ({e}); re-save the artifact or restore it from a copy") from None
    if hasattr(model, "upgrade_tensors"):
        tensors = model.upgrade_tensors(tensors)  # artifacts saved by an older vpt (e.g. stacked deep prompts)
    check_tensors({k: (tuple(v.shape), _st_name(v.dtype)) for k, v in tensors.items()},
                  {k: (tuple(v.shape), v.dtype) for k, v in model.trainable_state_dict().items()}, wpath)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ArtifactError(f"{wpath}: tensor(s) {', '.join(bad[:5])} hold NaN or inf values; the artifact comes "
                            f"from a run that diverged or was damaged. Use an earlier checkpoint")
    model.load_state_dict(tensors, strict=False)
    return model.to(device)


def _st_name(dtype: torch.dtype) -> str:
    return next((k for k, v in _ST_DTYPES.items() if v == dtype), str(dtype))


def inspect_artifact(directory: str, weights: Optional[str] = None,
                     max_params: int = DEFAULT_MAX_PARAMS) -> Dict[str, Any]:
    """What ``from_pretrained`` would build, without building it: the validated config, the model's size
    (measured on the meta device), the stored tensors and the backbone weights it would use. Raises
    ArtifactError for anything ``from_pretrained`` would refuse."""
    config = read_config(directory)
    wpath = os.path.join(directory, WEIGHTS_NAME)
    header = read_header(wpath)
    total, expected, meta = measure(config)
    _check_size(total, max_params, os.path.join(directory, CONFIG_NAME))
    check_tensors(upgrade_header(meta, header), expected, wpath)
    bb = config["backbone"]
    try:
        wfile = find_weights_file(bb, directory, weights)
        wnote = wfile or {"hub": "downloaded from the hub by its tag", "random": "random init (seeded)",
                          "file": "shipped with vpt"}.get(str(bb.get("weights_id", "")).split(":")[0], "-")
    except ArtifactError as e:
        wnote = f"MISSING: {e}"
    trainable = sum(math_prod(s) for s, _ in expected.values())
    return {
        "artifact": os.path.abspath(directory), "format_version": config["format_version"],
        "vpt_version": config.get("vpt_version"), "model_type": config.get("model_type", "classifier"),
        "backbone": {k: bb.get(k) for k in ("name", "weights_id", "model_kwargs")}, "backbone_weights": wnote,
        "prompt": config.get("prompt"), "head": config.get("head"), "text": config.get("text"),
        "lora": config.get("lora"), "detector": config.get("detector"),
        "num_classes": config.get("num_classes"), "class_names": config.get("class_names"),
        "preprocessing": config.get("preprocessing"),
        "parameters": {"total": total, "trainable": trainable, "limit": max_params},
        "tensors": [{"name": k, "shape": list(s), "dtype": d} for k, (s, d) in sorted(header.items())],
    }


def math_prod(shape: Tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
