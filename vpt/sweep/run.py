"""The sweep: a search on the validation split, then the best setting trained with K seeds and tested once.

Every trial is one run of the engine (``vpt.engine.train``) in ``<output>/trials/<number>``, with its val
metric reported to Optuna after each epoch (the pruner may stop it there) and its test split never read;
with ``--nproc-per-trial N`` that run is a torchrun job (``vpt.sweep.torchrun``). The final runs
(``<output>/final/trial_<best>/seed_<s>``) are the trials of a second study, ``<study>/final/trial_<best>``,
over the seeds: many workers share them as they share the search, and a killed final run is retried the same
way. With ``--top-k K`` the K best trials each get their final runs (``final/trial_<N>``) and the setting
with the best mean final val is the result: on a small val split one trial's val is noisy, and the mean over
seeds picks more reliably; test still takes no part in the choice. Whichever worker finishes last writes
``results.json``, the summary tables and the plots.

The output folder carries `vpt train`'s run-folder marker and OS lock (``vpt.sweep.folder``), the lock held
shared by the workers of one study: a `vpt train` there, or a sweep of another study, is refused.

Running the same command again continues a killed sweep: finished trials stay, a trial killed mid-run is
failed once its heartbeat is stale and runs again, resuming its run folder from its last finished epoch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config import from_dict, to_dict
from ..engine import Callback, holds_run, train
from ..engine.checkpoint import STATE_NAME
from ..engine.distributed import DistInfo, resolve_device
from ..engine.trainer import device_name, versions
from ..errors import ConfigError, ResumeError, RunDirError
from ..io import atomic_write_json
from . import report
from .folder import prepare_sweep_dir
from .space import SearchSpace, apply_params, check_fields, describe
from .study import (PACK_ATTR, SweepError, fail_stale_trials, make_pruner, make_sampler, open_storage, open_study,
                    open_widened, require_optuna)
from .worker import Outcome, ReportEpochs, TrialReporter, blind_to_test, run_worker

_logger = logging.getLogger(__name__)

PROTOCOL_KEYS = ("base", "novel", "hm")  # a base-to-novel final run's test accuracies (CLIP recipes)


@dataclass
class SweepOptions:
    sampler: str = "grid"  # grid | tpe | random
    trials: Optional[int] = None  # trial budget of the whole study (grid: the grid's size)
    pruner: str = "median"  # median | hyperband | none
    storage: Optional[str] = None  # SQLAlchemy URL or journal:PATH; None: sqlite:///<output>/study.db
    study: str = "sweep"  # study name in the storage
    seeds: int = 3  # final runs of the best setting (seeds train.seed, train.seed+1, ...)
    top_k: int = 1  # final runs for the k best trials; the one with the best mean final val is chosen
    heartbeat: int = 60  # seconds between a running trial's heartbeats
    grace: Optional[int] = None  # a trial whose heartbeat is older than this is failed (default 2 x heartbeat)
    max_retry: int = 2  # how often a killed trial runs again
    sampler_seed: int = 0  # the grid's shuffle (the same in every worker) / TPE's and random's seed
    progress: Optional[bool] = None  # the study's progress bar; None: on a TTY
    command: Optional[str] = None  # the command line, for results.json
    callbacks: Sequence[Callback] = ()  # extra engine callbacks for every run (the CLI's test kill switch)
    pack: int = 1  # train up to this many search trials at once in one backbone pass (vpt.sweep.packed)
    nproc_per_trial: int = 1  # >1: each trial (and final run) is a torchrun job of this many DDP processes
    extend_edges: int = 0  # widen a grid past an edge that holds the best setting, up to this many times


def _prompt_schema(cfg_dict: Mapping[str, Any]):
    """The config class of the recipe's prompt kind (so model.prompt.* fields are checked), or None."""
    from ..prompts import resolve_prompt_config
    prompt = (cfg_dict.get("model") or {}).get("prompt")
    if not prompt:
        return None
    return type(resolve_prompt_config(prompt))


def check_space(space: SearchSpace, task_cls: type, base: Mapping[str, Any]) -> None:
    """Refuse a space the recipe can't use: unknown fields (did-you-mean against the task's config
    dataclasses and the recipe's prompt kind), a value that makes an invalid config, or a field that the
    recipe overrides (optim.lr_base while optim.lr is set)."""
    from ..heads import HeadConfig
    schemas: Dict[str, Optional[type]] = {"model.head": HeadConfig, "model.lora": None, "model.peft": None, "model.text": None,
                                          "model.backbone.model_kwargs": None}
    prompt = _prompt_schema(base)
    if any(n.startswith("model.prompt.") for n in space.names) and prompt is None:
        raise ConfigError("the space sets model.prompt.* but the recipe has no prompt (model.prompt: null); "
                          "set one in the recipe or drop those fields")
    schemas["model.prompt"] = prompt
    check_fields(space, task_cls.config_cls, schemas)
    optim = base.get("optim") or {}
    if "optim.lr_base" in space.names and optim.get("lr") is not None and "optim.lr" not in space.names:
        raise ConfigError(f"the space searches optim.lr_base, but the recipe sets optim.lr={optim['lr']}, which "
                          f"wins over lr_base: search optim.lr instead, or add --set optim.lr=null")
    for p in space.params:  # every listed value (a range: both ends) must make a valid config
        for v in (p.grid() or [p.low, p.high]):
            task_cls(from_dict(task_cls.config_cls, apply_params(dict(base), {p.name: v}))).validate()


class _ReportPack(Callback):
    """Each packed trial's val metric to its own Optuna trial; a pruned trial stops training, the pack goes on."""

    def __init__(self, task, reporters: Sequence[TrialReporter]):
        self.task, self.reporters = task, list(reporters)

    def on_epoch_end(self, run, epoch: int, row: Dict[str, Any]) -> None:
        for k, r in enumerate(self.reporters):
            col = f"val_top1_t{k}"
            if self.task.active[k] and col in row and r.report(epoch, float(row[col])):
                self.task.active[k] = False
        if not any(self.task.active):
            run.request_stop(f"every packed trial stopped by epoch {epoch}")


def redact(url: str) -> str:
    if url.startswith("journal:") or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: keep only the scheme
        return url.split("://", 1)[0] + "://***"


class Sweep:
    """One worker of a sweep. ``base`` is the resolved run config (a nested dict) the space varies."""

    def __init__(self, task_cls: type, base: Mapping[str, Any], space: SearchSpace, opts: SweepOptions):
        self.task_cls, self.space, self.opts = task_cls, space, opts
        self.base = json.loads(json.dumps(dict(base)))
        self.out = os.path.abspath(self.base["output"]["dir"])
        if opts.sampler != "grid" and not opts.trials:
            raise ConfigError(f"--sampler {opts.sampler} needs a trial budget: pass --trials N")
        if opts.trials is not None and opts.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {opts.trials}")
        if opts.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {opts.seeds}")
        if opts.pack < 1:
            raise ConfigError(f"--pack must be >= 1, got {opts.pack}")
        if opts.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {opts.top_k}")
        if opts.nproc_per_trial < 1:
            raise ConfigError(f"--nproc-per-trial must be >= 1, got {opts.nproc_per_trial}")
        if opts.extend_edges < 0:
            raise ConfigError(f"--extend-edges must be >= 0, got {opts.extend_edges}")
        if opts.extend_edges and opts.sampler != "grid":
            raise ConfigError(f"--extend-edges adds grid points: it needs --sampler grid (a {opts.sampler} search "
                              f"over a range: widen the range in the space file instead)")
        if opts.nproc_per_trial > 1 and opts.pack > 1:
            raise ConfigError("--pack and --nproc-per-trial don't combine yet (a pack trains in this process); "
                              "drop one")
        if opts.pack > 1:
            from .packed import check_packable
            if task_cls.name != "classification" or (base.get("model") or {}).get("type", "classifier") != "classifier":
                raise ConfigError("--pack trains classifier trials (task classification, model.type classifier); "
                                  "drop --pack for this recipe")
            check_packable(space.names)
        check_space(space, task_cls, self.base)
        self.budget = opts.trials or space.grid_size()
        if opts.sampler == "grid":
            self.budget = min(self.budget, space.grid_size())
        self.searched = space  # the space searched in the end: ``space`` widened past its edges (--extend-edges)
        self.widenings: List[Dict[str, Any]] = []
        self.storage_url = opts.storage or f"sqlite:///{os.path.join(self.out, 'study.db')}"
        self.epochs = int(self.base["train"]["epochs"])

    # --- the output folder ------------------------------------------------------------------------------
    def _claim_folder(self):
        """The run-folder marker and lock of `vpt train` (vpt.sweep.folder), the lock held shared by the
        workers of this study: a `vpt train` or another study's sweep in this folder is refused."""
        identity = {"study": self.opts.study, "storage": redact(self.storage_url), "space": self.space.to_dict()}
        return prepare_sweep_dir(self.out, identity, command=self.opts.command or "vpt sweep")

    # --- trials --------------------------------------------------------------------------------------------
    def _trial_config(self, params: Mapping[str, Any], run_dir: str, seed: Optional[int] = None):
        data = apply_params(self.base, params)
        data["output"] = {**data.get("output", {}), "dir": run_dir, "save_last": False}
        if seed is not None:
            data["train"]["seed"] = seed
        return from_dict(self.task_cls.config_cls, data)

    def _run(self, task, run_dir: str, callbacks: Sequence[Callback]) -> Dict[str, Any]:
        info = DistInfo(device=resolve_device(task.cfg.train.device))
        callbacks = [*callbacks, *self.opts.callbacks]
        resume = holds_run(run_dir) and os.path.isfile(os.path.join(run_dir, STATE_NAME))
        try:
            return train(task, info, resume=resume, overwrite=not resume, callbacks=callbacks,
                         command=self.opts.command)
        except ResumeError as e:  # a state this version can't continue: start the trial over
            _logger.warning("%s: %s; starting this trial over", run_dir, e)
            return train(task, info, resume=False, overwrite=True, callbacks=callbacks, command=self.opts.command)

    def _run_trial(self, task, run_dir: str, reporter: TrialReporter, blind_to_test: bool,
                   pruner: str) -> Dict[str, Any]:
        """One trial's (or final run's) engine run, reporting val per epoch to ``reporter``: in this process,
        or as a torchrun job of ``--nproc-per-trial`` processes (vpt.sweep.torchrun)."""
        if self.opts.nproc_per_trial <= 1:
            return self._run(task, run_dir, [ReportEpochs(reporter, f"val_{task.selection}")])
        from ..engine.trainer import config_yaml
        from ..io import atomic_write_text
        from .torchrun import DIVERGED_EXIT, launch_command, read_results, run_job
        config_path = run_dir + ".yaml"  # beside the run folder, which is the engine's
        atomic_write_text(config_path, config_yaml(task.cfg))
        resume = holds_run(run_dir) and os.path.isfile(os.path.join(run_dir, STATE_NAME))
        trial = reporter.trial
        cmd = launch_command(self.opts.nproc_per_trial, config_path, trial.study.study_name, trial._trial_id, pruner,
                             f"val_{task.selection}", blind_to_test, resume)
        code = run_job(cmd, self.storage_url, run_dir)
        if code == DIVERGED_EXIT:
            raise FloatingPointError(f"non-finite training loss (see {run_dir}/train.log)")
        if code != 0:
            raise SweepError(f"the torchrun job of {run_dir} failed (exit code {code}); see its output above and "
                             f"{os.path.join(run_dir, 'train.log')}; fix the cause and run the same command again")
        res = read_results(run_dir)
        if str(res.get("stopped") or "").startswith("pruned"):
            reporter.pruned = True
        return res

    def _root(self, study, trial) -> int:
        """The number of the trial this one retries (its run folder continues), else its own."""
        attrs = study._storage.get_trial(trial._trial_id).system_attrs
        return int(attrs.get("failed_trial", trial.number))

    def _train_search(self, study):
        trial_cls = blind_to_test(self.task_cls)

        def train_trials(trials, params, reporters) -> List[Outcome]:
            out = []
            for trial, p, reporter in zip(trials, params, reporters):
                run_dir = os.path.join(self.out, "trials", f"{self._root(study, trial):04d}")
                if study._storage.get_trial(trial._trial_id).user_attrs.get(PACK_ATTR) is not None:
                    # a retry of a packed trial, running alone: it is in no pack now (its pack name, inherited
                    # from the killed trial, would make a stale packmate fail this live trial too)
                    trial.set_user_attr(PACK_ATTR, None)
                task = trial_cls(self._trial_config(p, run_dir))
                try:
                    res = self._run_trial(task, run_dir, reporter, True, self.opts.pruner)
                except FloatingPointError as e:  # the engine's divergence guard: this trial fails, not the study
                    out.append(Outcome(error=f"diverged: {e}"))
                    continue
                except RunDirError as e:  # its folder is still held (a worker whose heartbeat went stale runs on)
                    out.append(Outcome(error=str(e)))
                    continue
                if reporter.pruned:
                    out.append(Outcome(pruned=True, extra={"run_dir": os.path.relpath(run_dir, self.out)}))
                    continue
                if not res.get("val"):  # the same for every trial of this recipe and data: stop the sweep
                    raise SweepError(f"trials select on the validation split, and the data has none (trial "
                                     f"{trial.number}: {run_dir}/train.log); pass --val-fraction F (e.g. 0.2) "
                                     f"or add {task.cfg.data.root}/val/<class>/ folders")
                val = (res.get("val") or {}).get(task.selection)
                out.append(Outcome(value=val, best_epoch=res.get("best_epoch"),
                                   extra={"run_dir": os.path.relpath(run_dir, self.out)}))
            return out
        return train_trials

    def _train_packed(self, study):
        """Up to ``pack`` asked trials in one engine run; each reports its own val curve and may be pruned.

        A pack killed mid-run resumes from its last finished epoch when its trials run again together: its
        trials are failed and queued again together (``fail_stale_trials``) and a pack orders its trials by the
        ones they continue, so the same command regroups them into the same pack (folder
        ``packs/<trial numbers>``). Retries that end up in another grouping (another worker took some
        of them, or --pack changed) start over: a pack's state holds all its trials' tensors and optimizer
        state at once, and a part of it is no lone run's state; the log says so."""
        single = self._train_search(study)
        from .packed_task import PackedClassificationTask

        def train_trials(trials, params, reporters) -> List[Outcome]:
            if len(trials) == 1:
                return single(trials, params, reporters)
            # in the order of the trials they continue: a pack's folder and slots don't depend on queue order
            order = sorted(range(len(trials)), key=lambda i: self._root(study, trials[i]))
            outcomes = packed([trials[i] for i in order], [params[i] for i in order], [reporters[i] for i in order])
            return [outcomes[order.index(i)] for i in range(len(trials))]

        def packed(trials, params, reporters) -> List[Outcome]:
            name = "-".join(f"{self._root(study, t):04d}" for t in trials)
            run_dir = os.path.join(self.out, "packs", name)
            for t in trials:
                was = study._storage.get_trial(t._trial_id).user_attrs.get(PACK_ATTR)
                if was is not None and was != name:
                    _logger.warning("trial %d was in pack %s when it stopped and now runs in pack %s: it starts "
                                    "over (only a whole pack resumes)", t.number, was, name)
                t.set_user_attr(PACK_ATTR, name)
            cfgs = [self._trial_config(p, run_dir) for p in params]
            task = PackedClassificationTask(cfgs[0], cfgs)
            self._run(task, run_dir, [_ReportPack(task, reporters)])
            out = []
            for k, r in enumerate(reporters):
                if task.diverged[k]:
                    out.append(Outcome(error="diverged: non-finite training loss (packed trial)"))
                elif r.pruned or not task.active[k]:  # stopped by the pruner (maybe before a resume)
                    out.append(Outcome(pruned=True))
                else:
                    out.append(Outcome(value=r.best, best_epoch=r.best_epoch,
                                       extra={"run_dir": os.path.relpath(run_dir, self.out), "pack_index": k}))
            return out
        return train_trials

    def _train_final(self, params: Mapping[str, Any], folder: str):
        def train_trials(trials, seeds, reporters) -> List[Outcome]:
            out = []
            for trial, s, reporter in zip(trials, seeds, reporters):
                seed = int(s["train.seed"])
                run_dir = os.path.join(self.out, folder, f"seed_{seed}")
                task = self.task_cls(self._trial_config(params, run_dir, seed=seed))
                try:
                    res = self._run_trial(task, run_dir, reporter, False, "none")
                except FloatingPointError as e:
                    out.append(Outcome(error=f"diverged: {e}"))
                    continue
                sel = task.selection
                val, test = res.get("val") or {}, res.get("test") or {}
                out.append(Outcome(value=val.get(sel), best_epoch=res.get("best_epoch"), extra={
                    "run_dir": os.path.relpath(run_dir, self.out), "seed": seed,
                    **{k: res[k] for k in PROTOCOL_KEYS if res.get(k) is not None},  # base-to-novel
                    "val": {k: v for k, v in val.items() if not isinstance(v, (list, dict))},
                    "test": {k: v for k, v in test.items() if not isinstance(v, (list, dict))} or None}))
            return out
        return train_trials

    # --- the whole sweep ------------------------------------------------------------------------------------
    def _work(self, study, space: SearchSpace, budget: int, train_fn, grid: bool, bar=None, pack: int = 1) -> None:
        """Run trials until the study's budget is begun and no trial is running or queued anywhere."""
        optuna = require_optuna()
        S = optuna.trial.TrialState
        while True:
            run_worker(study, space, budget, train_fn, grid, pack=pack, on_trial_end=bar)
            fail_stale_trials(study)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if S.WAITING in states:
                continue  # a killed trial was queued again
            if S.RUNNING not in states:
                return
            time.sleep(min(self.opts.heartbeat / 2, 2.0))  # another worker's trial: wait for it (or its heartbeat)

    def run(self) -> Dict[str, Any]:
        lock = self._claim_folder()
        try:
            return self._run_claimed()
        finally:
            lock.release()

    def _run_claimed(self) -> Dict[str, Any]:
        """The search (widened past its edges with --extend-edges), the final runs of the --top-k best trials,
        and the report."""
        storage = open_storage(self.storage_url, self.opts.heartbeat, self.opts.grace, self.opts.max_retry)
        study = open_study(storage, self.opts.study, self.space, self.base,
                           make_sampler(self.opts.sampler, self.space, self.opts.sampler_seed),
                           make_pruner(self.opts.pruner, self.epochs))
        self._search(study, self.space, self.budget, self.opts.sampler == "grid")
        study = self._widen(storage, study)
        records = report.trial_records(study)
        ranked = report.ranked_records(records)
        if not ranked:
            self._write(study, records, [])
            raise SweepError(f"no trial of study {self.opts.study!r} completed (see {self.out}/summary.md and the "
                             f"trials' train.log); fix the cause and run the same command again")
        top = ranked[:self.opts.top_k]
        if len(top) < self.opts.top_k:
            _logger.warning("--top-k %d but only %d trial(s) completed: final runs for those", self.opts.top_k, len(top))
        warning = report.edge_warning(self.searched, top[0]["params"], top[0]["value"], records,
                                      self.opts.sampler, len(self.widenings))
        if warning:
            _logger.warning("%s", warning)
        return self._write(study, records, self._final_runs(storage, top))

    def _search(self, study, space: SearchSpace, budget: int, grid: bool) -> None:
        """The search trials of ``study`` (packed with --pack), under a progress bar."""
        bar = _StudyBar(study, budget, self.opts.progress)
        try:
            train_fn = self._train_packed(study) if self.opts.pack > 1 else self._train_search(study)
            self._work(study, space, budget, train_fn, grid, bar.update, pack=self.opts.pack)
        finally:
            bar.close()

    def _final_runs(self, storage, top: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """Each of the ``top`` trials' settings trained again with every seed (its own final study and folder);
        returns the candidates (:meth:`_candidate`), the best trial first."""
        optuna = require_optuna()
        seed0 = int(self.base["train"]["seed"])
        from .space import parse_space
        seeds = parse_space({"train.seed": [seed0 + i for i in range(self.opts.seeds)]})
        keep = {self._final_name(r) for r in top}
        candidates = []
        for rank, rec in enumerate(top):
            _logger.info("%s: %s (trial %d, val %.4g); final runs with %d seed(s)",
                         "best setting" if rank == 0 else f"candidate {rank + 1} of {len(top)}",
                         describe(rec["params"]), rec["number"], rec["value"], self.opts.seeds)
            final_config = apply_params(self.base, rec["params"])
            name, folder, note = self._final_target(storage, rec, seeds, final_config, keep)
            if note:
                _logger.warning("%s", note)
            final = open_study(storage, name, seeds, final_config, make_sampler("grid", seeds, 0),
                               optuna.pruners.NopPruner())
            self._work(final, seeds, self.opts.seeds, self._train_final(rec["params"], folder), True)
            candidates.append(self._candidate(rec, final, name, folder, note))
        return candidates

    def _widen(self, storage, study):
        """While the best trial lies on an edge of the space, add the next value past that edge (see
        :meth:`SearchSpace.widened`) and run the new grid points, unpruned, in study ``<study>/widened_<n>``,
        which holds the earlier trials too (:func:`open_widened`). ``--extend-edges N`` allows N such steps; a
        step that an earlier run took is followed whatever N is, so that every worker and rerun reports the
        same study. Returns the study searched last (``self.searched``: its space)."""
        optuna = require_optuna()
        names = set(optuna.study.get_all_study_names(storage))
        space, self.searched, self.widenings = self.space, self.space, []
        while True:
            name = f"{self.opts.study}/widened_{len(self.widenings) + 1}"
            if name not in names and len(self.widenings) >= self.opts.extend_edges:
                break
            records = report.trial_records(study)
            best = report.best_record(records)
            edges = report.real_edges(space, best["params"], best["value"], records) if best else {}
            wider = space.widened(edges)
            if wider is None:
                if edges:
                    _logger.warning("the best setting lies on an edge of %s that has no next value to add",
                                    ", ".join(edges))
                break
            try:
                check_space(wider, self.task_cls, self.base)
            except (ConfigError, ValueError) as e:
                _logger.warning("cannot widen the space past %s: %s", ", ".join(edges), e)
                break
            added = {p.name: [v for v in p.grid() if v not in space[p.name].grid()]
                     for p in wider.params if p.grid() != space[p.name].grid()}
            _logger.info("the best setting (%s) lies on the edge of the space: widening it with %s (study %r)",
                         describe(best["params"]), describe({k: v[0] for k, v in added.items()}), name)
            # no pruner here: the new points exist to settle whether the optimum lies past the edge, which
            # takes their whole curve (the median pruner would judge a small new lr by its slow first epochs
            # against the finished trials, a harder rule than the grid's own trials met, e.g. in one pack)
            study, budget = open_widened(storage, study, name, wider, self.base,
                                         make_sampler("grid", wider, self.opts.sampler_seed),
                                         optuna.pruners.NopPruner())
            self._search(study, wider, budget, True)
            space = self.searched = wider
            self.widenings.append({"study": name, "edges": edges, "added": added})
        return study

    def _candidate(self, rec, final, name: str, folder: str, note: Optional[str]) -> Dict[str, Any]:
        """One candidate setting with its final runs (seed order) and their val / test means."""
        runs = []
        for t in sorted(final.get_trials(deepcopy=False), key=lambda t: t.user_attrs.get("seed", 0)):
            if t.state.name == "COMPLETE":
                runs.append({"seed": t.user_attrs.get("seed"), "val": t.user_attrs.get("val"),
                             "test": t.user_attrs.get("test"), "best_epoch": t.user_attrs.get("best_epoch"),
                             "run_dir": t.user_attrs.get("run_dir"),
                             **{k: t.user_attrs[k] for k in PROTOCOL_KEYS if k in t.user_attrs}})
        sel = self.task_cls.selection
        tests = [r["test"][sel] for r in runs if r.get("test") and sel in r["test"]]
        vals = [r["val"][sel] for r in runs if r.get("val") and sel in r["val"]]
        protocol = {}  # base-to-novel: base / novel / hm mean and std over the final runs
        for k in PROTOCOL_KEYS:
            xs = [r[k] for r in runs if k in r]
            if xs:
                protocol.update({f"{k}_mean": _mean(xs), f"{k}_std": _std(xs)})
        return {"trial": rec["number"], "params": rec["params"], "val": rec["value"],
                "best_epoch": rec.get("best_epoch"), "study": name, "folder": folder, "note": note,
                "seeds": [r["seed"] for r in runs], "runs": runs, "val_mean": _mean(vals), "val_std": _std(vals),
                "test_mean": _mean(tests), "test_std": _std(tests), "test_n": len(tests), **protocol,
                "final_trials": report.trial_records(final)}

    def _final_name(self, rec) -> str:
        return f"{self.opts.study}/final/trial_{rec['number']}"

    def _final_target(self, storage, best, seeds: SearchSpace, config, keep=frozenset()) -> tuple:
        """The final study and run folder of the best setting: ``<study>/final/trial_<N>`` and
        ``final/trial_<NNNN>``, named by the best trial, so a larger budget that finds another best trains
        that one's final runs next to the earlier ones (never resuming a run of another setting). A sweep
        made before this naming keeps its ``<study>/final`` (folder ``final``) while its best is unchanged.
        ``keep``: the final studies of this sweep's other candidates (``--top-k``), not named in the note.
        Returns (study name, folder, a note when earlier final runs were of another setting)."""
        optuna = require_optuna()
        names = set(optuna.study.get_all_study_names(storage))
        legacy = f"{self.opts.study}/final"
        mine = self._final_name(best)
        if legacy in names and mine not in names:
            try:
                open_study(storage, legacy, seeds, config, make_sampler("grid", seeds, 0), optuna.pruners.NopPruner())
                return legacy, "final", None
            except SweepError:
                pass  # made for another setting: the best has changed since
        others = sorted(n for n in names if n != mine and n not in keep
                        and (n == legacy or n.startswith(legacy + "/trial_")))
        note = None
        if others:
            note = (f"the best setting has changed since earlier final runs ({', '.join(others)}): the final runs "
                    f"now train trial {best['number']}'s setting ({describe(best['params'])}) in "
                    f"{os.path.join(self.out, 'final', 'trial_%04d' % best['number'])}; the earlier ones are kept "
                    f"and not reported")
        return mine, os.path.join("final", f"trial_{best['number']:04d}"), note

    def _write(self, study, records, candidates: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """results.json, the tables and the plots. The chosen setting is the best trial's, or with --top-k the
        candidate with the best mean final val (ties: the better trial); test never takes part."""
        chosen = candidates[choose_candidate(candidates)] if candidates else None
        cands = [{**{k: v for k, v in c.items() if k not in ("runs", "final_trials")}, "chosen": c is chosen,
                  "runs": len(c["runs"])} for c in candidates]
        space = self.searched
        sel = self.task_cls.selection
        label = self.task_cls.selection_label or sel
        metric = f"val {label}"
        warning = report.edge_warning(space, chosen["params"], chosen["val"], records, self.opts.sampler,
                                      len(self.widenings)) if chosen else None
        final = {}
        if chosen is not None:
            final = {k: v for k, v in chosen.items() if k not in ("params", "val", "best_epoch", "final_trials")}
            final = {"study": final.pop("study"), "folder": final.pop("folder"), "trial": final.pop("trial"),
                     "note": final.pop("note"), "metric": sel, **final}
        headline = None if chosen is None else {**final, "params": chosen["params"], "val": chosen["val"],
                                                "metric_label": label}
        files = report.write_tables(self.out, records, space, cands if len(cands) > 1 else (), headline, metric,
                                    warning)
        files += report.write_plots(self.out, records, space, study, metric)
        selection = f"best {metric} over epochs and trials; ties: smaller lr"
        if self.opts.top_k > 1:
            selection += (f"; then the {self.opts.top_k} best trials trained again with {self.opts.seeds} seed(s) "
                          f"each, and the best mean final val chosen")
        results = {
            "command": self.opts.command,
            "study": self.opts.study, "storage": redact(self.storage_url),
            "sampler": self.opts.sampler, "pruner": self.opts.pruner, "budget": self.budget,
            "top_k": self.opts.top_k, "selection": selection,
            "space": space.to_dict(),
            "space_given": self.space.to_dict(),
            "widened": self.widenings,  # each step: its study, the edges it widened and the values it added
            "best": None if chosen is None else {"trial": chosen["trial"], "params": chosen["params"],
                                                 "val": chosen["val"], "best_epoch": chosen.get("best_epoch")},
            "edge_warning": warning,
            "edges": report.real_edges(space, chosen["params"], chosen["val"], records) if chosen else {},
            "edge_ties": report.edge_ties(space, chosen["params"], chosen["val"], records) if chosen else {},
            "final": final,
            "candidates": cands,
            "trials": records,
            "trial_counts": {s: sum(report.trial_state(r) == s.lower() for r in records)
                             for s in ("COMPLETE", "PRUNED", "FAIL", "INTERRUPTED", "RUNNING")},
            "final_trials": chosen["final_trials"] if chosen else [],
            "files": sorted(os.path.relpath(f, self.out) for f in files),
            "device": device_name(resolve_device(self.base["train"].get("device"))),
            "versions": {**versions(), "optuna": require_optuna().__version__},
            "config": self.base,
        }
        atomic_write_json(os.path.join(self.out, "results.json"), results)
        return results


def choose_candidate(candidates: Sequence[Mapping[str, Any]]) -> int:
    """The index of the chosen setting among the ``--top-k`` candidates (best trial first): the highest mean
    val of its final runs; ties, and candidates whose final runs all failed, go to the better trial."""
    scored = [i for i, c in enumerate(candidates) if c.get("val_mean") is not None]
    return max(scored, key=lambda i: (candidates[i]["val_mean"], -i)) if scored else 0


def _mean(xs: Sequence[float]) -> Optional[float]:
    return statistics.fmean(xs) if xs else None


def _std(xs: Sequence[float]) -> Optional[float]:
    return statistics.stdev(xs) if len(xs) > 1 else (0.0 if xs else None)


class _StudyBar:
    """A progress bar over the study's trials (all workers'), on a TTY unless told otherwise."""

    def __init__(self, study, total: int, show: Optional[bool]):
        import sys
        self.study, self.bar = study, None
        if show or (show is None and sys.stderr.isatty()):
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="study", unit="trial", position=1, leave=True)
            self.update()

    def update(self) -> None:
        if self.bar is None:
            return
        finished = sum(t.state.is_finished() and not t.user_attrs.get("vpt:surplus")
                       for t in self.study.get_trials(deepcopy=False))
        self.bar.n = min(finished, self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(task_cls: type, config: Any, space: SearchSpace, opts: SweepOptions) -> Dict[str, Any]:
    """Run (or join, or continue) the sweep of ``config`` (a run config dataclass or nested dict) over ``space``."""
    base = to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    return Sweep(task_cls, base, space, opts).run()


__all__ = ["Sweep", "SweepOptions", "check_space", "choose_candidate", "run_sweep", "redact"]
