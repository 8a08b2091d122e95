"""``vpt inspect ARTIFACT [--json]``: validate an artifact and print what loading it would build, without
building it: the schema check, the backbone and weights it names, the prompt / head configs, the model's size
(measured on PyTorch's meta device: no memory, no weights read) and the stored tensors. Exits non-zero, naming
the field, for anything ``vpt predict`` / ``vpt eval`` / ``vpt.from_pretrained`` would refuse."""
from __future__ import annotations

import argparse
import json

from ..schema import DEFAULT_MAX_PARAMS


def register(sub) -> None:
    p = sub.add_parser("inspect", help="validate an artifact and show what it would build", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact folder (holds adapter_config.json)")
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if the artifact's has moved")
    p.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS,
                   help=f"refuse models larger than this (parameters + buffers; default {DEFAULT_MAX_PARAMS:,})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _fmt(value) -> str:
    return json.dumps(value, separators=(", ", ": ")) if value is not None else "-"


def run(args) -> int:
    from ..artifact import inspect_artifact
    report = inspect_artifact(args.artifact, weights=args.weights, max_params=args.max_params)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    bb, n = report["backbone"], report["parameters"]
    names = report["class_names"] or []
    lines = [
        f"artifact     {report['artifact']}  (format {report['format_version']}, vpt {report['vpt_version']}): valid",
        f"model type   {report['model_type']}",
        f"backbone     {bb['name']}  weights {bb['weights_id']}  model_kwargs {_fmt(bb['model_kwargs'])}",
        f"weights      {report['backbone_weights']}",
    ]
    for key in ("prompt", "head", "text", "lora", "detector"):
        if report.get(key) is not None:
            lines.append(f"{key:<12} {_fmt(report[key])}")
    lines += [
        f"classes      {report['num_classes']}: {', '.join(map(str, names[:10]))}{' ...' if len(names) > 10 else ''}",
        f"input        {_fmt(report['preprocessing'])}",
        f"parameters   {n['total']:,} in the model, {n['trainable']:,} stored (limit {n['limit']:,})",
        f"tensors      {len(report['tensors'])}:",
    ] + [f"  {t['name']}  {t['dtype']}  {tuple(t['shape'])}" for t in report["tensors"]]
    print("\n".join(lines))
    return 0
