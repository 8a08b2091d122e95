"""``vpt zeroshot``: CLIP zero-shot classification of an image folder, CLIP_benchmark-style JSON out.

    vpt zeroshot --model open_clip:ViT-B-32/laion2b_s34b_b79k --data DIR
    vpt zeroshot --model open_clip:ViT-B-32 --weights clip.safetensors --data DIR --templates simple
    vpt zeroshot --model open_clip:ViT-B-32/clip.safetensors --data DIR --classnames names.txt --output r.json
"""
from __future__ import annotations

import json
import os

from ._common import UserError


def register(sub) -> None:
    p = sub.add_parser("zeroshot", help="CLIP zero-shot classification of an image folder (CLIP_benchmark JSON)")
    p.add_argument("--model", required=True,
                   help="open_clip:ARCH/TAG (hub tag), open_clip:ARCH/FILE (local weights) or open_clip:ARCH "
                        "with --weights / --random-init")
    p.add_argument("--weights", help="local weights file (safetensors or torch state dict) for ARCH")
    p.add_argument("--model-kwargs", default=None,
                   help='JSON passed to open_clip.create_model, e.g. \'{"embed_dim": 32, "vision_cfg": {...}}\'')
    p.add_argument("--random-init", action="store_true", help="random weights (smoke tests; chance-level accuracy)")
    p.add_argument("--init-seed", type=int, default=0, help="seed of --random-init")
    p.add_argument("--data", required=True, help="image folder laid out as DIR/<class>/*.jpg")
    p.add_argument("--classnames", help="file with one class name per line, in sorted folder order "
                                        "(default: folder names, underscores as spaces)")
    p.add_argument("--templates", default="openai",
                   help="openai | simple (open_clip's ImageNet sets) | a file with one '{c}' template per line")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes-per-batch", type=int, default=10, help="classes per text-encoder batch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--cache-dir", default=None,
                   help="text classifier cache (default: $VPT_CACHE_DIR or ~/.cache/vpt, subfolder zeroshot)")
    p.add_argument("--no-cache", action="store_true", help="always rebuild the text classifier")
    p.add_argument("--dataset", default=None, help="dataset name in the JSON (default: the folder's name)")
    p.add_argument("--output", help="write the CLIP_benchmark JSON here (and the per-class table beside it)")
    p.set_defaults(func=run)


def backbone_config(model: str, weights, model_kwargs_json, random_init: bool, init_seed: int):
    """--model/--weights/--model-kwargs -> BackboneConfig; ``open_clip:ARCH/FILE`` means a local file."""
    from ..backbones import BackboneConfig
    from ..config import ConfigError
    name = model if ":" in model else f"open_clip:{model}"
    library, _, spec = name.partition(":")
    if library != "open_clip":
        raise ConfigError(f"zero-shot needs a CLIP model: --model open_clip:ARCH[/TAG], got {model!r}")
    arch, _, tag = spec.partition("/")
    if tag and (os.path.exists(tag) or os.sep in tag or tag.endswith((".safetensors", ".pt", ".pth", ".bin"))):
        if weights:
            raise ConfigError(f"--model names the weights file {tag!r} and --weights names {weights!r}; give one")
        weights, name = tag, f"open_clip:{arch}"
    try:
        kwargs = json.loads(model_kwargs_json) if model_kwargs_json else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-kwargs is not valid JSON ({e}); e.g. '{{\"embed_dim\": 32}}'") from None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--model-kwargs must be a JSON object, got {type(kwargs).__name__}")
    return BackboneConfig(name=name, weights=weights, pretrained=not random_init, init_seed=init_seed,
                          model_kwargs=kwargs)


def default_cache_dir() -> str:
    root = os.environ.get("VPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vpt")
    return os.path.join(root, "zeroshot")


def run(args) -> int:
    import torch

    from .. import zeroshot as zs
    from ..backbones import create_backbone
    from ..io import atomic_write_json

    if not os.path.isdir(args.data):
        raise UserError(f"--data {args.data!r} is not a folder; pass an image folder laid out as DIR/<class>/*.jpg")
    cfg = backbone_config(args.model, args.weights, args.model_kwargs, args.random_init, args.init_seed)
    folders = zs.folder_classes(args.data)
    names = (zs.read_class_names(args.classnames, expected=len(folders)) if args.classnames
             else [zs.prompt_name(c) for c in folders])
    templates = zs.load_templates(args.templates)  # fail on a bad template before building the model
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    adapter = create_backbone(cfg)
    result = zs.evaluate_folder(adapter, args.data, class_names=names, templates=templates,
                                batch_size=args.batch_size, workers=args.workers, device=device,
                                cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
                                classes_per_batch=args.classes_per_batch)
    pretrained = cfg.weights or (adapter.tag if cfg.pretrained else f"random:{cfg.init_seed}")
    dataset = args.dataset or os.path.basename(os.path.normpath(args.data))
    record = zs.benchmark_record(dataset, adapter.arch, pretrained, result["metrics"])
    print(zs.format_table(result["per_class"]))
    print(json.dumps(record))
    if args.output:
        atomic_write_json(args.output, record)
        stem = args.output[:-5] if args.output.endswith(".json") else args.output
        atomic_write_json(stem + ".details.json", {
            "per_class": result["per_class"], "num_images": result["num_images"], "templates": result["templates"],
            "config": {"model": cfg.name, "weights": cfg.weights, "weights_id": adapter.weights_id(),
                       "model_kwargs": cfg.model_kwargs, "data": args.data, "classnames": args.classnames,
                       "templates": args.templates, "batch_size": args.batch_size, "device": device},
            "args": {k: v for k, v in vars(args).items() if k != "func"}})
        print(f"wrote {args.output}")
    return 0
