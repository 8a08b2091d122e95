"""peft's tuners on vpt's backbones (``model.type: peft``): the frozen backbone with any peft tuner that
injects into its layers (LoRA incl. DoRA / rsLoRA, IA3, LoHa, LoKr, BOFT, OFT, VeRA, FourierFT, LN tuning,
HRA, ...), built with peft's own config and layer classes, plus vpt's head.

Recipe::

    model:
      type: peft
      backbone: {name: timm:vit_base_patch16_224.augreg2_in21k_ft_in1k}
      peft: {peft_type: LOHA, r: 8, alpha: 8, target_modules: [qkv, fc1]}

The artifact keeps peft's layout, so ``peft.PeftModel.from_pretrained(timm_model, DIR)`` loads it:
``adapter_config.json`` holds peft's own keys (``peft_type``, ``r``, ``target_modules``, ...) at the top
level beside vpt's (peft ignores keys it does not know), and the tensors carry peft's saved names
(``base_model.model.blocks.0.attn.qkv.lora_A.weight``); a linear head over the backbone's own pooling is
saved as peft's ``modules_to_save`` head (``base_model.model.head.weight``). In reverse, an adapter that
peft saved for a timm model loads in vpt (``vpt.from_pretrained(DIR)`` / ``vpt predict DIR``): see
:func:`vpt.peft_format.vpt_config_from_peft`.

peft is an optional dependency (``pip install "vpt[peft]"`` or ``pip install peft``).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .backbones import BackboneConfig, create_backbone
from .config import ConfigError, from_dict, option
from .errors import ArtifactError
from .model import ClassifierSections, PromptedModel
from .peft_format import (LEGACY_PREFIX, PEFT_PREFIX, REFUSED, _backbone_name, _jsonable, _peft,  # noqa: F401
                          peft_config_class, supported_types, vpt_config_from_peft)
from .registry import MODEL_TYPES

# one line per tuner for `vpt list` (peft's own docs have the details)
TUNER_HELP = {
    "LORA": "low-rank update B A of each target layer (use_dora: DoRA, use_rslora: rsLoRA); mergeable",
    "IA3": "learned scaling of activations (feedforward_modules: scaled on their input); mergeable",
    "LOHA": "low-rank Hadamard product update; mergeable",
    "LOKR": "low-rank Kronecker product update; mergeable",
    "BOFT": "butterfly-factorised orthogonal rotation of the weights; mergeable",
    "OFT": "block-diagonal orthogonal rotation of the weights; mergeable",
    "HRA": "Householder reflections of the weights; mergeable",
    "FOURIERFT": "update learned as a sparse spectrum (random start, as the paper); mergeable",
    "LN_TUNING": "tunes copies of the LayerNorms (default: every norm in the blocks); mergeable (alpha 1)",
}
# peft config keys a vpt recipe / artifact may not set, with the reason
REFUSED_KEYS = {
    "task_type": "vpt trains its own head; an image backbone has no peft task type",
    "modules_to_save": "vpt saves its head itself (model.head); other modules: train them with a prompt or "
                       "model.train_backbone",
    "trainable_token_indices": "an image backbone has no word embedding",
    "base_model_name_or_path": "vpt records the backbone in model.backbone",
    "revision": "vpt records the backbone in model.backbone",
    "inference_mode": "vpt sets it",
    "megatron_config": "Megatron layers are not part of an image backbone",
    "megatron_core": "it names a module to import; an artifact never names code",
    "loftq_config": "LoftQ quantizes and rewrites the frozen backbone's weights, which the artifact does not store",
    "eva_config": "EVA initialisation needs a data pass peft runs itself; use the default init",
    "corda_config": "CorDA initialisation rewrites the frozen backbone's weights, which the artifact does not store",
    "layer_replication": "it duplicates transformers decoder layers",
    "runtime_config": "vpt sets it",
    "auto_mapping": "vpt sets it",
}
# LoRA inits that rewrite the frozen weights (the artifact stores adapter tensors only)
_REWRITING_INITS = ("pissa", "olora", "loftq", "corda", "eva")

PeftValue = Union[str, int, float, bool, List[Union[str, int]], Dict[str, Union[str, int, float]]]


def build_peft_config(spec: Dict[str, Any], module_names: Sequence[str], where: str = "model.peft",
                      default_targets: Optional[Sequence[str]] = None):
    """vpt's ``model.peft`` mapping -> (peft config instance, the mapping as vpt keeps it). Every key is one
    of peft's config fields for that type; refused keys and inits name the reason."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping {{peft_type: ..., ...peft's fields}}, got {type(spec).__name__}")
    spec = dict(spec)
    name, cls = peft_config_class(spec.pop("peft_type", None), where)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in spec:
        if key in REFUSED_KEYS:
            raise ConfigError(f"{where}.{key} is not taken by vpt: {REFUSED_KEYS[key]}; remove it")
        if key not in fields or key == "peft_type":
            from .registry import did_you_mean
            allowed = sorted(fields - set(REFUSED_KEYS) - {"peft_type", "peft_version"})
            raise ConfigError(f"unknown key {where}.{key} for peft_type {name} ({cls.__name__}); allowed: "
                              f"{', '.join(allowed)}{did_you_mean(key, allowed)}")
    init = spec.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_REWRITING_INITS):
        raise ConfigError(f"{where}.init_lora_weights {init!r} rewrites the frozen backbone's weights, which a vpt "
                          f"artifact does not store (it could not be reloaded); use true, false or 'gaussian'")
    if "target_modules" in fields and spec.get("target_modules") is None:
        if name == "LN_TUNING":
            spec["target_modules"] = _norm_targets(module_names)
        elif default_targets:
            spec["target_modules"] = list(default_targets)
        else:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in module_names})
            raise ConfigError(f"{where}.target_modules is required for this backbone (peft has no default for it); "
                              f"name modules or suffixes, or give one regex; its module names end in: "
                              f"{', '.join(leaves[:30])}")
    if name == "IA3" and spec.get("feedforward_modules") is None and isinstance(spec.get("target_modules"), list):
        # IA3 scales the input of feed-forward layers and the output of the others; peft needs the split
        spec["feedforward_modules"] = [t for t in spec["target_modules"] if t.rsplit(".", 1)[-1] in ("fc2", "c_proj")]
    if "target_modules" in spec:
        spec["target_modules"] = check_targets(spec["target_modules"], module_names, f"{where}.target_modules")
    try:
        config = cls(**spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: peft refuses this {name} config: {str(e).splitlines()[0][:300]}") from None
    return config, {"peft_type": name, **spec}


def _norm_targets(module_names: Sequence[str]) -> str:
    """LN tuning's default: every norm layer inside the blocks (timm: blocks.N.norm1/norm2; open_clip: ln_1/ln_2)."""
    return r".*\.(\d+)\.(norm\d?|ln_\d|ln_attn|ln_ffn)$"


_MAX_PATTERN = 500  # characters of a target_modules regex (it may come from an artifact)


def check_targets(targets: Union[List[str], str], module_names: Sequence[str], where: str) -> Union[List[str], str]:
    """peft's target_modules (names / suffixes, or one regex), checked against the backbone's modules the way
    peft matches them; a pattern that matches nothing is an error naming the forms and some module names."""
    peft = _peft()
    from peft.tuners.tuners_utils import check_target_module_exists
    if isinstance(targets, str):
        if len(targets) > _MAX_PATTERN:
            raise ConfigError(f"{where} regex is {len(targets)} characters; at most {_MAX_PATTERN}")
        try:
            re.compile(targets)
        except re.error as e:
            raise ConfigError(f"{where} {targets!r} is not a valid regular expression ({e})") from None
    elif not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"{where} must be a list of module names / suffixes or one regex string, got {targets!r}")
    else:
        targets = list(targets)

    def matches(t):
        probe = peft.LoraConfig(target_modules=t)
        return any(check_target_module_exists(probe, n) for n in module_names)
    unmatched = ([] if matches(targets) else [targets]) if isinstance(targets, str) else \
        [t for t in targets if not matches([t])]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in module_names})
        raise ConfigError(f"{where} {unmatched} match no module of this backbone; use module names or suffixes "
                          f"(e.g. qkv, blocks.11.attn.qkv) or one regex over full names; this backbone's module "
                          f"names end in: {', '.join(leaves[:30])}")
    return targets


def peft_json(config) -> Dict[str, Any]:
    """peft's own adapter_config.json keys for ``config`` (what PeftConfig.save_pretrained writes)."""
    out = config.to_dict()
    for k, v in list(out.items()):
        if isinstance(v, set):
            out[k] = sorted(v)
    out["peft_type"] = str(getattr(out["peft_type"], "value", out["peft_type"]))
    if out.get("task_type") is not None:
        out["task_type"] = str(getattr(out["task_type"], "value", out["task_type"]))
    return json.loads(json.dumps(out, default=str))


def peft_top_keys(config: Dict[str, Any]) -> List[str]:
    """The peft config fields an artifact of ``config`` may carry at its top level (for peft's loader)."""
    spec = config.get("peft") if isinstance(config.get("peft"), dict) else None
    if spec is None and config.get("model_type") == "lora":
        spec = {"peft_type": "LORA"}
    if spec is None:
        return []
    try:
        _, cls = peft_config_class(spec.get("peft_type"))
    except (ConfigError, ImportError):
        return []
    return [f.name for f in dataclasses.fields(cls)] + ["peft_version"]


@dataclass
class PeftSections(ClassifierSections):
    """A peft classifier's artifact: the classifier's sections plus ``peft`` (and peft's own keys, which vpt
    writes for peft's loader and ignores when it reads)."""
    peft: Dict[str, Optional[PeftValue]] = option(
        default_factory=lambda: {"peft_type": "LORA"},
        help="peft config: {peft_type: LORA | IA3 | LOHA | LOKR | BOFT | OFT | VERA | FOURIERFT | LN_TUNING | HRA "
             "| ..., target_modules: [qkv, ...], ...peft's own fields for that type}")

    foreign_keys = staticmethod(peft_top_keys)


class PeftClassifier(PromptedModel):
    """Frozen backbone + any peft tuner (peft's own classes) + head. ``vpt.create_model``'s arguments plus
    ``peft`` (a mapping of peft's config fields with ``peft_type``)."""

    model_type = "peft"
    task = "classification"
    config_sections = PeftSections

    def __init__(self, backbone, peft: Optional[Dict[str, Any]] = None, num_classes: int = 0, head=None,
                 class_names: Optional[Sequence[str]] = None):
        self._init_peft(backbone, peft if peft is not None else {"peft_type": "LORA"}, num_classes, head,
                        class_names, where="model.peft")

    def _init_peft(self, backbone, spec, num_classes, head, class_names, where):
        peft = _peft()
        super().__init__(backbone, prompt=None, num_classes=num_classes, head=head,
                         class_names=list(class_names) if class_names is not None else None)
        names = [n for n, _ in backbone.model.named_modules() if n]
        defaults = ["qkv"] if any(n.endswith(".qkv") for n in names) else None
        self.peft_config, self.peft_spec = build_peft_config(spec, names, where, defaults)
        meta = any(p.is_meta for p in backbone.model.parameters())  # vpt.artifact measures a model on meta
        try:
            # on meta, the adapter's own (small) tensors are made on the CPU: some tuners read values at init (BOFT)
            with torch.device("cpu") if meta else contextlib.nullcontext():
                peft.inject_adapter_in_model(self.peft_config, backbone.model)
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
            if "shared state" in str(e):
                raise ConfigError(f"{where}.peft_type {self.peft_spec['peft_type']} keeps state shared by all layers on "
                                  f"peft's tuner object, which peft's inject_adapter_in_model (how vpt puts a tuner on "
                                  f"the backbone it owns) does not support; use LORA, LOHA, LOKR, OFT, BOFT, IA3, "
                                  f"FOURIERFT, HRA or LN_TUNING") from None
            raise ConfigError(f"{where}: peft cannot put {self.peft_spec['peft_type']} on this backbone's layers: "
                              f"{str(e).splitlines()[0][:300]}; change its settings to fit these layers, or choose other "
                              f"target_modules (nn.Linear layers such as qkv, proj, fc1, fc2 on timm ViTs)") from None
        self._merged: Optional[Dict[str, Dict[str, torch.Tensor]]] = None
        self.register_load_state_dict_pre_hook(_load_peft_tensors)

    # --- peft's layout ------------------------------------------------------------------------------
    def _head_as_peft(self) -> bool:
        """A linear head over the library's own pooling is a timm model's ``head``: saved as peft saves
        ``modules_to_save=['head']``, so peft's loader on timm.create_model(..., num_classes=N) restores it."""
        return (self.head is not None and self.head_config.kind == "linear" and self.head_config.pool == "backbone"
                and self.backbone.library == "timm")

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict
        tensors = {PEFT_PREFIX + k: v.detach() for k, v in get_peft_model_state_dict(self.backbone.model).items()}
        own = {n: p.detach() for n, p in self.named_parameters()
               if p.requires_grad and not n.startswith("backbone.")}
        if self._head_as_peft():
            own = {(PEFT_PREFIX + "head." + n[len("head.fc."):] if n.startswith("head.fc.") else n): v
                   for n, v in own.items()}
        return {**tensors, **own}

    def upgrade_tensors(self, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """vpt <= 0.x saved the adapter under ``backbone.model.``; today peft's ``base_model.model.``."""
        tensors = super().upgrade_tensors(tensors)
        out = {}
        for k, v in tensors.items():
            if k.startswith(LEGACY_PREFIX):
                k = PEFT_PREFIX + k[len(LEGACY_PREFIX):]
            elif self._head_as_peft() and k.startswith("head.fc."):
                k = PEFT_PREFIX + "head." + k[len("head.fc."):]
            out[k] = v
        return out

    def peft_adapter_config(self) -> Dict[str, Any]:
        """peft's adapter_config.json keys for this model (PeftConfig.from_pretrained reads them)."""
        peft = _peft()
        out = peft_json(self.peft_config)
        out["modules_to_save"] = ["head"] if self._head_as_peft() else None
        out["base_model_name_or_path"] = _base_model_name(self.backbone)
        out["inference_mode"] = True
        out["peft_version"] = peft.__version__
        return out

    def train(self, mode: bool = True):
        super().train(mode)  # the frozen backbone stays in eval ...
        from peft.tuners.tuners_utils import BaseTunerLayer
        for m in self.backbone.model.modules():
            if isinstance(m, BaseTunerLayer):
                for name, child in m.named_children():
                    if name != "base_layer":
                        child.train(mode)  # ... but the tuner's own dropout is part of what trains
        return self

    def role_modules(self):
        roles = super().role_modules()
        from peft.tuners.tuners_utils import BaseTunerLayer
        roles["adapter"] = [m for m in self.backbone.model.modules() if isinstance(m, BaseTunerLayer)]
        return roles

    # --- merge ---------------------------------------------------------------------------------------
    def _tuner_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer
        return [(n, m) for n, m in self.backbone.model.named_modules() if isinstance(m, BaseTunerLayer)]

    @property
    def merged(self) -> bool:
        return self._merged is not None

    def merge(self, alpha: float = 1.0) -> "PeftClassifier":
        """Fold the adapter into the backbone's weights (peft's own ``merge`` per layer): the plain model's
        speed. ``alpha`` in [0, 1] interpolates WiSE-style between the frozen (0) and the tuned (1) weights,
        W0 + alpha (W1 - W0). :meth:`unmerge` restores the frozen weights exactly (they are kept)."""
        if self.merged:
            raise ConfigError("the adapter is already merged; call unmerge() first")
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"merge alpha must be in [0, 1] (0: the frozen backbone, 1: the tuned one), got {alpha}")
        if alpha != 1.0 and self.peft_spec["peft_type"] == "LN_TUNING":
            raise ConfigError("LN_TUNING merges by swapping in the tuned norm layers, which have no frozen twin to "
                              "interpolate with in place; use merge() (alpha 1)")
        kept: Dict[str, Dict[str, torch.Tensor]] = {}
        done = []
        try:
            for name, layer in self._tuner_layers():
                base = layer.get_base_layer()
                kept[name] = {k: p.detach().clone() for k, p in base.named_parameters(recurse=False)}
                with torch.no_grad():
                    layer.merge()
                    done.append((name, layer))
                    if alpha != 1.0:
                        for k, p in base.named_parameters(recurse=False):
                            p.copy_(kept[name][k] + alpha * (p - kept[name][k]))
        except (NotImplementedError, ValueError, AttributeError) as e:
            self._restore(kept, done)
            raise ConfigError(f"{self.peft_spec['peft_type']} cannot merge into the backbone ({e}); run it unmerged")
        self._merged = kept
        return self

    def _restore(self, kept, layers) -> None:
        with torch.no_grad():
            for name, layer in layers:
                if layer.merged:
                    layer.unmerge()  # peft's own (LN tuning swaps its layers back) ...
                base = layer.get_base_layer()
                for k, p in base.named_parameters(recurse=False):
                    p.copy_(kept[name][k])  # ... then the frozen weights exactly as they were

    def unmerge(self) -> "PeftClassifier":
        """Undo :meth:`merge`: the frozen weights back exactly, the adapter active again."""
        if not self.merged:
            raise ConfigError("the adapter is not merged; nothing to unmerge")
        self._restore(self._merged, self._tuner_layers())
        self._merged = None
        return self

    # --- configs ---------------------------------------------------------------------------------------
    def to_config(self) -> Dict[str, Any]:
        return {**self.peft_adapter_config(), **super().to_config(), "model_type": self.model_type,
                "peft": copy.deepcopy(self.peft_spec)}

    @classmethod
    def from_config(cls, config: Dict[str, Any], backbone) -> "PeftClassifier":
        return cls(backbone, peft=config.get("peft"), num_classes=config.get("num_classes", 0),
                   head=config.get("head"), class_names=config.get("class_names"))

    @classmethod
    def from_section(cls, section: Any, class_names: Sequence[str]) -> "PeftClassifier":
        _check_section(section, "peft")
        return cls(_section_backbone(section), peft=section.peft, num_classes=len(class_names), head=section.head,
                   class_names=list(class_names))


def _check_section(section: Any, name: str) -> None:
    if section.train_backbone:
        raise ConfigError(f"model.type '{name}' trains the adapter and the head only; set model.train_backbone: false")
    if getattr(section, "method", None) is not None:
        raise ConfigError(f"model.type '{name}' takes no model.method (peft's tuner is its method); remove "
                          f"model.method, or use model.type: classifier for vpt's methods")
    if section.prompt is not None:
        raise ConfigError(f"model.type '{name}' takes no prompt (peft's tuners replace the layers vpt's prompts run "
                          f"through); remove model.prompt, or use model.type: classifier for prompts")


def _section_backbone(section: Any):
    bb = section.backbone
    bb = bb if isinstance(bb, BackboneConfig) else from_dict(BackboneConfig, bb or {}, where="model.backbone")
    return create_backbone(bb)


def _load_peft_tensors(module, state_dict, prefix, *_):
    """load_state_dict pre-hook: tensors under peft's saved names go in through peft's own loader
    (``set_peft_model_state_dict``, which puts the adapter name back)."""
    from peft.utils import set_peft_model_state_dict
    start = prefix + PEFT_PREFIX
    if module._head_as_peft():
        for k in ("weight", "bias"):
            if start + "head." + k in state_dict:
                state_dict[prefix + "head.fc." + k] = state_dict.pop(start + "head." + k)
    sub = {k[len(start):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(start)]}
    if sub:
        result = set_peft_model_state_dict(module.backbone.model, sub)
        bad = [k for k in getattr(result, "unexpected_keys", []) if "default" in k or k in sub]
        if bad:
            raise ArtifactError(f"adapter tensors {bad[:3]} do not fit this model's {module.peft_spec['peft_type']} "
                                f"layers; load the artifact with the config it was saved with")


MODEL_TYPES.register("peft")(PeftClassifier)


# --- adapters peft saved ------------------------------------------------------------------------------
def _base_model_name(backbone) -> Optional[str]:
    """peft's base_model_name_or_path for a backbone: timm's hub id ('timm/ARCH.TAG') for pretrained timm
    weights, vpt's name for shipped ones, else None (random init or a local weights file)."""
    name = str(backbone.config.name)
    if name.startswith("vpt:"):
        return name
    if backbone.library == "timm" and backbone.config.pretrained and not backbone.config.weights and \
            not backbone.config.model_kwargs:
        return "timm/" + name.split(":", 1)[1]
    return None
