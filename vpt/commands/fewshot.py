"""``vpt fewshot -c RECIPE --data DIR --output ROOT [--shots 1 2 4 8 16] [--seeds 1 2 3] [--base-to-novel]``

The few-shot protocol of the CLIP prompt-learning papers: one `vpt train` run per (k shots, seed) into
ROOT/shots{k}_seed{s} (the seed sets both train.seed and the few-shot draw, data.split_seed), then the
summary table over ROOT (mean ± std over seeds). ``--resume`` continues an interrupted grid: finished runs
are kept, an unfinished one continues from its last finished epoch, missing ones start. The CoOp papers train longer on more shots (CoOp: 50
epochs for 1 shot, 100 for 2-4, 200 for 8-16): run the grid once per epoch budget with --epochs.
"""
from __future__ import annotations

import argparse
import os



def register(sub) -> None:
    p = sub.add_parser("fewshot", help="few-shot grid: one training run per (shots, seed), then a summary table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", metavar="YAML", required=True, help="a packaged recipe's name (`vpt list recipes`, e.g. clip_coop_vit_b16) or a YAML file")
    p.add_argument("--data", metavar="DIR", required=True, help="image folder")
    p.add_argument("--output", metavar="ROOT", required=True, help="folder of the runs (one sub-folder per run)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16], metavar="K")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], metavar="S")
    p.add_argument("--base-to-novel", action="store_true", help="train on the base classes, report base/novel/HM")
    p.add_argument("--weights", metavar="FILE", help="local backbone weights file")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device")
    p.add_argument("--test-fraction", type=float)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the grid: keep finished runs, continue "
                                                         "unfinished ones, start the missing ones")
    g.add_argument("--overwrite", action="store_true", help="replace runs already in ROOT")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cli import build_parser
    from ..engine.rundir import finished_epochs, holds_run
    from ..tasks.protocols import few_shot_runs
    from .summarize import print_table
    grid = few_shot_runs(args.shots, args.seeds)
    parser = build_parser()
    for k, seed, name in grid:
        out = os.path.join(args.output, name)
        if args.resume and os.path.isfile(os.path.join(out, "results.json")):
            print(f"== {name}: finished, kept ({out}/results.json)")
            continue
        argv = ["train", "-c", args.config, "--data", args.data, "--output", out,
                "--shots", str(k), "--seed", str(seed), "--split-seed", str(seed)]
        for flag, value in (("--weights", args.weights), ("--epochs", args.epochs), ("--device", args.device),
                            ("--test-fraction", args.test_fraction), ("--val-fraction", args.val_fraction)):
            if value is not None:
                argv += [flag, str(value)]
        argv += [x for s in args.set for x in ("--set", s)]
        argv += ["--base-to-novel"] * args.base_to_novel + ["--overwrite"] * args.overwrite
        if args.resume and holds_run(out) and finished_epochs(out):
            argv.append("--resume")  # the run's own config; the flags above equal it (else train says which differ)
        print(f"== {name}: vpt {' '.join(argv)}")
        sub = parser.parse_args(argv)
        rc = int(sub.func(sub) or 0)
        if rc:
            return rc
    print_table([args.output])
    return 0
