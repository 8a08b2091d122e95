"""``vpt suite vtab1k|fgvc|coop-base2novel|coop-fewshot|coop-crossdataset --root DIR -c RECIPE --output DIR
[--tasks a,b] [--seeds 1 2 3] [--space SPACE.yaml] [train flags]``

Runs every task of a benchmark suite with one recipe, each seed a normal `vpt train` run folder under
``--output/<task>/`` (run the same command again to continue: finished runs are kept, a killed one resumes),
then writes ``suite.csv`` / ``suite.md`` / ``suite.json``: per task the test accuracy mean ± std over seeds and
the suite's summary. VTAB-1k: the mean of the tasks AND the mean of the Natural / Specialized / Structured
group means (both conventions are in use; each is labelled). CoOp base-to-novel: base / novel / HM per
dataset and averaged; few-shot: each shot count (``--shots``) per dataset; cross-dataset: ImageNet's prompts
evaluated on the other datasets.

The data is read as published (docs/benchmarks.md): VTAB-1k task folders with NOAH's lists, FGVC folders with
KMnP's json files, CoOp's dataset folders with split_zhou_*.json. Final runs train on train + val (VTAB:
train800val200) and report test after the last epoch. ``--space``: first a `vpt sweep` per task on its val
split (VTAB: train800 / val200, as the VPT paper tuned), then the seeds train the best setting with the final
protocol. The `vpt train` flags (``--epochs``, ``--device``, ``--set ...``) fix settings for every run.
"""
from __future__ import annotations

import argparse
import os

from ._common import UserError
from .train import FLAG_FIELDS, add_training_flags

# the suites vpt.sweep.suite runs (its SUITES; tests/test_suite.py checks they agree): named here so that
# building the parser imports no runner and no data code
SUITES = ("vtab1k", "fgvc", "coop-base2novel", "coop-fewshot", "coop-crossdataset")
SUITE_OWNED = ("data", "output", "seed", "split_seed", "base_to_novel", "shots")


def register(sub) -> None:
    p = sub.add_parser("suite", help="run a benchmark suite (VTAB-1k, FGVC, CoOp) and write its tables",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=SUITES)
    p.add_argument("--root", metavar="DIR", required=True, help="folder holding one folder per task / dataset")
    p.add_argument("-c", "--config", metavar="YAML", required=True, help="recipe: a packaged name (`vpt list recipes`) or a YAML path")
    p.add_argument("--output", metavar="DIR", required=True, help="suite folder (one sub-folder per task)")
    p.add_argument("--tasks", metavar="A,B", help="comma-separated task folder names (default: every task found)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="seeds (train.seed and the few-shot draw; default: 1 2 3 for CoOp, 0 for VTAB / FGVC)")
    p.add_argument("--space", metavar="YAML", help="search space: a `vpt sweep` per task on val first")
    p.add_argument("--suite-shots", type=int, nargs="+", default=None, metavar="K",
                   help="coop-fewshot: the shot counts (default 1 2 4 8 16)")
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument("-b", "--batch-size", type=int, metavar="N")
    p.add_argument("-j", "--workers", type=int, metavar="N")
    p.add_argument("--amp-dtype", metavar="DTYPE")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field of every run (repeatable)")
    add_training_flags(p)
    p.set_defaults(func=run)


def fixed_flags(args) -> list:
    """The `vpt train` flags given, as argv items for every run (the suite sets data, output, seeds itself)."""
    owned = [f for f in SUITE_OWNED if f not in ("data", "output") and getattr(args, f, None) is not None]
    if owned:
        raise UserError(f"--{owned[0].replace('_', '-')} is set per run by vpt suite (--seeds, --suite-shots, the "
                        f"suite's protocol); remove it")
    out = []
    for dest in FLAG_FIELDS:
        v = getattr(args, dest, None)
        if dest in SUITE_OWNED or v is None or v is False:
            continue
        flag = "--" + dest.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out


def run(args) -> int:
    from ..cli import build_parser
    from ..sweep.suite import FEW_SHOTS, resolved_device, run_suite
    parser = build_parser()

    def execute(argv):
        sub = parser.parse_args(argv)
        return int(sub.func(sub) or 0)

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    seeds = args.seeds or ([1, 2, 3] if args.suite.startswith("coop") else [0])
    fixed = fixed_flags(args)
    if args.suite_shots and args.suite != "coop-fewshot":
        raise UserError("--suite-shots applies to coop-fewshot; the other suites use the recipe's data.shots")
    from ..engine import init_distributed, teardown_distributed
    # under torchrun every rank runs the suite; the process group is joined once here and each run uses it as
    # it is: a group destroyed and created again in the same process hung the next run's first collective
    # (its backend follows the device the runs use: --device, else the recipe's train.device with --set applied)
    group = init_distributed(resolved_device(args.config, fixed, args.set))
    try:
        result = run_suite(args.suite, os.path.abspath(args.root), args.config, os.path.abspath(args.output), seeds,
                           execute, fixed=fixed, sets=args.set, tasks=tasks,
                           space=args.space, shots=args.suite_shots or FEW_SHOTS)
    finally:
        teardown_distributed(group)
    print(open(os.path.join(args.output, "suite.md")).read(), end="")
    if result["missing_runs"]:
        print(f"{len(result['missing_runs'])} run(s) have no results yet; run the same command again")
    print(f"tables: {os.path.join(args.output, 'suite.md')}, suite.csv, suite.json")
    return 0
