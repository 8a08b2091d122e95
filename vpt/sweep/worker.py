"""One worker's loop over a study: ask (K trials at a time when packing), train, report, tell, until the trial
budget is spent. Any number of workers may run it on one study at once (see ``vpt.sweep.study``).

The sampling is Optuna's; what a trial trains is the ``train`` callable, which gets the asked trials and
returns each one's outcome. It reports per-epoch values through :class:`TrialReporter`, which asks Optuna's
pruner whether to stop.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

from ..engine import Callback
from ..engine.distributed import broadcast_object
from .space import SearchSpace, describe
from .study import (SURPLUS_ATTR, budget_left, duplicate_of, fail_stale_trials, heartbeat, require_optuna, requeue,
                    tell)

_logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What training one trial gave: ``value`` (its best val metric) when it completed, ``pruned`` when the
    pruner stopped it, ``error`` (e.g. a diverged loss) when it failed."""
    value: Optional[float] = None
    best_epoch: Optional[int] = None
    pruned: bool = False
    error: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


class TrialReporter:
    """Per-epoch reporting for one asked trial: ``report(epoch, value)`` -> True when the pruner says stop."""

    def __init__(self, trial):
        self.trial = trial
        self.pruned = False
        self.best = -math.inf
        self.best_epoch: Optional[int] = None
        # a retried trial inherits the killed one's epochs (its run resumes after them): they count for its best
        storage = getattr(getattr(trial, "study", None), "_storage", None)
        inherited = storage.get_trial(trial._trial_id).intermediate_values if storage is not None else {}
        for epoch, value in sorted(inherited.items()):
            if math.isfinite(value) and value > self.best:
                self.best, self.best_epoch = float(value), int(epoch)

    def report(self, epoch: int, value: float) -> bool:
        """Record epoch ``epoch``'s (1-based) val value; return whether the trial should stop here."""
        if math.isfinite(value) and value > self.best:
            self.best, self.best_epoch = float(value), epoch
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned = True
        return self.pruned


class ReportEpochs(Callback):
    """An engine callback: each epoch's val metric (``column`` of the metrics row) to the trial's reporter;
    when the pruner says stop, the run ends cleanly after this epoch (metrics.csv, run state and results.json
    record it, marked ``stopped``). Under DDP (a trial as a torchrun job) rank 0 reports, holding the only
    ``reporter`` (None on the other ranks), and every rank gets the verdict, so all stop after the same epoch."""

    def __init__(self, reporter: Optional[TrialReporter], column: str):
        self.reporter, self.column = reporter, column

    def on_epoch_end(self, run, epoch: int, row: Dict[str, Any]) -> None:
        stop = False
        if run.info.is_main and self.reporter is not None and self.column in row:
            stop = self.reporter.report(epoch, float(row[self.column]))
        if run.info.distributed:
            stop = broadcast_object(stop)
        if stop:
            run.request_stop(f"pruned by the sweep's pruner after epoch {epoch}")


def blind_to_test(task_cls: type) -> type:
    """The task, blind to its test split: search trials select on val and never read test."""
    def has_split(self, split: str) -> bool:
        return split != "test" and task_cls.has_split(self, split)
    return type(f"{task_cls.__name__}SweepTrial", (task_cls,), {"has_split": has_split})


TrainFn = Callable[[Sequence[Any], Sequence[Dict[str, Any]], Sequence[TrialReporter]], Sequence[Outcome]]


def ask(study, space: SearchSpace, grid: bool):
    """One trial with every space parameter suggested; None when a grid has no point left for this worker (the
    trial a race added past the grid is closed unrun, marked ``vpt:surplus``)."""
    optuna = require_optuna()
    with warnings.catch_warnings():  # the heartbeat is ours here (vpt.sweep.study.heartbeat), not optimize()'s
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask(fixed_distributions=space.distributions())
    params = dict(trial.params)
    inherited = study._storage.get_trial(trial._trial_id).user_attrs
    for key in ("error", "interrupted"):  # a retry's copy of the stopped trial's record starts clean
        if inherited.get(key) is not None:
            trial.set_user_attr(key, None)
    if grid:
        dup = duplicate_of(study, trial, params)
        if dup is not None:
            trial.set_user_attr(SURPLUS_ATTR, True)
            tell(study, trial, state=optuna.trial.TrialState.FAIL)
            _logger.info("grid point %s is taken by trial %d; this worker's grid is done", describe(params), dup)
            return None, params
    return trial, params


def run_worker(study, space: SearchSpace, budget: int, train: TrainFn, grid: bool, pack: int = 1,
               on_trial_end: Optional[Callable[[], None]] = None) -> int:
    """Ask / train / tell until ``budget`` trials have begun in the study (by any worker) and the queue of
    retried trials is empty. Returns how many trials this worker finished."""
    optuna = require_optuna()
    S = optuna.trial.TrialState
    done = 0
    while True:
        fail_stale_trials(study)
        batch = []
        exhausted = False
        while len(batch) < pack and budget_left(study, budget) > 0:
            trial, params = ask(study, space, grid)
            if trial is None:
                exhausted = True
                break
            batch.append((trial, params))
        if not batch:
            break
        trials = [t for t, _ in batch]
        reporters = [TrialReporter(t) for t in trials]
        _logger.info("trial%s %s: %s", "s" if len(trials) > 1 else "", ", ".join(str(t.number) for t in trials),
                     " | ".join(describe(p) for _, p in batch))
        with heartbeat(study, [t._trial_id for t in trials]):
            try:
                outcomes = list(train(trials, [p for _, p in batch], reporters))
            except BaseException as e:
                for t in trials:  # leave none of them RUNNING; an interrupted one runs again on the next start
                    what = f"{type(e).__name__}: {e}".rstrip(": ")[:500]
                    if isinstance(e, Exception):
                        t.set_user_attr("error", what)
                        tell(study, t, state=S.FAIL)
                    else:  # Ctrl-C / SIGTERM: the trial did not fail; it is continued by its queued copy
                        t.set_user_attr("interrupted", f"interrupted ({what})")
                        tell(study, t, state=S.FAIL)
                        requeue(study, t)
                raise
        for t, r, o in zip(trials, reporters, outcomes):
            if o.best_epoch is not None or r.best_epoch is not None:
                t.set_user_attr("best_epoch", o.best_epoch if o.best_epoch is not None else r.best_epoch)
            for k, v in o.extra.items():
                t.set_user_attr(k, v)
            if o.error is not None:
                t.set_user_attr("error", o.error[:500])
                tell(study, t, state=S.FAIL)
                _logger.warning("trial %d failed: %s", t.number, o.error)
            elif o.pruned or r.pruned:
                tell(study, t, state=S.PRUNED)
                _logger.info("trial %d pruned", t.number)
            else:
                value = o.value if o.value is not None else r.best
                tell(study, t, value if math.isfinite(value) else None,
                     state=S.COMPLETE if math.isfinite(value) else S.FAIL)
            done += 1
        if on_trial_end is not None:
            on_trial_end()
        if exhausted:
            break
    return done
