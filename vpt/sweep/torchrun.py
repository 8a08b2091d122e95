"""Each sweep trial as a torchrun job (``vpt sweep --nproc-per-trial N``): the trial trains data-parallel (DDP)
over N processes started by torch's own launcher (``python -m torch.distributed.run --standalone``, run by
``vpt.sweep.launch`` so that it dies with the worker), exactly as ``torchrun -m vpt train`` would; the sweep
worker waits for it and keeps the trial's heartbeat.

- The worker writes the trial's run config to ``<run folder>.yaml`` (beside the run folder: the folder
  itself is the engine's) and launches ``-m vpt.commands.sweep_trial CONFIG --study NAME --trial-id ID``.
  The storage URL travels in the environment (``VPT_SWEEP_STORAGE``), never on a command line that
  ``ps`` shows with its password.
- Rank 0 of the job reports each epoch's val metric to the trial in the storage (``optuna.trial.Trial`` on
  the trial id: the same study, pruner and intermediate values) and broadcasts the pruner's verdict, so every
  rank stops after the same epoch.
- The worker then reads the engine's results.json of the run folder: the val metric, best epoch,
  ``stopped`` (pruned); exit code 3 means the loss diverged (the trial fails, not the study); any other
  failure stops the worker with the job's exit code and log. Ctrl-C / SIGTERM stop the job too, and so does
  the worker's death by SIGKILL on Linux (the job gets SIGTERM from the kernel).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from ..engine import Callback

_logger = logging.getLogger(__name__)

STORAGE_ENV = "VPT_SWEEP_STORAGE"
DIVERGED_EXIT = 3
TRIAL_MODULE = "vpt.commands.sweep_trial"


def launch_command(nproc: int, config_path: str, study: str, trial_id: int, pruner: str, column: str,
                   blind_to_test: bool, resume: bool) -> List[str]:
    """The torchrun command line of one trial: torch's launcher (one node, a free rendezvous port) in a process
    that dies with this worker (``vpt.sweep.launch``)."""
    cmd = [sys.executable, "-m", "vpt.sweep.launch", str(os.getpid()), "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", TRIAL_MODULE, config_path, "--study", study, "--trial-id", str(int(trial_id)),
           "--pruner", pruner, "--column", column]
    if blind_to_test:
        cmd.append("--blind-to-test")
    if resume:
        cmd.append("--resume")
    return cmd


def run_job(cmd: Sequence[str], storage_url: str, log_hint: str) -> int:
    """Run the trial's torchrun job to its end and return its exit code; an interrupt (Ctrl-C, SIGTERM)
    stops the job first (SIGTERM: torchrun passes it to its workers), then goes on up. A worker killed
    outright stops the job too (``vpt.sweep.launch``)."""
    env = {**os.environ, STORAGE_ENV: storage_url}
    _logger.info("torchrun job: %s", " ".join(cmd))
    proc = subprocess.Popen(list(cmd), env=env)
    try:
        return proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _logger.warning("stopped the torchrun job of %s", log_hint)
        raise


def trial_main(argv: Optional[Sequence[str]] = None, callbacks: Sequence[Callback] = ()) -> int:
    """One rank of a trial's torchrun job (see the module doc); returns the process exit code."""
    import yaml

    from ..config import from_dict
    from ..engine import init_distributed, teardown_distributed, train
    from ..errors import ResumeError
    from ..tasks import task_class
    from .study import make_pruner, open_storage, require_optuna
    from .worker import ReportEpochs, TrialReporter, blind_to_test

    p = argparse.ArgumentParser(prog=f"python -m {TRIAL_MODULE}", description=__doc__)
    p.add_argument("config")
    p.add_argument("--study", required=True)
    p.add_argument("--trial-id", type=int, required=True)
    p.add_argument("--pruner", default="none")
    p.add_argument("--column", default="val_top1")
    p.add_argument("--blind-to-test", action="store_true")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    task_cls = task_class(str(data.get("task", "classification")))
    cfg = from_dict(task_cls.config_cls, data)
    task = (blind_to_test(task_cls) if args.blind_to_test else task_cls)(cfg)
    info = init_distributed(cfg.train.device)
    if not info.is_main:
        logging.getLogger("vpt").setLevel(logging.WARNING)
    reporter = None
    if info.is_main:
        optuna = require_optuna()
        url = os.environ.get(STORAGE_ENV)
        if not url:
            raise SystemExit(f"{TRIAL_MODULE} is started by vpt sweep --nproc-per-trial ({STORAGE_ENV} is unset)")
        study = optuna.load_study(study_name=args.study, storage=open_storage(url),
                                  pruner=make_pruner(args.pruner, cfg.train.epochs))
        reporter = TrialReporter(optuna.trial.Trial(study, args.trial_id))
    cbs = [ReportEpochs(reporter, args.column), *callbacks]
    command = f"vpt sweep trial {args.trial_id} (torchrun, {info.world_size} processes)"
    try:
        try:
            train(task, info, resume=args.resume, overwrite=not args.resume, callbacks=cbs, command=command)
        except ResumeError as e:  # a state this version can't continue: start the trial over
            _logger.warning("%s: %s; starting this trial over", cfg.output.dir, e)
            train(task, info, resume=False, overwrite=True, callbacks=cbs, command=command)
    except FloatingPointError as e:  # the engine's divergence guard: this trial fails, not the study
        print(f"diverged: {e}", file=sys.stderr)
        return DIVERGED_EXIT
    finally:
        teardown_distributed(info)
    return 0


def read_results(run_dir: str) -> Dict[str, Any]:
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
        return json.load(f)


__all__ = ["launch_command", "run_job", "trial_main", "read_results", "DIVERGED_EXIT"]
