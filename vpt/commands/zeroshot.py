"""``vpt zeroshot``: CLIP zero-shot classification of an image folder, CLIP_benchmark-style JSON out.

    vpt zeroshot --model open_clip:ViT-B-32/laion2b_s34b_b79k --data DIR
    vpt zeroshot --model open_clip:ViT-B-32 --weights clip.safetensors --data DIR --templates simple
    vpt zeroshot -c zeroshot_vit_b32 --weights clip.safetensors --data DIR --output r.json

Precedence: recipe YAML <- flags <- ``--set field=value``.
"""
from __future__ import annotations

import argparse
import json
import os

from ._common import UserError, resolve_config

# flag dest -> ZeroShotConfig field
FLAG_FIELDS = ("model", "weights", "init_seed", "data", "classnames", "templates", "batch_size",
               "classes_per_batch", "workers", "device", "cache_dir", "dataset")


def register(sub) -> None:
    p = sub.add_parser("zeroshot", help="CLIP zero-shot classification of an image folder (CLIP_benchmark JSON)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", metavar="YAML", help="a packaged recipe (zeroshot_vit_b32, zeroshot_vit_b16) or a YAML file")
    p.add_argument("--model", help="open_clip:ARCH/TAG (hub tag), open_clip:ARCH/FILE (local weights) or "
                                   "open_clip:ARCH with --weights / --random-init")
    p.add_argument("--weights", metavar="FILE", help="local weights file (safetensors or torch state dict) for ARCH")
    p.add_argument("--model-kwargs", metavar="JSON",
                   help='JSON passed to open_clip.create_model, e.g. \'{"embed_dim": 32, "vision_cfg": {...}}\'')
    p.add_argument("--random-init", action="store_true", help="random weights (smoke tests; chance-level accuracy)")
    p.add_argument("--init-seed", type=int, help="seed of --random-init")
    p.add_argument("--data", metavar="DIR", help="image folder laid out as DIR/<class>/*.jpg")
    p.add_argument("--classnames", metavar="FILE", help="one class name per line, in sorted folder order "
                                                        "(default: folder names, underscores as spaces)")
    p.add_argument("--templates", help="openai | simple (open_clip's ImageNet sets) | a file with one '{c}' "
                                       "template per line (default: openai)")
    p.add_argument("-b", "--batch-size", type=int)
    p.add_argument("--classes-per-batch", type=int, help="classes per text-encoder batch")
    p.add_argument("-j", "--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--cache-dir", help="text classifier cache (default: $VPT_CACHE_DIR or ~/.cache/vpt, "
                                       "subfolder zeroshot)")
    p.add_argument("--no-cache", action="store_true", help="always rebuild the text classifier")
    p.add_argument("--dataset", help="dataset name in the JSON (default: the folder's name)")
    p.add_argument("--output", metavar="FILE", help="write the CLIP_benchmark JSON here (details beside it)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    p.set_defaults(func=run)


def resolve(args):
    from ..config import ConfigError
    from ..zeroshot import ZeroShotConfig
    flags = {f: getattr(args, f) for f in FLAG_FIELDS}
    if args.model_kwargs:
        try:
            flags["model_kwargs"] = json.loads(args.model_kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--model-kwargs is not valid JSON ({e}); e.g. '{{\"embed_dim\": 32}}'") from None
        if not isinstance(flags["model_kwargs"], dict):
            raise ConfigError("--model-kwargs must be a JSON object")
    if args.random_init:
        flags["pretrained"] = False
    if args.no_cache:
        flags["cache"] = False
    cfg = resolve_config(ZeroShotConfig, args.config, flags, args.set)
    if not cfg.model:
        raise UserError("no model given: pass --model open_clip:ARCH[/TAG] (or set model in the recipe)")
    if not cfg.data:
        raise UserError("no data given: pass --data DIR (or set data in the recipe)")
    return cfg


def backbone_config(cfg):
    """model/weights -> BackboneConfig; ``open_clip:ARCH/FILE`` means a local weights file."""
    from ..backbones import BackboneConfig
    from ..config import ConfigError
    name = cfg.model if ":" in cfg.model else f"open_clip:{cfg.model}"
    library, _, spec = name.partition(":")
    if library != "open_clip":
        raise ConfigError(f"zero-shot needs a CLIP model: --model open_clip:ARCH[/TAG], got {cfg.model!r}")
    arch, _, tag = spec.partition("/")
    weights = cfg.weights
    if tag and (os.path.exists(tag) or os.sep in tag or tag.endswith((".safetensors", ".pt", ".pth", ".bin"))):
        if weights:
            raise ConfigError(f"--model names the weights file {tag!r} and --weights names {weights!r}; give one")
        weights, name = tag, f"open_clip:{arch}"
    return BackboneConfig(name=name, weights=weights, pretrained=cfg.pretrained, init_seed=cfg.init_seed,
                          model_kwargs=dict(cfg.model_kwargs))


def default_cache_dir() -> str:
    root = os.environ.get("VPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vpt")
    return os.path.join(root, "zeroshot")


def run(args) -> int:
    import torch

    from .. import zeroshot as zs
    from ..backbones import create_backbone
    from ..config import to_dict
    from ..io import atomic_write_json

    cfg = resolve(args)
    if not os.path.isdir(cfg.data):
        raise UserError(f"--data {cfg.data!r} is not a folder; pass an image folder laid out as DIR/<class>/*.jpg")
    bb = backbone_config(cfg)
    folders = zs.folder_classes(cfg.data)
    names = (zs.read_class_names(cfg.classnames, expected=len(folders)) if cfg.classnames
             else [zs.prompt_name(c) for c in folders])
    templates = zs.load_templates(cfg.templates)  # fail on a bad template before building the model
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    adapter = create_backbone(bb)
    result = zs.evaluate_folder(adapter, cfg.data, class_names=names, templates=templates,
                                batch_size=cfg.batch_size, workers=cfg.workers, device=device,
                                cache_dir=(cfg.cache_dir or default_cache_dir()) if cfg.cache else None,
                                classes_per_batch=cfg.classes_per_batch)
    pretrained = bb.weights or (adapter.tag if bb.pretrained else f"random:{bb.init_seed}")
    dataset = cfg.dataset or os.path.basename(os.path.normpath(cfg.data))
    record = zs.benchmark_record(dataset, adapter.arch, pretrained, result["metrics"])
    print(zs.format_table(result["per_class"]))
    print(json.dumps(record))
    if args.output:
        atomic_write_json(args.output, record)
        stem = args.output[:-5] if args.output.endswith(".json") else args.output
        atomic_write_json(stem + ".details.json", {
            "per_class": result["per_class"], "num_images": result["num_images"], "templates": result["templates"],
            "weights_id": adapter.weights_id(), "device": device, "config": to_dict(cfg)})
        print(f"wrote {args.output}")
    return 0
