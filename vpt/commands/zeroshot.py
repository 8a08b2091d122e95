"""``vpt zeroshot``: CLIP zero-shot classification of an image folder, CLIP_benchmark-style JSON out.

    vpt zeroshot --model open_clip:ViT-B-32/laion2b_s34b_b79k --data DIR
    vpt zeroshot --model open_clip:ViT-B-32/laion2b_s34b_b79k --data SPLIT_DIR --split all
    vpt zeroshot --model open_clip:ViT-B-32 --weights clip.safetensors --data DIR --templates simple
    vpt zeroshot -c zeroshot_vit_b32 --weights clip.safetensors --data DIR --output r.json

The data is read as `vpt train` reads it: DIR/<class>/*, DIR/{train,val,test}/<class>/* (the classes are
those under train/; by default the test split is evaluated when there is one, else every image) or a CSV
of path,label[,split]. Unreadable images are skipped and counted (printed, and in the JSON).

The JSON is strict: a metric that is undefined (acc5 below 5 classes) is null, with the reason under
"undefined_metrics" (CLIP_benchmark itself writes NaN, which strict JSON readers refuse).

Precedence: recipe YAML <- flags <- ``--set field=value``.
"""
from __future__ import annotations

import argparse
import json
import os

from ._common import UserError, resolve_config

# flag dest -> ZeroShotConfig field
FLAG_FIELDS = ("model", "weights", "init_seed", "data", "split", "classnames", "templates", "batch_size",
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
    p.add_argument("--data", metavar="DIR", help="image folder DIR/<class>/*.jpg or DIR/{train,val,test}/<class>/*.jpg, "
                                                 "or a CSV of path,label[,split] (the layouts of vpt train)")
    p.add_argument("--split", choices=["all", "train", "val", "test"],
                   help="which images to evaluate (default: test when the data has a test split, else all)")
    p.add_argument("--classnames", metavar="FILE", help="one class name per line, in sorted class folder order "
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
    if cfg.weights and not os.path.isfile(cfg.weights):
        raise UserError(f"weights file not found: {cfg.weights!r}; pass --weights with the path of a local "
                        f"safetensors / torch file, or --model open_clip:ARCH/TAG for a hub tag")
    if args.output:
        from ._paths import check_output_file
        check_output_file(args.output, "--output", "zeroshot.json")
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
    from .. import zeroshot as zs
    from ..backbones import create_backbone
    from ..config import to_dict
    from ..engine import resolve_device
    from ..io import atomic_write_text

    cfg = resolve(args)
    bb = backbone_config(cfg)
    # the data and the class names are checked before the model is built (a typo should not cost a download)
    folders, samples, split, _ = zs.zero_shot_samples(cfg.data, cfg.split)
    names = (zs.read_class_names(cfg.classnames, expected=len(folders)) if cfg.classnames
             else [zs.prompt_name(c) for c in folders])
    templates = zs.load_templates(cfg.templates)  # fail on a bad template before building the model
    device = str(resolve_device(cfg.device))  # an unknown or unavailable device is a one-line error
    adapter = create_backbone(bb)
    result = zs.evaluate_folder(adapter, cfg.data, class_names=names, templates=templates,
                                batch_size=cfg.batch_size, workers=cfg.workers, device=device,
                                cache_dir=(cfg.cache_dir or default_cache_dir()) if cfg.cache else None,
                                classes_per_batch=cfg.classes_per_batch, split=split)
    pretrained = bb.weights or (adapter.tag if bb.pretrained else f"random:{bb.init_seed}")
    base = os.path.basename(os.path.normpath(cfg.data))
    dataset = cfg.dataset or (base[:-4] if base.lower().endswith(".csv") else base)
    skipped = result["skipped"]
    record = zs.benchmark_record(dataset, adapter.arch, pretrained, result["metrics"], split=result["split"],
                                 num_images=result["num_images"], num_evaluated=result["num_evaluated"],
                                 skipped_unreadable=len(skipped), undefined_metrics=result["undefined"])
    print(zs.format_table(result["per_class"]))
    print(f"{result['split']} split: {result['num_evaluated']} of {result['num_images']} images evaluated"
          + (f"; {len(skipped)} unreadable skipped (e.g. {skipped[0]})" if skipped else ""))
    for metric, why in result["undefined"].items():
        print(f"{metric}: undefined ({why})")
    print(strict_json(record, indent=None))
    if args.output:
        atomic_write_text(args.output, strict_json(record))
        stem = args.output[:-5] if args.output.endswith(".json") else args.output
        atomic_write_text(stem + ".details.json", strict_json({
            "per_class": result["per_class"], "split": result["split"], "data": result["data"],
            "num_images": result["num_images"], "num_evaluated": result["num_evaluated"],
            "skipped_unreadable": skipped, "undefined_metrics": result["undefined"],
            "templates": result["templates"], "weights_id": adapter.weights_id(), "device": device,
            "config": to_dict(cfg)}))
        print(f"wrote {args.output}")
    return 0


def strict_json(obj, indent=2) -> str:
    """JSON that every parser reads (no NaN / Infinity: undefined values are null with a reason beside)."""
    return json.dumps(obj, indent=indent, allow_nan=False) + ("\n" if indent else "")
