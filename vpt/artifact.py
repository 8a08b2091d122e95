"""peft-like artifacts: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only the trainable tensors are stored, plus everything needed to rebuild the model: the backbone's
library, architecture, weights tag or file hash, the prompt and head configs, class names and
preprocessing. Loading reads JSON and safetensors only: nothing is unpickled.

An artifact is data, never code (``vpt.schema``): its config is validated before anything is built, the
model it describes is measured on the meta device and bounded by ``max_params`` (the caller's limit, never
the file's), and the stored tensors are checked against that model by name, dtype and shape before any
is read, then for finiteness.

:class:`Artifact` is the one entry point: ``Artifact.open(path)`` reads and validates the config once and
answers what it holds (model type, task, classes, backbone), ``inspect()`` and ``load()``;
``from_pretrained`` and ``inspect_artifact`` are thin calls of it.
"""
from __future__ import annotations

import copy
import logging
import os
import stat
from typing import Any, Dict, List, Optional, Tuple, Union

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


def read_config(directory: str, backbone: Any = None) -> Dict[str, Any]:
    """The artifact's adapter_config.json, parsed and validated against the schema (``vpt.schema``). An
    adapter that peft saved (``peft_type``, no vpt keys) becomes the vpt config that loads it
    (``vpt.peft_format.vpt_config_from_peft``; ``backbone`` when its base model is not named)."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isdir(directory):
        raise ArtifactError(f"artifact folder not found: {directory!r}; pass the folder that holds {CONFIG_NAME} "
                            f"(a task on the Hugging Face Hub: hf://ORG/NAME[@REVISION])")
    if not os.path.isfile(path):
        raise ArtifactError(f"{directory!r} has no {CONFIG_NAME}; is it a vpt artifact folder (e.g. runs/x/best)?")
    config = parse_config(_read_bytes(path, MAX_CONFIG_BYTES), path)
    if isinstance(config, dict) and "format" not in config and "peft_type" in config:
        from .peft_format import vpt_config_from_peft
        config = vpt_config_from_peft(config, directory, read_header(os.path.join(directory, WEIGHTS_NAME)),
                                      backbone)
    return check_config(config, path)


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
    wid = str(saved.get("weights_id", ""))
    if wid.startswith("memory:"):  # built by the user's code: vpt cannot rebuild those weights
        raise ArtifactError(f"the artifact was trained on a backbone module built in memory ({saved.get('name')}, "
                            f"model_kwargs={saved.get('model_kwargs')}, weights sha256 {wid[7:]}); build that module "
                            f"again and pass it: vpt.from_pretrained(DIR, backbone=module) (the weights are checked "
                            f"by their hash)")
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


class Artifact:
    """A saved artifact folder, read and validated ONCE: ``Artifact.open(path)``.

    Opening reads ``adapter_config.json`` (bounded, a regular file only) and checks it against the schema
    (``vpt.schema``): nothing is built and no tensor is read. The answers below come from that one read:

    - ``model_type``, ``task`` (the vpt task that evaluates / predicts it, named by the model class, e.g.
      ``"classification"``, ``"clip"``, ``"detection"``), ``config`` (the validated dict), ``class_names``,
      ``num_classes``, ``backbone`` (the saved backbone section: name, weights_id, model_kwargs ...),
      ``preprocessing``;
    - ``inspect()``: what loading would build, measured on the meta device (``vpt inspect``);
    - ``load(device=, weights=, max_params=)``: the model, after every trust check (size bounded by the
      caller's ``max_params`` before anything is allocated, the safetensors header compared with the model
      before any weight is read, then the weights checked for finiteness).

    >>> art = Artifact.open("runs/x/best")            # doctest: +SKIP
    >>> art.task, art.class_names[:3]                 # doctest: +SKIP
    >>> model = art.load(device="cuda")               # doctest: +SKIP
    """

    def __init__(self, directory: str, config: Dict[str, Any], hub: Any = None):
        """Use :meth:`open`; ``config`` must already be validated (``read_config``). ``hub``: the
        ``vpt.hub.HubFiles`` a hub artifact fetches its weights through (None: a local folder)."""
        self.directory = directory
        self._config = config
        self.hub = hub
        self._header: Optional[Dict[str, Tuple[Tuple[int, ...], str]]] = None
        self._measured: Optional[Tuple[int, Dict[str, Tuple[Tuple[int, ...], torch.dtype]], torch.nn.Module]] = None

    @classmethod
    def open(cls, path: Union[str, "os.PathLike[str]"], revision: Optional[str] = None,
             token: Union[None, bool, str] = None, backbone: Any = None) -> "Artifact":
        """Read and validate ``path/adapter_config.json``; ArtifactError names the problem and the fix.

        ``path`` may be a task on the Hugging Face Hub, ``hf://ORG/NAME[@REVISION]`` (``revision=`` names
        the branch, tag or commit too): only the artifact's own files are fetched (``vpt.hub``: an
        allow-list, sizes checked against the repo's metadata before download, ``HF_HUB_OFFLINE`` and the
        local cache honoured), the weights when they are first needed; the files then go through the same
        checks as a local folder, and ``revision`` answers the commit they came from.

        ``backbone``: the base model of an adapter peft saved without naming one (vpt's own name it)."""
        spec = os.fspath(path)
        from .hub import is_hub_uri
        if is_hub_uri(spec):
            from .hub import fetch_hub
            files = fetch_hub(spec, revision=revision, token=token)
            config = read_config(files.directory, backbone)
            files.fetch_extras(config)
            return cls(files.directory, config, hub=files)
        if revision is not None:
            raise ArtifactError(f"revision={revision!r} is for tasks on the Hugging Face Hub; {spec!r} is a local "
                                f"folder (a hub task: hf://ORG/NAME, with revision= or @REVISION)")
        return cls(spec, read_config(spec, backbone))

    def __repr__(self) -> str:
        return (f"Artifact({self.source!r}, model_type={self.model_type!r}, "
                f"backbone={self._config['backbone'].get('name')!r})")

    @property
    def source(self) -> str:
        """Where the artifact came from: its absolute folder, or ``hf://ORG/NAME@COMMIT`` for a hub task
        (the commit pinned, so a record of it reloads the same files)."""
        return self.hub.uri if self.hub is not None else os.path.abspath(self.directory)

    @property
    def revision(self) -> Optional[str]:
        """The hub commit (sha) the files came from; None for a local folder."""
        return self.hub.commit if self.hub is not None else None

    # --- what the config says (no model built) ---------------------------------------------------------
    @property
    def config(self) -> Dict[str, Any]:
        """The validated adapter_config.json (a copy: changing it changes nothing that loads)."""
        return copy.deepcopy(self._config)

    @property
    def model_type(self) -> str:
        return str(self._config.get("model_type", "classifier"))

    @property
    def model_class(self) -> type:
        """The registered class of ``model_type`` (``vpt.registry.MODEL_TYPES``)."""
        return _model_class(self._config)

    @property
    def task(self) -> str:
        """The vpt task (``vpt.registry.TASKS`` key) that evaluates and predicts this artifact: the model
        class names it (its ``task`` attribute)."""
        task = getattr(self.model_class, "task", None)
        if not isinstance(task, str) or not task:
            raise ArtifactError(f"model type {self.model_type!r} ({self.model_class.__name__}) names no task; give "
                                f"the class a `task = \"<task name>\"` attribute (a vpt.registry.TASKS key)")
        return task

    @property
    def class_names(self) -> Optional[List[str]]:
        names = self._config.get("class_names")
        return None if names is None else list(names)

    @property
    def num_classes(self) -> Optional[int]:
        return self._config.get("num_classes")

    @property
    def backbone(self) -> Dict[str, Any]:
        """The backbone the artifact was trained on: ``name``, ``weights_id`` (``hub:<tag>``, ``file:<sha256>``,
        ``random:<seed>``), ``model_kwargs`` and the rest of the saved section (a copy)."""
        return copy.deepcopy(self._config["backbone"])

    @property
    def preprocessing(self) -> Optional[Dict[str, Any]]:
        pre = self._config.get("preprocessing")
        return None if pre is None else copy.deepcopy(pre)

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, CONFIG_NAME)

    @property
    def weights_path(self) -> str:
        return os.path.join(self.directory, WEIGHTS_NAME)

    # --- checks shared by inspect() and load(): header and meta model, each computed once ---------------
    def _header_checked(self) -> Dict[str, Tuple[Tuple[int, ...], str]]:
        if self._header is None:
            if self.hub is not None:  # fetched now, its size checked against the model the config builds
                _, expected, _ = self._measure()
                self.hub.fetch_weights(sum(math_prod(s) * _itemsize(d) for s, d in expected.values()),
                                       len(expected))
            if not os.path.isfile(self.weights_path):
                raise ArtifactError(f"{self.directory!r} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the artifact is "
                                    f"incomplete")
            self._header = read_header(self.weights_path)
        return self._header

    def _measure(self):
        if self._measured is None:
            self._measured = measure(self._config)
        return self._measured

    def _check(self, max_params: int) -> Tuple[int, Dict[str, Tuple[Tuple[int, ...], torch.dtype]]]:
        """Size within ``max_params`` and stored tensors == the model's trainable ones; no weight read."""
        total, expected, meta = self._measure()
        _check_size(total, max_params, self.config_path)  # before any weight is read (or downloaded)
        header = self._header_checked()
        check_tensors(upgrade_header(meta, header), expected, self.weights_path)
        return total, expected

    def backbone_weights(self, weights: Optional[str] = None) -> Optional[str]:
        """The backbone weights file a ``file:SHA256`` artifact loads (``weights`` if given, checked by hash);
        None for hub / random / shipped backbones. ArtifactError when it is missing or another file."""
        return find_weights_file(self._config["backbone"], self.directory, weights)

    def inspect(self, weights: Optional[str] = None, max_params: int = DEFAULT_MAX_PARAMS) -> Dict[str, Any]:
        """What :meth:`load` would build, without building it: the validated config, the model's size
        (measured on the meta device), the stored tensors and the backbone weights it would use. Raises
        ArtifactError for anything :meth:`load` would refuse (a missing backbone weights file is reported
        in ``backbone_weights`` instead: the artifact itself is valid)."""
        total, expected = self._check(max_params)
        config, bb = self._config, self._config["backbone"]
        try:
            wfile = self.backbone_weights(weights)
            wnote = wfile or {"hub": "downloaded from the hub by its tag", "random": "random init (seeded)",
                              "file": "shipped with vpt",
                              "memory": "a module in memory: pass backbone= to load"}.get(str(bb.get("weights_id", "")).split(":")[0], "-")
        except ArtifactError as e:
            wnote = f"MISSING: {e}"
        trainable = sum(math_prod(s) for s, _ in expected.values())
        return {
            "artifact": self.source, "revision": self.revision, "format_version": config["format_version"],
            "vpt_version": config.get("vpt_version"), "model_type": self.model_type, "task": self.task,
            "backbone": {k: bb.get(k) for k in ("name", "weights_id", "model_kwargs")}, "backbone_weights": wnote,
            "prompt": config.get("prompt"), "head": config.get("head"), "text": config.get("text"),
            "lora": config.get("lora"), "peft": config.get("peft"), "method": config.get("method"),
            "detector": config.get("detector"),
            "num_classes": config.get("num_classes"), "class_names": config.get("class_names"),
            "preprocessing": config.get("preprocessing"),
            "parameters": {"total": total, "trainable": trainable, "limit": max_params},
            "tensors": [{"name": k, "shape": list(s), "dtype": d} for k, (s, d) in sorted(self._header.items())],
        }

    def load(self, device: Union[None, str, torch.device] = None, weights: Optional[str] = None,
             max_params: int = DEFAULT_MAX_PARAMS, backbone: Union[None, str, BackboneAdapter] = None):
        """The model, safe for artifacts from strangers.

        Args:
            device: where to put it (None: stays on the CPU, where it is built).
            weights: the backbone weights file, if the artifact was made from one that has moved.
            max_params: refuse a model (backbone included) with more parameters + buffers; the artifact
                can't raise it.
            backbone: an already built adapter to put the prompts on (checked against the artifact; several
                artifacts then share one backbone); default: rebuild the backbone the artifact names.
        """
        from safetensors.torch import load_file

        self._check(max_params)
        saved_bb = self._config["backbone"]
        if isinstance(backbone, torch.nn.Module) and not isinstance(backbone, BackboneAdapter):
            from .backbones import wrap_module  # a timm / open_clip model in memory, named as the artifact names it
            backbone = wrap_module(backbone, name=saved_bb.get("name"), model_kwargs=saved_bb.get("model_kwargs"))
        if isinstance(backbone, BackboneAdapter):
            _check_same_backbone(saved_bb, backbone)
        elif isinstance(backbone, str) and backbone != saved_bb.get("name"):
            raise ArtifactError(f"artifact was made for backbone {saved_bb.get('name')!r}, not {backbone!r}")
        else:
            backbone = _backbone_from_saved(saved_bb, self.backbone_weights(weights))
        try:
            model = self.model_class.from_config(self._config, backbone)
        except ConfigError as e:
            raise ArtifactError(f"{self.directory}: {e}") from None
        wpath = self.weights_path
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
        model.name_or_path, model.revision = self.source, self.revision  # recorded in predictions / results
        return model if device is None else model.to(device)


def from_pretrained(directory: str, backbone: Union[None, str, BackboneAdapter] = None,
                    weights: Optional[str] = None, device: Union[None, str, torch.device] = "cpu",
                    max_params: int = DEFAULT_MAX_PARAMS, revision: Optional[str] = None,
                    token: Union[None, bool, str] = None):
    """Rebuild a model saved with ``save_pretrained``; safe for artifacts from strangers.
    ``Artifact.open(directory).load(...)``: see :class:`Artifact`.

    Args:
        directory: the artifact folder, or a task on the Hugging Face Hub: ``"org/name"`` (when no such
            local folder exists) or ``"hf://org/name[@revision]"``.
        revision: the hub branch, tag or commit (default: main); token: a hub token for private repos
            (default: the logged-in one).
        backbone: an already built adapter to put the prompts on (checked against the artifact);
            default: rebuild the backbone the artifact names.
        weights: the backbone weights file, if the artifact was made from one that has moved.
        max_params: refuse a model (backbone included) larger than this; the artifact can't raise it.
    """
    from .hub import as_hub_uri
    given = os.fspath(directory)
    spec = as_hub_uri(given)
    try:
        art = Artifact.open(spec, revision=revision, token=token, backbone=backbone)
    except ArtifactError as e:
        if spec == given:
            raise
        raise ArtifactError(f"{given!r} is no local folder, and as a hub id: {e}") from None
    return art.load(device=device, weights=weights, max_params=max_params, backbone=backbone)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def _st_name(dtype: torch.dtype) -> str:
    return next((k for k, v in _ST_DTYPES.items() if v == dtype), str(dtype))


def inspect_artifact(directory: str, weights: Optional[str] = None,
                     max_params: int = DEFAULT_MAX_PARAMS) -> Dict[str, Any]:
    """``Artifact.open(directory).inspect(...)``: see :meth:`Artifact.inspect`."""
    return Artifact.open(directory).inspect(weights=weights, max_params=max_params)


def math_prod(shape: Tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def init_from_artifact(model: torch.nn.Module, path: str) -> int:
    """``train.init_from``: copy an artifact's trainable tensors (a run folder means its best/) into ``model``,
    which must hold the same trainable tensors on the same backbone; returns how many were loaded. The file is
    read like any artifact (bounded config, safetensors header checked before a tensor is read, finite values)."""
    from .engine.checkpoint import trainable_tensors
    directory = path
    if os.path.isdir(os.path.join(path, "best")) and not os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
        directory = os.path.join(path, "best")
    try:
        saved = read_config(directory)
        header = read_header(os.path.join(directory, WEIGHTS_NAME))
    except ArtifactError as e:
        raise ConfigError(f"train.init_from {path!r}: {e}") from None
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "identity") and saved.get("backbone"):
        try:
            _check_same_backbone(saved["backbone"], backbone)
        except ArtifactError as e:
            raise ConfigError(f"train.init_from {path!r}: {e}") from None
    mine = model.trainable_state_dict() if hasattr(model, "trainable_state_dict") else trainable_tensors(model)
    want = {k: tuple(v.shape) for k, v in mine.items()}
    have = {k: shape for k, (shape, _) in header.items()}
    if want != have:
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        raise ConfigError(f"train.init_from {path!r} does not fit this model's trainable tensors (missing "
                          f"{missing[:4]}, unexpected {extra[:4]}, other shapes {shapes[:4]}): it was trained with "
                          f"another prompt / head config or other classes; use the artifact's own settings "
                          f"(its adapter_config.json) or drop --init-from")
    from safetensors.torch import load_file
    tensors = load_file(os.path.join(directory, WEIGHTS_NAME))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"train.init_from {path!r}: tensor(s) {', '.join(bad[:4])} hold NaN or inf values")
    missing, _ = model.load_state_dict(tensors, strict=False)
    _logger.info("init from %s: %d trainable tensors loaded (a new run: new optimizer and schedule)", directory,
                 len(tensors))
    return len(tensors)
