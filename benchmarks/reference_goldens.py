"""Write golden files from the reference repositories' own code, so the tests compare vpt to them without a
reference checkout (CI needs none).

    python benchmarks/reference_goldens.py --kmnp /tmp/ref/vpt --coop /tmp/ref/CoOp --dassl /tmp/ref/Dassl.pytorch \
        --kgcoop /tmp/ref/KgCoOp --promptsrc /tmp/ref/PromptSRC --maple /tmp/ref/multimodal-prompt-learning

Each flag takes a checkout of that repository (any subset of the flags; ``--dassl`` needs ``--coop``) and writes
its goldens under ``--output`` (default tests/data), each with the repository and its commit. This script
imports and runs the code of the checkouts it is given (that is its purpose): pass only checkouts you trust. The
modules it imports are named here, never read from a file; vpt itself and the tests only read the goldens
(safetensors tensors and JSON), never reference code.


``--kmnp`` (KMnP/vpt): its ``PromptedVisionTransformer`` (src/models/vit_prompt/vit.py), shallow and deep, with
its own prompt and head init, on a tiny seeded timm ViT whose weights are mapped to its names (the fused qkv
split): ``kmnp_vpt_{shallow,deep}.safetensors`` (inputs, labels, prompts, head, logits, cross-entropy, gradients of
every prompt and the head).

``--coop`` (KaiyangZhou/CoOp): its ``CustomCLIP`` of trainers/coop.py (random generic context at the end; a
class-specific one in the middle) and of trainers/cocoop.py (context from 'a photo of a', the meta-net), built on its
own clip/model.py ``CLIP`` carrying a tiny seeded open_clip ViT-B-32-quickgelu's weights: ``coop.safetensors``,
``coop_csc_middle.safetensors``, ``cocoop.safetensors`` (inputs, the tokenised prompts, logits, loss, gradients
of the context and meta-net). With ``--dassl`` (KaiyangZhou/Dassl.pytorch) also ``dassl_fewshot.json``: Dassl's
``DatasetBase.generate_fewshot_dataset`` draws (train, then val with min(shots, 4), one ``random`` stream seeded
as ``set_random_seed`` seeds it; seeds 1-3, several shot counts) on a synthetic split, and CoOp's
``OxfordPets.subsample_classes`` base / new halves (tests/test_benchmarks.py).

``--kgcoop`` (htyao89/KgCoOp): its ``CustomCLIP`` (trainers/kgcoop.py) and its trainer's loss CE + 8 * score,
DATASET.NAME ImageNet, the context moved off its init (there the term is zero): ``kgcoop.safetensors``.

``--promptsrc`` (muzairkhattak/PromptSRC): its ``CustomCLIP`` (IVLP prompts of its clip/model.py in both encoders,
the frozen features of its 60 templates) and one call of its trainer's own ``PromptSRC.forward_backward`` (CE and
the three L_SCL terms; the optimiser step a no-op): ``promptsrc.safetensors`` as published (its ``.half()``
casts: prompts fp16-representable, gradients and the zero-shot logits' text features fp16-rounded) and
``promptsrc_fp32.safetensors`` with those casts made the identity; and ``promptsrc_gpa_fp32.safetensors``: its
trainer's own ``build_model`` and four epochs of ``forward_backward`` (plain SGD), whose Gaussian prompt aggregation
replaces the model after the last (initial and final prompts, per-epoch losses, final logits).

``--maple`` (muzairkhattak/multimodal-prompt-learning): its ``VisionTransformer_MaPLe`` (clip/model.py) on a tiny
image tower with given prompts: ``maple_vision.safetensors`` (features and prompt gradients, fp16-rounded by
its ``.half()``; tests/test_clip_reference.py); and its whole ``CustomCLIP`` (trainers/maple.py) in fp32, its
``.half()`` casts the identity and its ViT-B/16 width literals this tower's: ``maple_fp32.safetensors``.

tests/test_reference_goldens.py compares vpt to them at 1e-5 in fp32 (``python tests/test_reference_goldens.py``
prints the largest difference per file). Only the reference modules that hold those classes are imported, from
the checkout's path; what they import and the classes never call is stubbed here as test scaffolding (Dassl's
registry, config, optimiser and checkpoint helpers; KMnP's logger, ``ml_collections`` and ``turtle``; the CLIP
downloads, which return the tiny model; ``.cuda()``, which stays on the CPU). Nothing of them is copied into vpt.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import types

SEEDS = (1, 2, 3)
SHOTS = (1, 2, 4, 8)


def synthetic_split():
    """CoOp's split_zhou layout: {'train'|'val'|'test': [[relpath, label, classname], ...]}; uneven classes, the
    labels' first appearance not in label order (Dassl groups by first appearance)."""
    rng = random.Random(0)
    names = ["abyssinian", "beagle", "chihuahua", "dachshund", "egyptian_mau", "ferret", "goldfish"]
    split = {}
    for s, (lo, hi) in (("train", (8, 14)), ("val", (4, 7)), ("test", (2, 3))):
        items = []
        for y, c in enumerate(names):
            items += [[f"{c}/{s}_{c}_{i:02d}.jpg", y, c] for i in range(rng.randint(lo, hi))]
        rng.shuffle(items)
        split[s] = items
    return split


def _commit(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dassl(root: str):
    """Dassl's base_dataset module (Datum, DatasetBase) without installing Dassl."""
    path = os.path.join(root, "dassl", "data", "datasets", "base_dataset.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--dassl {root!r}: no dassl/data/datasets/base_dataset.py; pass a Dassl.pytorch checkout")
    sys.modules.setdefault("gdown", types.ModuleType("gdown"))  # downloads only
    utils = types.ModuleType("dassl.utils")
    utils.check_isfile = lambda p: True  # the synthetic paths need not exist
    utils.read_json = utils.write_json = utils.mkdir_if_missing = lambda *a, **k: None
    sys.modules.setdefault("dassl", types.ModuleType("dassl"))
    sys.modules["dassl.utils"] = utils
    return _load(path, "dassl_base_dataset")


def load_coop(root: str, base):
    path = os.path.join(root, "datasets", "oxford_pets.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--coop {root!r}: no datasets/oxford_pets.py; pass a CoOp checkout")
    registry = types.SimpleNamespace(register=lambda: (lambda cls: cls))
    datasets = types.ModuleType("dassl.data.datasets")
    datasets.DATASET_REGISTRY, datasets.Datum, datasets.DatasetBase = registry, base.Datum, base.DatasetBase
    sys.modules["dassl.data"] = types.ModuleType("dassl.data")
    sys.modules["dassl.data.datasets"] = datasets
    return _load(path, "coop_oxford_pets")


def dassl_goldens(dassl_root: str, coop_root: str) -> dict:
    base = load_dassl(dassl_root)
    pets = load_coop(coop_root, base)
    split = synthetic_split()
    to_datum = {s: [base.Datum(impath=p, label=y, classname=c) for p, y, c in split[s]] for s in split}
    helper = base.DatasetBase.__new__(base.DatasetBase)  # generate_fewshot_dataset uses no instance state
    cases = []
    for seed in SEEDS:
        for shots in SHOTS:
            random.seed(seed)  # what Dassl's set_random_seed(seed) does to `random` before the dataset is built
            train = helper.generate_fewshot_dataset(to_datum["train"], num_shots=shots)
            val = helper.generate_fewshot_dataset(to_datum["val"], num_shots=min(shots, 4))
            case = {"seed": seed, "shots": shots, "train": [d.impath for d in train], "val": [d.impath for d in val]}
            for sub in ("base", "new"):
                tr, va, te = pets.OxfordPets.subsample_classes(train, val, to_datum["test"], subsample=sub)
                case[sub] = {k: [[d.impath, d.label] for d in v] for k, v in (("train", tr), ("val", va), ("test", te))}
            cases.append(case)
    return {"about": "Dassl's generate_fewshot_dataset + CoOp's subsample_classes on a synthetic split "
                     "(benchmarks/reference_goldens.py)",
            "dassl_commit": _commit(dassl_root), "coop_commit": _commit(coop_root),
            "python": sys.version.split()[0], "split": split, "cases": cases}


MAPLE_TOWER = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=3, width=64, patch_size=8, head_width=32),
                   text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=3))
MAPLE_SEED, MAPLE_DEPTH, MAPLE_NCTX = 11, 2, 2


def maple_tower():
    """The tiny open_clip model both sides use (vpt's seeded random init)."""
    import vpt
    return vpt.create_backbone("open_clip:ViT-B-32-quickgelu", pretrained=False, init_seed=MAPLE_SEED,
                               model_kwargs=MAPLE_TOWER)


def maple_goldens(maple_root: str):
    import torch
    from vpt.backbones import state_sha256
    path = os.path.join(maple_root, "clip", "model.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--maple {maple_root!r}: no clip/model.py; pass a multimodal-prompt-learning checkout")
    ref_model = _load(path, "maple_clip_model")
    bb = maple_tower()
    visual = bb.model.visual
    v = MAPLE_TOWER["vision_cfg"]
    design = {"trainer": "MaPLe", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0,
              "maple_length": MAPLE_NCTX}
    ref = ref_model.VisionTransformer_MaPLe(v["image_size"], v["patch_size"], v["width"], v["layers"],
                                            v["width"] // v["head_width"], MAPLE_TOWER["embed_dim"], design)
    missing, unexpected = ref.load_state_dict(visual.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"the reference tower does not take open_clip's weights: missing {missing}, "
                         f"unexpected {unexpected}")
    ref.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, v["image_size"], v["image_size"], generator=g)
    prompts = [(0.5 * torch.randn(MAPLE_NCTX, v["width"], generator=g)).half().float().requires_grad_()
               for _ in range(MAPLE_DEPTH)]  # fp16-representable: the reference's .half() is exact on them
    feats = ref(x, prompts[0], prompts[1:])
    weights = torch.randn(feats.shape, generator=g)
    (feats * weights).sum().backward()
    tensors = {"x": x, "features": feats.detach(), "loss_weights": weights}
    for j, p in enumerate(prompts):
        tensors[f"prompt_{j}"] = p.detach()
        tensors[f"grad_{j}"] = p.grad
    meta = {"repo": "muzairkhattak/multimodal-prompt-learning", "commit": _commit(maple_root),
            "backbone": "open_clip:ViT-B-32-quickgelu", "init_seed": str(MAPLE_SEED),
            "model_kwargs": json.dumps(MAPLE_TOWER), "visual_sha256": state_sha256(visual),
            "depth": str(MAPLE_DEPTH), "num_tokens": str(MAPLE_NCTX),
            "loss": "sum(features * loss_weights); grads of the prompts (fp16-rounded by the reference's .half())"}
    return {k: t.contiguous() for k, t in tensors.items()}, meta


VIT_NAME = "timm:vit_tiny_patch16_224"
VIT_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
VIT_SEED, VIT_NTOK, VIT_CLASSES, VIT_HEAD_SEED = 13, 3, 5, 7


def vit_tower():
    """The tiny timm ViT both sides use (vpt's seeded random init)."""
    import vpt
    return vpt.create_backbone(VIT_NAME, pretrained=False, init_seed=VIT_SEED, model_kwargs=VIT_KWARGS)


class _AttrDict(dict):
    """ml_collections.ConfigDict as KMnP's vit_configs uses it (item and attribute access)."""
    __getattr__ = dict.__getitem__

    def __setattr__(self, k, v):
        self[k] = v


def load_kmnp(root: str):
    """KMnP/vpt's src/models/vit_prompt/vit.py (and the ViT it extends) without its logging / config deps."""
    path = os.path.join(root, "src", "models", "vit_prompt", "vit.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--kmnp {root!r}: no src/models/vit_prompt/vit.py; pass a KMnP/vpt checkout")
    ml = types.ModuleType("ml_collections")
    ml.ConfigDict = lambda d=None: _AttrDict(d or {})
    sys.modules.setdefault("ml_collections", ml)
    log = types.ModuleType("src.utils.logging")  # termcolor / simplejson / iopath: only its logger is used
    log.get_logger = lambda name: __import__("logging").getLogger(name)
    sys.modules["src.utils.logging"] = log
    if importlib.util.find_spec("turtle") is None or importlib.util.find_spec("tkinter") is None:
        turtle = types.ModuleType("turtle")  # vit_backbones/vit.py imports turtle.forward and never uses it
        turtle.forward = None
        sys.modules.setdefault("turtle", turtle)
    sys.path.insert(0, root)
    try:
        return importlib.import_module("src.models.vit_prompt.vit")
    finally:
        sys.path.remove(root)


def timm_to_kmnp(sd: dict) -> dict:
    """A timm VisionTransformer state dict under KMnP's (jeonsworld ViT-pytorch) names: the fused qkv split."""
    out = {"transformer.embeddings.patch_embeddings.weight": sd["patch_embed.proj.weight"],
           "transformer.embeddings.patch_embeddings.bias": sd["patch_embed.proj.bias"],
           "transformer.embeddings.cls_token": sd["cls_token"],
           "transformer.embeddings.position_embeddings": sd["pos_embed"],
           "transformer.encoder.encoder_norm.weight": sd["norm.weight"],
           "transformer.encoder.encoder_norm.bias": sd["norm.bias"]}
    for i in range(VIT_KWARGS["depth"]):
        src, dst = f"blocks.{i}.", f"transformer.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for name, part in zip(("query", "key", "value"), sd[src + f"attn.qkv.{kind}"].chunk(3)):
                out[dst + f"attn.{name}.{kind}"] = part
            pairs = (("norm1", "attention_norm"), ("norm2", "ffn_norm"), ("attn.proj", "attn.out"),
                     ("mlp.fc1", "ffn.fc1"), ("mlp.fc2", "ffn.fc2"))
            for a, b in pairs:
                out[dst + f"{b}.{kind}"] = sd[src + f"{a}.{kind}"]
    return out


def kmnp_goldens(kmnp_root: str, deep: bool):
    """KMnP's PromptedVisionTransformer (prompts after the class token; deep: block i >= 1 replaces them with
    its own) with a head of VIT_CLASSES on the tiny timm ViT's weights: logits, cross-entropy and its gradients
    of the prompts and the head."""
    import torch
    import torch.nn.functional as F
    from vpt.backbones import state_sha256
    ref_vit = load_kmnp(kmnp_root)
    k = VIT_KWARGS
    cfg = _AttrDict(patches=_AttrDict(size=(k["patch_size"],) * 2), hidden_size=k["embed_dim"], classifier="token",
                    representation_size=None,
                    transformer=_AttrDict(mlp_dim=4 * k["embed_dim"], num_heads=k["num_heads"],
                                          num_layers=k["depth"], attention_dropout_rate=0.0, dropout_rate=0.0))
    ref_vit.CONFIGS["golden_tiny"] = cfg
    # KMnP's _C.MODEL.PROMPT defaults (src/configs/config.py) with NUM_TOKENS and DEEP set
    prompt_cfg = _AttrDict(LOCATION="prepend", INITIATION="random", NUM_DEEP_LAYERS=None, DEEP_SHARED=False,
                           NUM_TOKENS=VIT_NTOK, DROPOUT=0.0, PROJECT=-1, DEEP=deep, VIT_POOL_TYPE="original")
    bb = vit_tower()
    torch.manual_seed(0)  # the reference's own prompt and head init
    ref = ref_vit.PromptedVisionTransformer(prompt_cfg, "golden_tiny", img_size=k["img_size"],
                                            num_classes=VIT_CLASSES)
    sd = timm_to_kmnp(bb.model.state_dict())
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    expected_missing = {"head.weight", "head.bias", "transformer.prompt_embeddings"} | (
        {"transformer.deep_prompt_embeddings"} if deep else set())
    if set(missing) != expected_missing or unexpected:
        raise SystemExit(f"KMnP's ViT does not take timm's weights: missing {missing}, unexpected {unexpected}")
    ref.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, k["img_size"], k["img_size"], generator=g)
    labels = torch.randint(0, VIT_CLASSES, (4,), generator=g)
    logits = ref(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    t = ref.transformer
    prompts = [t.prompt_embeddings[0]] + (list(t.deep_prompt_embeddings) if deep else [])
    grads = [t.prompt_embeddings.grad[0]] + (list(t.deep_prompt_embeddings.grad) if deep else [])
    # the head KMnP trains (src/models/vit_models.py setup_head: its MLP with MODEL.MLP_NUM 0, special_bias) as
    # seeded torch.manual_seed(VIT_HEAD_SEED) builds it
    sys.path.insert(0, kmnp_root)
    try:
        mlp = importlib.import_module("src.models.mlp")
    finally:
        sys.path.remove(kmnp_root)
    torch.manual_seed(VIT_HEAD_SEED)
    train_head = mlp.MLP(input_dim=k["embed_dim"], mlp_dims=[VIT_CLASSES], special_bias=True).last_layer
    tensors = {"x": x, "labels": labels, "logits": logits.detach(), "loss": loss.detach().reshape(1),
               "train_head_weight": train_head.weight.detach(), "train_head_bias": train_head.bias.detach(),
               "head_weight": ref.head.weight.detach(), "head_bias": ref.head.bias.detach(),
               "grad_head_weight": ref.head.weight.grad, "grad_head_bias": ref.head.bias.grad}
    for i, (p, gr) in enumerate(zip(prompts, grads)):
        tensors[f"prompt_{i}"] = p.detach()
        tensors[f"grad_prompt_{i}"] = gr
    meta = {"repo": "KMnP/vpt", "commit": _commit(kmnp_root), "reference": "src/models/vit_prompt/vit.py "
            "PromptedVisionTransformer", "backbone": VIT_NAME, "init_seed": str(VIT_SEED),
            "model_kwargs": json.dumps(VIT_KWARGS), "backbone_sha256": state_sha256(bb.model),
            "kind": "vpt_deep" if deep else "vpt_shallow", "num_tokens": str(VIT_NTOK),
            "train_head_seed": str(VIT_HEAD_SEED),
            "loss": "cross_entropy(logits, labels); grads of the prompts (prompt_i: block i) and the head"}
    return {n: v.contiguous() for n, v in tensors.items()}, meta


CLIP_NAME = "open_clip:ViT-B-32-quickgelu"  # the reference CLIP's QuickGELU
# vision width 64 = one head: the reference CLIP derives its vision heads as width // 64
CLIP_TOWER = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=3, width=64, patch_size=8, head_width=64),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=3))
CLIP_SEED = 17
CLASS_NAMES = ["golden_retriever", "cat", "sea lion"]  # an underscore and a two-token name


def clip_tower():
    """The tiny open_clip model the CoOp-family goldens use (vpt's seeded random init)."""
    import vpt
    return vpt.create_backbone(CLIP_NAME, pretrained=False, init_seed=CLIP_SEED, model_kwargs=CLIP_TOWER)


def _stub_dassl_trainer_imports():
    """The Dassl names the trainers' modules import: the registry decorator is kept; the rest (optimiser, checkpoint
    and accuracy helpers of the training loop) is never called by the model classes."""
    def module(name, **attrs):
        m = sys.modules.get(name) or types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
        sys.modules[name] = m
    never = lambda *a, **k: None  # noqa: E731
    module("dassl")
    module("dassl.engine", TRAINER_REGISTRY=types.SimpleNamespace(register=lambda: (lambda cls: cls)),
           TrainerX=object)
    module("dassl.metrics", compute_accuracy=never)
    module("dassl.utils", load_pretrained_weights=never, load_checkpoint=never)
    module("dassl.optim", build_optimizer=never, build_lr_scheduler=never)


def load_trainer(root: str, trainer: str, flag: str):
    """A reference repository's ``trainers/<trainer>.py`` with its own ``clip`` package (model, tokenizer), fresh:
    each repository ships its own clip, so an earlier one is dropped from sys.modules first."""
    path = os.path.join(root, "trainers", f"{trainer}.py")
    if not os.path.isfile(path) or not os.path.isdir(os.path.join(root, "clip")):
        raise SystemExit(f"{flag} {root!r}: no trainers/{trainer}.py and clip/; pass its checkout")
    for name in [n for n in sys.modules if n == "clip" or n.startswith("clip.") or n.startswith("trainers")]:
        del sys.modules[name]
    _stub_dassl_trainer_imports()
    sys.path.insert(0, root)
    try:
        clip_pkg = importlib.import_module("clip.clip")
        model = importlib.import_module("clip.model")
        trainer_mod = importlib.import_module(f"trainers.{trainer}")
    finally:
        sys.path.remove(root)
    return trainer_mod, model, clip_pkg


def reference_clip(model_module, open_clip_model, *design, prompted: bool = False):
    """The reference repository's clip/model.py CLIP at CLIP_TOWER's sizes, carrying the open_clip model's weights."""
    v, t = CLIP_TOWER["vision_cfg"], CLIP_TOWER["text_cfg"]
    ref = model_module.CLIP(CLIP_TOWER["embed_dim"], v["image_size"], v["layers"], v["width"], v["patch_size"],
                            t["context_length"], t["vocab_size"], t["width"], t["heads"], t["layers"], *design)
    sd = {k: v for k, v in open_clip_model.state_dict().items() if k != "attn_mask"}
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (prompted and "VPT" in k)]  # its prompts keep their own init
    if missing or unexpected:
        raise SystemExit(f"the reference CLIP does not take open_clip's weights: missing {missing}, "
                         f"unexpected {unexpected}")
    return ref.float().eval()


class _CudaIsCpu:
    """The reference code moves tensors and models with ``.cuda()``: here that stays on the CPU (fp32)."""

    def __enter__(self):
        import torch
        self.saved = torch.Tensor.cuda, torch.nn.Module.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
        return self

    def __exit__(self, *exc):
        import torch
        torch.Tensor.cuda, torch.nn.Module.cuda = self.saved


def _cfg(trainer_section: str, **fields):
    """The yacs config the reference PromptLearner reads: INPUT.SIZE, DATASET.NAME and its trainer section."""
    v = CLIP_TOWER["vision_cfg"]
    return _AttrDict(INPUT=_AttrDict(SIZE=(v["image_size"], v["image_size"])),
                     DATASET=_AttrDict(NAME="ImageNet"), OPTIM=_AttrDict(MAX_EPOCH=1),
                     TRAINER=_AttrDict({trainer_section: _AttrDict(fields)}))


def _clip_inputs():
    import torch
    g = torch.Generator().manual_seed(1)
    v = CLIP_TOWER["vision_cfg"]
    x = torch.randn(4, 3, v["image_size"], v["image_size"], generator=g)
    return x, torch.randint(0, len(CLASS_NAMES), (4,), generator=g)


def _clip_meta(repo, root, reference, bb, text, loss):
    from vpt.backbones import state_sha256
    return {"repo": repo, "commit": _commit(root), "reference": reference, "backbone": CLIP_NAME,
            "init_seed": str(CLIP_SEED), "model_kwargs": json.dumps(CLIP_TOWER),
            "backbone_sha256": state_sha256(bb.model), "class_names": json.dumps(CLASS_NAMES),
            "text": json.dumps(text), "loss": loss}


COOP_CASES = {  # golden name -> (CoOp's TRAINER.COOP fields, the vpt text config computing the same)
    "coop": (dict(N_CTX=16, CTX_INIT="", CSC=False, CLASS_TOKEN_POSITION="end", PREC="fp32"),
             {"kind": "coop", "num_tokens": 16}),
    "coop_csc_middle": (dict(N_CTX=4, CTX_INIT="", CSC=True, CLASS_TOKEN_POSITION="middle", PREC="fp32"),
                        {"kind": "coop", "num_tokens": 4, "class_specific": True, "position": "middle"}),
}


def coop_goldens(coop_root: str, case: str):
    """CoOp's own CustomCLIP (trainers/coop.py: PromptLearner, TextEncoder) on the tiny CLIP: logits,
    cross-entropy and its gradient of the context."""
    import torch
    import torch.nn.functional as F
    fields, text = COOP_CASES[case]
    coop, model_module, _ = load_trainer(coop_root, "coop", "--coop")
    bb = clip_tower()
    torch.manual_seed(0)  # the reference's own context init
    ref = coop.CustomCLIP(_cfg("COOP", **fields), CLASS_NAMES, reference_clip(model_module, bb.model)).eval()
    x, labels = _clip_inputs()
    logits = ref(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    ctx = ref.prompt_learner.ctx
    tensors = {"x": x, "labels": labels, "logits": logits.detach(), "loss": loss.detach().reshape(1),
               "ctx": ctx.detach(), "grad_ctx": ctx.grad,
               "tokens": ref.tokenized_prompts}  # the reference tokenizer's ids of the prompts
    meta = _clip_meta("KaiyangZhou/CoOp", coop_root, "trainers/coop.py CustomCLIP", bb, text,
                      "cross_entropy(logits, labels); grad of the context")
    return {n: v.contiguous() for n, v in tensors.items()}, meta


def cocoop_goldens(coop_root: str):
    """CoCoOp's own CustomCLIP (trainers/cocoop.py: the meta-net shifts the context per image; its training
    forward returns the cross-entropy): logits, loss and the gradients of the context and the meta-net."""
    import torch
    cocoop, model_module, _ = load_trainer(coop_root, "cocoop", "--coop")
    bb = clip_tower()
    torch.manual_seed(0)
    cfg = _cfg("COCOOP", N_CTX=4, CTX_INIT="a photo of a", PREC="fp32")
    ref = cocoop.CustomCLIP(cfg, CLASS_NAMES, reference_clip(model_module, bb.model)).eval()
    x, labels = _clip_inputs()
    with torch.no_grad():
        logits = ref(x)
    ref.train()
    loss = ref(x, labels)
    loss.backward()
    pl = ref.prompt_learner
    tensors = {"x": x, "labels": labels, "logits": logits, "loss": loss.detach().reshape(1),
               "ctx": pl.ctx.detach(), "grad_ctx": pl.ctx.grad, "tokens": ref.tokenized_prompts}
    for name, p in pl.meta_net.named_parameters():
        tensors[f"meta_net.{name}"] = p.detach()
        tensors[f"grad_meta_net.{name}"] = p.grad
    meta = _clip_meta("KaiyangZhou/CoOp", coop_root, "trainers/cocoop.py CustomCLIP", bb,
                      {"kind": "cocoop"}, "CustomCLIP(x, labels) in training (its cross-entropy); grads of the "
                      "context and the meta-net (linear1, linear2)")
    return {n: v.contiguous() for n, v in tensors.items()}, meta


KGCOOP_WEIGHT = 8.0  # scripts/base2new_train.sh's WEIGHT (TRAINER.COOP.W)


def kgcoop_goldens(kgcoop_root: str):
    """KgCoOp's own CustomCLIP (trainers/kgcoop.py: context from 'a photo of a'; its forward returns the logits and
    1 - mean cos(learned, hand-crafted class embeddings)), the trainer's loss CE + W * score with W = 8.0 and
    DATASET.NAME ImageNet (its hand-crafted template 'a photo of a {}.'): logits, score, loss, context gradient.
    The hand-crafted features come from the reference's load_clip_to_cpu, which here returns the same tiny CLIP."""
    import torch
    import torch.nn.functional as F
    if os.path.isdir(os.path.join(kgcoop_root, "KgCoOp", "trainers")):
        kgcoop_root = os.path.join(kgcoop_root, "KgCoOp")  # the repository root holds the code in KgCoOp/
    kgcoop, model_module, _ = load_trainer(kgcoop_root, "kgcoop", "--kgcoop")
    bb = clip_tower()
    kgcoop.load_clip_to_cpu = lambda cfg: reference_clip(model_module, bb.model)  # no download: the tiny CLIP
    cfg = _cfg("COOP", N_CTX=4, CTX_INIT="a photo of a", CSC=False, CLASS_TOKEN_POSITION="end", PREC="fp32",
               W=KGCOOP_WEIGHT)
    cfg.TRAINER.COCOOP = _AttrDict(PREC="fp32")
    torch.manual_seed(0)
    with _CudaIsCpu():
        ref = kgcoop.CustomCLIP(cfg, CLASS_NAMES, reference_clip(model_module, bb.model)).eval()
    x, labels = _clip_inputs()
    ctx = ref.prompt_learner.ctx
    with torch.no_grad():  # as after some training: at the init the learned prompts are the hand-crafted ones
        ctx.add_(0.05 * torch.randn(ctx.shape, generator=torch.Generator().manual_seed(2)))
    logits, score = ref(x)
    loss = F.cross_entropy(logits, labels) + cfg.TRAINER.COOP.W * score
    loss.backward()
    tensors = {"x": x, "labels": labels, "logits": logits.detach(), "score": score.detach().reshape(1),
               "loss": loss.detach().reshape(1), "ctx": ctx.detach(), "grad_ctx": ctx.grad,
               "tokens": ref.tokenized_prompts}
    meta = _clip_meta("htyao89/KgCoOp", kgcoop_root, "KgCoOp/trainers/kgcoop.py CustomCLIP", bb,
                      {"kind": "kgcoop", "weight": KGCOOP_WEIGHT},
                      "cross_entropy(logits, labels) + 8.0 * score (KgCoOp.forward_backward); grad of the context")
    return {n: v.contiguous() for n, v in tensors.items()}, meta


# PromptSRC's base-to-novel settings (configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml) at this tower's
# depth: every block prompted, 4 + 4 tokens, the text context from 'a photo of a', loss weights 25 and 10
PROMPTSRC_CFG = dict(N_CTX_TEXT=4, N_CTX_VISION=4, CTX_INIT="a photo of a", PROMPT_DEPTH_TEXT=3,
                     PROMPT_DEPTH_VISION=3, TEXT_LOSS_WEIGHT=25.0, IMAGE_LOSS_WEIGHT=10.0, GPA_MEAN=15, GPA_STD=1,
                     PREC="fp32")


class _CudaIsCpuFp32(_CudaIsCpu):
    """PromptSRC's code runs in fp16 on a GPU only (its zero-shot image encoder stays fp16 whatever PREC says);
    for an fp32 run ``.cuda()`` keeps tensors on the CPU and brings the fp16 it casts to back to fp32 (exact), so
    its ``.half()`` casts (the prompts in every block, ``fixed_embeddings`` in the zero-shot logits) still round
    to fp16 as the reference does. ``fp16_casts=False``: ``Tensor.half`` is the identity too, the all-fp32 run."""

    def __init__(self, fp16_casts: bool = True):
        self.fp16_casts = fp16_casts

    def __enter__(self):
        import torch
        super().__enter__()
        self.half = torch.Tensor.half
        torch.Tensor.cuda = lambda self, *a, **k: self.float() if self.dtype == torch.half else self
        if not self.fp16_casts:
            torch.Tensor.half = lambda self, *a, **k: self
        return self

    def __exit__(self, *exc):
        import torch
        torch.Tensor.half = self.half
        super().__exit__(*exc)


def load_promptsrc(promptsrc_root: str):
    """PromptSRC's trainers/promptsrc.py whose ``load_clip_to_cpu`` builds the tiny CLIP with its own clip/model.py
    (IVLP prompts as PROMPTSRC_CFG sets them; none for the zero-shot model) instead of downloading one."""
    promptsrc, model_module, _ = load_trainer(promptsrc_root, "promptsrc", "--promptsrc")
    bb = clip_tower()
    c = PROMPTSRC_CFG

    def load_clip_to_cpu(cfg, zero_shot_model=False):
        on = not zero_shot_model
        design = {"trainer": "IVLP", "vision_depth": c["PROMPT_DEPTH_VISION"] if on else 0,
                  "language_depth": c["PROMPT_DEPTH_TEXT"] if on else 0,
                  "vision_ctx": c["N_CTX_VISION"] if on else 0, "language_ctx": c["N_CTX_TEXT"] if on else 0}
        return reference_clip(model_module, bb.model, design, prompted=on)

    promptsrc.load_clip_to_cpu = load_clip_to_cpu
    return promptsrc, bb


def promptsrc_goldens(promptsrc_root: str, fp16_casts: bool = True):
    """PromptSRC's own CustomCLIP (trainers/promptsrc.py: VLPromptLearner, IVLP deep prompts in both encoders of
    its clip/model.py, frozen features from its 60 templates) and one step of its trainer's own forward_backward
    (CE + L_SCL-text + L_SCL-image + L_SCL-logits; the optimiser step is a no-op so the gradients stay): logits,
    loss, the gradients of every prompt. Its prompts pass through ``.half()`` in the forward: they are set
    fp16-representable (the forward is then exact) and their gradients are fp16-rounded; its zero-shot logits use
    the frozen text features rounded to fp16. ``fp16_casts=False``: the same code with ``.half()`` made the
    identity (see _CudaIsCpuFp32), the fp32 computation vpt must equal at 1e-5."""
    import torch
    promptsrc, bb = load_promptsrc(promptsrc_root)
    c = PROMPTSRC_CFG
    cfg = _cfg("PROMPTSRC", **c)
    cfg.OPTIM.MAX_EPOCH = 20
    torch.manual_seed(0)  # the reference's own prompt init
    with _CudaIsCpuFp32(fp16_casts):
        ref = promptsrc.CustomCLIP(cfg, CLASS_NAMES, promptsrc.load_clip_to_cpu(cfg)).eval()
        visual, text = ref.image_encoder, ref.text_encoder.transformer
        prompts = {"vision_0": visual.VPT}
        prompts.update({f"vision_{i}": visual.transformer.resblocks[i].VPT_shallow
                        for i in range(1, c["PROMPT_DEPTH_VISION"])})
        prompts.update({f"text_{i}": text.resblocks[i].VPT_shallow for i in range(1, c["PROMPT_DEPTH_TEXT"])})
        prompts["ctx"] = ref.prompt_learner.ctx
        if fp16_casts:
            with torch.no_grad():
                for p in prompts.values():  # fp16-representable: the reference's .half() is exact on them
                    p.copy_(p.half().float())
        x, labels = _clip_inputs()
        with torch.no_grad():
            logits = ref(x)
        ref.train()
        trainer = types.SimpleNamespace(  # what PromptSRC.forward_backward reads of its trainer, one mid-epoch batch
            cfg=cfg, model=ref, scaler=None, device="cpu", batch_idx=0, num_batches=2, step_counter=1,
            parse_batch_train=lambda b: (b["img"], b["label"]),
            optim=types.SimpleNamespace(zero_grad=lambda: ref.zero_grad(set_to_none=True), step=lambda: None))
        summary = promptsrc.PromptSRC.forward_backward(trainer, {"img": x, "label": labels})
    tensors = {"x": x, "labels": labels, "logits": logits, "loss": torch.tensor([summary["loss"]]),
               "tokens": ref.tokenized_prompts}
    for name, p in prompts.items():
        tensors[f"prompt_{name}"] = p.detach()
        tensors[f"grad_{name}"] = p.grad
    text_cfg = {"kind": "promptsrc", "num_tokens": c["N_CTX_TEXT"], "init": c["CTX_INIT"],
                "text_depth": c["PROMPT_DEPTH_TEXT"], "vision_depth": c["PROMPT_DEPTH_VISION"],
                "vision_tokens": c["N_CTX_VISION"], "text_weight": c["TEXT_LOSS_WEIGHT"],
                "image_weight": c["IMAGE_LOSS_WEIGHT"]}
    meta = _clip_meta("muzairkhattak/PromptSRC", promptsrc_root, "trainers/promptsrc.py CustomCLIP + "
                      "PromptSRC.forward_backward", bb, text_cfg,
                      "PromptSRC.forward_backward's loss (a Python float: fp64 of the fp32 value); grads of the "
                      "prompts" + (" (all but ctx pass the reference's .half(): fp16-rounded)" if fp16_casts else ""))
    meta["fp16_casts"] = str(fp16_casts).lower()
    return {n: v.contiguous() for n, v in tensors.items()}, meta


class _Namespace:
    """A module seen through a few replaced names (what the reference's module-level ``nn`` / ``torch`` resolve to)."""

    def __init__(self, module, **replaced):
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced[name] if name in self._replaced else getattr(self._module, name)


def maple_model_goldens(maple_root: str):
    """MaPLe's own CustomCLIP (trainers/maple.py: MultiModalPromptLearner, its clip/model.py MaPLe encoders), N_CTX 2
    from 'a photo of a', depth 3 (every block of this tower), its training forward (the cross-entropy): logits,
    loss, gradients of the context, the deeper text prompts and the couplings. Its code runs in fp16 only (the
    coupling ``proj`` is made fp16 whatever PREC says); here the ``.half()`` casts are the identity (fp32), and the
    ViT-B/16 widths it writes as literals (``nn.Linear(ctx_dim, 768)``, ``torch.empty(n_ctx, 512)``) are this
    tower's widths."""
    import torch
    maple, model_module, _ = load_trainer(maple_root, "maple", "--maple")
    bb = clip_tower()
    v, t = CLIP_TOWER["vision_cfg"], CLIP_TOWER["text_cfg"]
    n_ctx, depth = 2, 3
    maple.nn = _Namespace(torch.nn, Linear=lambda i, o, **k: torch.nn.Linear(i, v["width"] if o == 768 else o, **k))
    maple.torch = _Namespace(torch, empty=lambda *s, **k: torch.empty(*[t["width"] if d == 512 else d for d in s], **k))
    design = {"trainer": "MaPLe", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0,
              "maple_length": n_ctx}
    cfg = _cfg("MAPLE", N_CTX=n_ctx, CTX_INIT="a photo of a", PROMPT_DEPTH=depth, PREC="fp32")
    torch.manual_seed(0)  # the reference's own init of the deeper prompts and the couplings
    with _CudaIsCpuFp32(fp16_casts=False):
        module_half = torch.nn.Module.half
        torch.nn.Module.half = lambda self: self
        try:
            ref = maple.CustomCLIP(cfg, CLASS_NAMES, reference_clip(model_module, bb.model, design)).eval()
            x, labels = _clip_inputs()
            with torch.no_grad():
                logits = ref(x)
            ref.train()
            loss = ref(x, labels)
            loss.backward()
        finally:
            torch.nn.Module.half = module_half
    pl = ref.prompt_learner
    tensors = {"x": x, "labels": labels, "logits": logits, "loss": loss.detach().reshape(1),
               "tokens": ref.tokenized_prompts, "ctx": pl.ctx.detach(), "grad_ctx": pl.ctx.grad}
    for j, p in enumerate(pl.compound_prompts_text):
        tensors[f"text_{j + 1}"], tensors[f"grad_text_{j + 1}"] = p.detach(), p.grad
    for j, layer in enumerate([pl.proj, *pl.compound_prompt_projections]):
        for name in ("weight", "bias"):
            p = getattr(layer, name)
            tensors[f"coupling_{j}.{name}"], tensors[f"grad_coupling_{j}.{name}"] = p.detach(), p.grad
    meta = _clip_meta("muzairkhattak/multimodal-prompt-learning", maple_root, "trainers/maple.py CustomCLIP", bb,
                      {"kind": "maple", "num_tokens": n_ctx, "depth": depth},
                      "CustomCLIP(x, labels) in training (its cross-entropy), fp32 (.half() the identity); grads of "
                      "ctx, the deeper text prompts (text_j: block j) and the couplings (coupling_0: proj)")
    return {n: v.contiguous() for n, v in tensors.items()}, meta


PROMPTSRC_GPA = dict(epochs=4, mean=3.0, std=1.0, lr=0.01)


def promptsrc_gpa_goldens(promptsrc_root: str):
    """PromptSRC's own trainer for PROMPTSRC_GPA['epochs'] epochs of one batch each, in fp32: ``PromptSRC.build_model``
    (its CustomCLIP, its Gaussian epoch weights), then ``forward_backward`` per epoch (the loss, the optimiser step,
    and at each epoch's end the weighted sum of its state dict; after the last the model takes it). The optimiser is
    plain SGD (Dassl's build_optimizer is not loaded). Holds the initial prompts, the prompts after training
    (the aggregate), the per-epoch losses and the final logits."""
    import torch
    promptsrc, bb = load_promptsrc(promptsrc_root)
    c, gpa = PROMPTSRC_CFG, PROMPTSRC_GPA
    cfg = _cfg("PROMPTSRC", **dict(c, GPA_MEAN=gpa["mean"], GPA_STD=gpa["std"]))
    cfg.OPTIM.MAX_EPOCH = gpa["epochs"]
    cfg.MODEL = _AttrDict(INIT_WEIGHTS="", BACKBONE=_AttrDict(NAME="ViT-B/16"))

    class Trainer(promptsrc.PromptSRC):  # Dassl's TrainerX (data, loops, checkpoints) is not loaded
        def __init__(self):
            self.cfg, self.device, self.batch_idx, self.num_batches = cfg, "cpu", 0, 1
            self.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=CLASS_NAMES))

        def register_model(self, *a, **k):
            pass

        def update_lr(self):
            pass

    torch.manual_seed(0)
    with _CudaIsCpuFp32(fp16_casts=False):
        trainer = Trainer()
        trainer.build_model()
        ref = trainer.model
        trainer.optim = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=gpa["lr"])
        names = [n for n, p in ref.named_parameters() if p.requires_grad]
        start = {n: p.detach().clone() for n, p in ref.named_parameters() if p.requires_grad}
        x, labels = _clip_inputs()
        ref.train()
        losses = [trainer.forward_backward({"img": x, "label": labels})["loss"] for _ in range(gpa["epochs"])]
        ref.eval()
        with torch.no_grad():
            logits = ref(x)
    params = dict(ref.named_parameters())
    tensors = {"x": x, "labels": labels, "logits": logits, "losses": torch.tensor(losses, dtype=torch.float64),
               "tokens": ref.tokenized_prompts,
               "gauss": torch.tensor(trainer.gauss, dtype=torch.float64)}
    for n in names:
        tensors[f"start.{n}"], tensors[f"end.{n}"] = start[n], params[n].detach().clone()
    text_cfg = {"kind": "promptsrc", "num_tokens": c["N_CTX_TEXT"], "init": c["CTX_INIT"],
                "text_depth": c["PROMPT_DEPTH_TEXT"], "vision_depth": c["PROMPT_DEPTH_VISION"],
                "vision_tokens": c["N_CTX_VISION"], "text_weight": c["TEXT_LOSS_WEIGHT"],
                "image_weight": c["IMAGE_LOSS_WEIGHT"], "gpa_mean": gpa["mean"], "gpa_std": gpa["std"]}
    meta = _clip_meta("muzairkhattak/PromptSRC", promptsrc_root, "trainers/promptsrc.py PromptSRC.build_model + "
                      "forward_backward per epoch (Gaussian prompt aggregation)", bb, text_cfg,
                      f"{gpa['epochs']} epochs of one batch, SGD lr {gpa['lr']}, fp32 (.half() the identity)")
    meta.update(epochs=str(gpa["epochs"]), lr=str(gpa["lr"]))
    return {n: v.contiguous() for n, v in tensors.items()}, meta


def write_golden(output: str, name: str, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file
    out = os.path.join(output, name)
    save_file(tensors, out, metadata=meta)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dassl", metavar="DIR", help="KaiyangZhou/Dassl.pytorch checkout (with --coop)")
    p.add_argument("--coop", metavar="DIR", help="KaiyangZhou/CoOp checkout")
    p.add_argument("--maple", metavar="DIR", help="muzairkhattak/multimodal-prompt-learning checkout")
    p.add_argument("--kmnp", metavar="DIR", help="KMnP/vpt checkout")
    p.add_argument("--kgcoop", metavar="DIR", help="htyao89/KgCoOp checkout")
    p.add_argument("--promptsrc", metavar="DIR", help="muzairkhattak/PromptSRC checkout")
    p.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    args = p.parse_args(argv)
    if not (args.dassl or args.coop or args.maple or args.kmnp or args.kgcoop or args.promptsrc):
        p.error("pass at least one reference checkout (--kmnp, --coop [with --dassl], --kgcoop, --promptsrc, --maple)")
    if args.dassl and not args.coop:
        p.error("pass --dassl DIR with --coop DIR (the few-shot and base/new goldens need both)")
    os.makedirs(args.output, exist_ok=True)
    if args.dassl:
        out = os.path.join(args.output, "dassl_fewshot.json")
        with open(out, "w") as f:
            json.dump(dassl_goldens(args.dassl, args.coop), f, separators=(",", ":"))
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    if args.maple:
        write_golden(args.output, "maple_vision.safetensors", *maple_goldens(args.maple))
        write_golden(args.output, "maple_fp32.safetensors", *maple_model_goldens(args.maple))
    if args.coop:
        for case in COOP_CASES:
            write_golden(args.output, f"{case}.safetensors", *coop_goldens(args.coop, case))
        write_golden(args.output, "cocoop.safetensors", *cocoop_goldens(args.coop))
    if args.kgcoop:
        write_golden(args.output, "kgcoop.safetensors", *kgcoop_goldens(args.kgcoop))
    if args.promptsrc:
        write_golden(args.output, "promptsrc.safetensors", *promptsrc_goldens(args.promptsrc))
        write_golden(args.output, "promptsrc_fp32.safetensors", *promptsrc_goldens(args.promptsrc, fp16_casts=False))
        write_golden(args.output, "promptsrc_gpa_fp32.safetensors", *promptsrc_gpa_goldens(args.promptsrc))
    if args.kmnp:
        for deep in (False, True):
            write_golden(args.output, f"kmnp_vpt_{'deep' if deep else 'shallow'}.safetensors",
                         *kmnp_goldens(args.kmnp, deep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
