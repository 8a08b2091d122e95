"""``vpt sweep -c RECIPE --data DIR --space SPACE.yaml --output DIR [train flags] [sweep flags]``

Without ``-c``, a classification sweep starts from the packaged default recipe, as ``vpt train`` does.

Hyper-parameter search on Optuna: trials select on the validation split only (the pruner may stop a trial
after any epoch), the best setting is trained again with ``--seeds`` seeds, and test is read once, by those
final runs (``--top-k K``: the K best trials are each trained again, and the one with the best mean final val
is chosen). ``<output>/results.json`` holds the best setting, every trial with its val curve, test mean +/-
std and a warning when the best value lies on the edge of the space (``--extend-edges N``: widen a grid past
such an edge, with the next value at its spacing, and search the new points; up to N times: the warning names
the N to run the same command with); summary.md (the best setting and the final test mean +/- std first, then
every trial), summary.csv and plots sit next to it. The ``vpt train`` flags (``--epochs``, ``--batch-size``, ``--set ...``)
fix settings.

Many workers, one study: run the same command in N processes or on N machines with one ``--storage``
(``sqlite:///PATH``, an RDB URL such as ``postgresql://user@host/db``, or ``journal:PATH`` on a shared
filesystem) and one ``--study``. Grid points never run twice; a killed worker's trial is failed and runs
again. Run the same command again to continue a killed sweep (a killed pack resumes too). The output folder
carries `vpt train`'s marker and lock, shared by the workers of one study: another study's sweep or a
`vpt train` there is refused.

Each trial as a torchrun job: ``--nproc-per-trial N`` trains every trial and final run data-parallel over N
processes (``python -m torch.distributed.run --standalone --nproc_per_node=N``; N GPUs, or N CPU processes on
gloo); its per-epoch val still reaches the pruner and the study.

``--base-to-novel`` (CLIP recipes): trials train and select on the base classes' val split and never read
test; the final runs report base, novel and their harmonic mean (results.json: final.{base,novel,hm}_mean).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import threading

from ._common import UserError
from .train import (FLAG_FIELDS, add_input_flags, add_training_flags, kill_callback, recipe_task, resolve_run_config,
                    use_default_recipe)


def register(sub) -> None:
    p = sub.add_parser("sweep", help="hyper-parameter search on Optuna (one machine or many)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_flags(p)
    p.add_argument("--output", metavar="DIR", help="sweep folder (default: the recipe's output.dir)")
    g = p.add_argument_group("the search")
    g.add_argument("--space", metavar="YAML", required=True,
                   help="dotted config fields -> a list or {low, high, log | step} (configs/spaces/)")
    g.add_argument("--sampler", choices=["grid", "tpe", "random"], default="grid")
    g.add_argument("--trials", type=int, metavar="N", help="trial budget of the study (grid: default all points)")
    g.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    g.add_argument("--storage", metavar="URL", help="SQLAlchemy URL or journal:PATH (default: sqlite in --output)")
    g.add_argument("--study", default="sweep", metavar="NAME", help="study name in the storage (default: sweep)")
    g.add_argument("--seeds", type=int, default=3, metavar="K", help="final runs of the best setting (default 3)")
    g.add_argument("--top-k", type=int, default=1, metavar="K",
                   help="final runs for the K best trials, and the setting with the best mean final val is chosen "
                        "(guards against a lucky trial on a small val split; default 1: the best trial)")
    g.add_argument("--extend-edges", type=int, default=0, metavar="N",
                   help="when the best setting lies on an edge of a listed (or stepped) field, add the next value past "
                        "it at the list's spacing and run the new grid points; up to N times (grid sampler; default 0)")
    g.add_argument("--pack", type=int, default=1, metavar="K",
                   help="train K trials at once in one backbone pass (trials that differ in optim.* / sched.* only)")
    g.add_argument("--nproc-per-trial", type=int, default=1, metavar="N",
                   help="run each trial (and final run) as a torchrun job of N data-parallel (DDP) processes "
                        "(torch.distributed.run --standalone --nproc_per_node=N; N GPUs or N CPU processes on gloo)")
    g.add_argument("--heartbeat", type=int, default=60, metavar="S",
                   help="seconds between a trial's heartbeats; a trial silent for 2x this is failed and retried")
    add_training_flags(p)
    p.set_defaults(func=run, resume=False, overwrite=False)


def command_line(args) -> str:
    parts = ["vpt", "sweep"]
    if args.config:
        parts += ["-c", args.config]
    for dest in list(FLAG_FIELDS) + ["space", "sampler", "trials", "pruner", "storage", "study", "seeds", "top_k", "extend_edges", "pack", "nproc_per_trial", "heartbeat"]:
        v = getattr(args, dest, None)
        if v is not None and v is not False and dest != "strict_data":
            parts += [f"--{dest.replace('_', '-')}"] + ([] if v is True else [str(v)])
    for s in args.set or []:
        parts += ["--set", s]
    return " ".join(shlex.quote(p) for p in parts)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's or `kill`'s stop) ends the sweep as Ctrl-C does: the running trials are marked
    failed and queued again at once, instead of staying RUNNING until their heartbeat goes stale."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args) -> int:
    from ..sweep.run import SweepOptions, run_sweep
    from ..sweep.space import load_space
    from ..tasks import task_class

    note = use_default_recipe(args)  # without -c: the packaged default recipe, as `vpt train` runs it
    if note:
        print(note)
    task_cls = task_class(recipe_task(args))
    cfg = resolve_run_config(args, task_cls)
    if cfg.task != task_cls.name:
        raise UserError(f"the recipe says task {cfg.task!r} but --task is {task_cls.name!r}; drop one")
    if not getattr(cfg, "data", None) or not cfg.data.root:
        raise UserError("no data given: pass --data DIR (or set data.root in the recipe)")
    if not os.path.exists(cfg.data.root):  # before the sweep folder and its study are written
        raise UserError(f"data not found: {cfg.data.root!r}; pass --data with an existing folder (nothing was written)")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise UserError("run vpt sweep as plain processes (one per worker), not under torchrun; to train each trial "
                        "data-parallel, pass --nproc-per-trial N (the sweep starts a torchrun job per trial)")
    space = load_space(args.space)
    opts = SweepOptions(sampler=args.sampler, trials=args.trials, pruner=args.pruner, storage=args.storage,
                        study=args.study, seeds=args.seeds, top_k=args.top_k, heartbeat=args.heartbeat, command=command_line(args),
                        pack=args.pack, nproc_per_trial=args.nproc_per_trial, extend_edges=args.extend_edges,
                        callbacks=[cb for cb in (kill_callback(),) if cb is not None])
    with sigterm_as_interrupt():
        results = run_sweep(task_cls, cfg, space, opts)
    out = cfg.output.dir
    best, final = results["best"], results["final"]
    print(f"sweep folder: {out}")
    print(f"best setting: " + ", ".join(f"{k}={v}" for k, v in best["params"].items())
          + f" (trial {best['trial']}, val {best['val']:.4g})")
    if len(results["candidates"]) > 1:
        for c in results["candidates"]:
            mean = "n/a" if c["val_mean"] is None else f"{c['val_mean']:.4g}"
            print(f"  {'*' if c['chosen'] else ' '} trial {c['trial']} ("
                  + ", ".join(f"{k}={v}" for k, v in c["params"].items())
                  + f"): trial val {c['val']:.4g}, mean final val {mean} over {c['runs']} seed(s)")
    for step in results["widened"]:
        print(f"widened the space past its edge ({step['study']}): "
              + "; ".join(f"{k} + {', '.join(map(str, v))}" for k, v in step["added"].items()))
    if final.get("note"):
        print(f"note: {final['note']}")
    if results["edge_warning"]:
        print(f"warning: {results['edge_warning']}")
    if final["test_mean"] is not None:
        print(f"test {final['metric']}: {final['test_mean']:.2f} +/- {final['test_std']:.2f} over {final['test_n']} "
              f"seed(s) {final['seeds']}")
    if final.get("hm_mean") is not None:
        print("base-to-novel test top1: " + "  ".join(f"{k} {final[k + '_mean']:.2f} +/- {final[k + '_std']:.2f}"
                                                       for k in ("base", "novel", "hm")))
    print(f"results: {os.path.join(out, 'results.json')}; table: {os.path.join(out, 'summary.md')}")
    return 0
