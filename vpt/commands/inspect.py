"""``vpt inspect ARTIFACT [--json]``: validate an artifact and print what loading it would build, without
building it: the schema check, the task and backbone it names, the prompt / head configs, the model's size
(measured on PyTorch's meta device: no memory, no weights read) and the stored tensors.

exit status:
  0  valid, and loadable as it is
  1  valid, but its backbone weights file is missing or another file: the report is printed (weights
     MISSING) and loading needs --weights FILE
  2  refused: what vpt predict / vpt eval / vpt.Artifact.load would refuse, naming the field (no report)"""
from __future__ import annotations

import argparse
import json
import sys

from ._artifact import add_artifact_flags, check_max_params


def register(sub) -> None:
    p = sub.add_parser("inspect", help="validate an artifact and show what it would build", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact folder (holds adapter_config.json) or a hub task, "
                                                        "hf://ORG/NAME[@REVISION]")
    add_artifact_flags(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _fmt(value) -> str:
    return json.dumps(value, separators=(", ", ": ")) if value is not None else "-"


def run(args) -> int:
    from ..artifact import Artifact
    check_max_params(args.max_params)
    report = Artifact.open(args.artifact).inspect(weights=args.weights, max_params=args.max_params)
    missing = str(report["backbone_weights"]).startswith("MISSING")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        bb, n = report["backbone"], report["parameters"]
        names = report["class_names"] or []
        lines = [
            f"artifact     {report['artifact']}  (format {report['format_version']}, vpt {report['vpt_version']}): valid",
            f"model type   {report['model_type']}  (task {report['task']})",
            f"backbone     {bb['name']}  weights {bb['weights_id']}  model_kwargs {_fmt(bb['model_kwargs'])}",
            f"weights      {report['backbone_weights']}",
        ]
        for key in ("prompt", "method", "head", "text", "lora", "peft", "detector"):
            if report.get(key) is not None:
                lines.append(f"{key:<12} {_fmt(report[key])}")
        lines += [
            f"classes      {report['num_classes']}: {', '.join(map(str, names[:10]))}{' ...' if len(names) > 10 else ''}",
            f"input        {_fmt(report['preprocessing'])}",
            f"parameters   {n['total']:,} in the model, {n['trainable']:,} stored (limit {n['limit']:,})",
            f"tensors      {len(report['tensors'])}:",
        ] + [f"  {t['name']}  {t['dtype']}  {tuple(t['shape'])}" for t in report["tensors"]]
        print("\n".join(lines))
    if missing:
        print("vpt inspect: the artifact is valid but can't be loaded as it is: its backbone weights file is "
              "missing or another file; pass --weights FILE (to vpt predict / eval too)", file=sys.stderr)
        return 1
    return 0
