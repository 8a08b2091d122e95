"""Optuna studies for ``vpt sweep``: storage, joining, samplers, pruners, heartbeats and the trial queue.

One study may be worked on by many processes and machines: every worker runs the same command with one
``--storage`` and ``--study``. What keeps them consistent:

- the first worker creates the study and records the space and the fixed config in it; a worker whose
  space or config differs is refused, naming the difference;
- grid points are never run twice: Optuna's GridSampler gives trial number i grid point i when every
  worker shuffles the grid with the same seed (trial numbers are unique in the storage); a trial that a
  race would add past the grid is closed unrun (``vpt:surplus``) instead of repeating a point;
- a worker killed mid-trial stops beating; once its heartbeat is older than the grace period, any worker
  marks the trial failed and queues it once more (Optuna's RetryHeartbeatStaleTrialCallback), so the
  study still completes. RDB storages use Optuna's own heartbeat; the journal file storage, which has
  none, gets the same protocol through a trial attribute;
- a diverging trial is failed (its error recorded), never the study.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from ..errors import ConfigError, VptError
from .space import SearchSpace

_logger = logging.getLogger(__name__)

SPACE_ATTR, CONFIG_ATTR, VERSION_ATTR = "vpt:space", "vpt:config", "vpt:version"
HEARTBEAT_ATTR, SURPLUS_ATTR = "vpt:heartbeat", "vpt:surplus"
JOURNAL_PREFIX = "journal:"
PACK_ATTR = "vpt:pack"  # a packed trial's pack (folder name under packs/): its retry resumes only in that pack
FILLING_ATTR = "vpt:filling"  # a widened study being filled by its creator (open_widened)
SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("median", "hyperband", "none")
# config fields that may differ between the workers of one study (where they run, not what they compute)
WORKER_FIELDS = ("train.device", "train.workers", "train.progress", "train.log_interval", "output.dir", "data.root",
                 "output.tensorboard")


class SweepError(VptError, RuntimeError):
    """A study or storage that cannot be used as asked; the message names the fix."""


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("vpt sweep needs Optuna: pip install 'vpt[sweep]' (or: pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --- storage -------------------------------------------------------------------------------------------
def open_storage(url: str, heartbeat_interval: int = 60, grace_period: Optional[int] = None, max_retry: int = 1):
    """``journal:PATH`` (Optuna's journal file, for a shared filesystem) or an SQLAlchemy URL
    (``sqlite:///sweep.db``, ``postgresql://...``, ``mysql+pymysql://...``) -> an Optuna storage with
    stale-trial detection. An unreachable URL raises SweepError naming it."""
    optuna = require_optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    grace = grace_period or 2 * heartbeat_interval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        if not path:
            raise SweepError("--storage journal: needs a file path, e.g. journal:/shared/sweeps/study.log")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise SweepError(f"--storage {url}: folder {folder!r} does not exist; create it (on the shared "
                             f"filesystem every worker sees) or choose another path")
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        try:
            storage = JournalStorage(JournalFileBackend(path))
        except OSError as e:
            raise SweepError(f"--storage {url}: cannot open the journal file: {e}") from None
        storage.vpt_heartbeat = (heartbeat_interval, grace, retry)  # journal files have no heartbeat of their own
        return storage
    if "://" not in url:
        raise SweepError(f"--storage {url!r} is neither an SQLAlchemy URL (sqlite:///sweep.db, postgresql://user@host/db) "
                         f"nor journal:PATH")
    kwargs: Dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several workers on one file wait, not fail
    try:
        for attempt in range(6):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace,
                                                      heartbeat_stale_trial_callback=retry, **kwargs)
            except Exception as e:  # workers starting together race to create the schema: the loser tries again
                racing = (type(e).__name__ == "IntegrityError" or "database is locked" in str(e)
                          or "already exists" in str(e))
                if not racing or attempt == 5:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ImportError as e:
        raise SweepError(f"--storage {url}: the database driver is missing ({e}); install it, e.g. "
                         f"pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL)") from None
    except Exception as e:  # sqlalchemy's ArgumentError / OperationalError and the drivers' own errors
        raise SweepError(f"--storage {url}: cannot reach the storage ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else e}); check the URL, that the server runs and "
                         f"that this machine can reach it") from None


def native_heartbeat(storage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled
    return is_heartbeat_enabled(storage)


# --- samplers and pruners ------------------------------------------------------------------------------
def make_sampler(kind: str, space: SearchSpace, seed: int = 0):
    """grid (every worker shuffles the grid with ``seed``: trial i runs point i), tpe (constant liar, for
    concurrent workers) or random."""
    optuna = require_optuna()
    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if kind == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(constant_liar=True)
    if kind == "random":
        return optuna.samplers.RandomSampler()
    raise ConfigError(f"unknown --sampler {kind!r}; available: {', '.join(SAMPLERS)}")


def make_pruner(kind: str, epochs: int):
    """median (Optuna's MedianPruner after 5 trials and 1 epoch), hyperband (epochs as the resource) or none."""
    optuna = require_optuna()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown --pruner {kind!r}; available: {', '.join(PRUNERS)}")


# --- the study -----------------------------------------------------------------------------------------
def study_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The part of a resolved config (nested dict) that every worker of a study must share."""
    out = json.loads(json.dumps(config))
    for dotted in WORKER_FIELDS:
        node = out
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(keys[-1], None)
    return out


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def open_study(storage, name: str, space: SearchSpace, config: Mapping[str, Any], sampler, pruner,
               wait_s: float = 30.0, populate: Optional[Callable[[Any], None]] = None):
    """Create study ``name`` (recording space and config) or join it (checking both).

    ``populate(study)`` fills a study this call creates (a widened study's copied trials and queued points,
    :func:`open_widened`) before the space is recorded, so that joining workers, which wait for the record,
    see it whole. The creator marks the study ``vpt:filling`` with a time it renews while filling; a study
    whose mark has not been renewed for ``wait_s`` (its creator was stopped) is deleted and made again."""
    optuna = require_optuna()
    from ..version import __version__
    shared = study_config(config)
    def record() -> None:
        study.set_user_attr(CONFIG_ATTR, shared)
        study.set_user_attr(VERSION_ATTR, __version__)
        study.set_user_attr(SPACE_ATTR, space.to_dict())  # last: its presence says the study is ready

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    else:
        if populate is not None:
            study.set_user_attr(FILLING_ATTR, time.time())
            populate(study)
        record()
        _logger.info("created study %r", name)
        return study
    deadline = time.monotonic() + wait_s
    while SPACE_ATTR not in study.user_attrs:  # the creator writes the attributes just after creating it
        if time.monotonic() > deadline:
            filling = study.user_attrs.get(FILLING_ATTR)
            if populate is not None and filling is not None:
                if time.time() - float(filling) < wait_s:  # its creator is still filling it
                    time.sleep(0.2)
                    continue
                _logger.warning("study %r was left half made (its creator was stopped while filling it); "
                                "making it again", name)
                with contextlib.suppress(KeyError):  # another worker deleted it first
                    optuna.delete_study(study_name=name, storage=storage)
                return open_study(storage, name, space, config, sampler, pruner, wait_s, populate)
            if study.trials:
                raise SweepError(f"study {name!r} exists but was not made by vpt sweep (it records no space); "
                                 f"choose another --study")
            # no trials and no record: its creator was stopped between creating and recording it (or someone
            # made an empty study of this name). Record it as this command's; the checks below then hold a
            # worker that raced to record another space or config to the usual errors.
            _logger.warning("study %r exists with no trials and no vpt record (its creator was stopped while "
                            "setting it up?); recording this command's space and config in it", name)
            record()
            break
        time.sleep(0.2)
    theirs = study.user_attrs[SPACE_ATTR]
    if json.dumps(theirs, sort_keys=True) != json.dumps(space.to_dict(), sort_keys=True):
        diff = sorted(set(theirs) ^ set(space.names)) or sorted(k for k in theirs if theirs[k] != space.to_dict().get(k))
        raise SweepError(f"study {name!r} searches another space (differs in: {', '.join(diff)}); run the space "
                         f"it was made with, or choose another --study")
    mine, recorded = _flat(shared), _flat(study.user_attrs.get(CONFIG_ATTR, {}))
    diff = sorted(k for k in set(mine) | set(recorded) if mine.get(k) != recorded.get(k) and k not in space.names)
    if diff:
        shown = "; ".join(f"{k}: study {recorded.get(k)!r}, this command {mine.get(k)!r}" for k in diff[:5])
        raise SweepError(f"study {name!r} was made with another config ({shown}); run the same command, or "
                         f"choose another --study")
    _logger.info("joined study %r (%d trials so far)", name, len(study.trials))
    return study


def open_widened(storage, parent, name: str, space: SearchSpace, config: Mapping[str, Any], sampler, pruner):
    """Create (or join) study ``name``: the finished study ``parent`` over the wider ``space``. Optuna keeps
    a listed parameter's choices fixed within one study, so a wider list needs a study of its own: it gets
    every trial of ``parent`` (same numbers, values, val curves and attributes; nothing is trained again)
    and the grid points of ``space`` outside ``parent``'s grid, queued to run. Returns (study, the
    trial budget that covers them)."""
    optuna = require_optuna()
    old = sorted(parent.get_trials(deepcopy=False), key=lambda t: t.number)
    if any(not t.state.is_finished() for t in old):
        raise SweepError(f"study {parent.study_name!r} still has running or queued trials; it is widened once it "
                         f"has finished")
    # the points outside the parent's grid (a partial grid, --trials < its size, stays as partial as it was)
    known = {json.dumps(p, sort_keys=True) for p in SearchSpace.from_dict(parent.user_attrs[SPACE_ATTR]).points()}
    new = [p for p in space.points() if json.dumps(p, sort_keys=True) not in known]
    dists = space.distributions()

    def fill(study) -> None:
        for i, t in enumerate(old):  # in number order: each copy gets its trial's number
            if i % 20 == 19:
                study.set_user_attr(FILLING_ATTR, time.time())  # still filling (see open_study)
            study.add_trial(optuna.trial.FrozenTrial(
                number=t.number, state=t.state, value=t.value, datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete, params=dict(t.params),
                distributions={k: dists[k] for k in t.params}, user_attrs=dict(t.user_attrs),
                system_attrs={k: v for k, v in t.system_attrs.items() if k not in ("grid_id", "search_space")},
                intermediate_values=dict(t.intermediate_values), trial_id=-1))
        for p in new:
            study.enqueue_trial(p, skip_if_exists=False)
    study = open_study(storage, name, space, config, sampler, pruner, populate=fill)
    begun = sum(not is_surplus(t) and not is_retry(t) for t in old)
    return study, begun + len(new)


# --- heartbeats ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def heartbeat(study, trial_ids: Sequence[int]) -> Iterator[None]:
    """Beat for ``trial_ids`` in a background thread while the block runs (a killed worker stops beating)."""
    storage = study._storage
    if native_heartbeat(storage):
        interval = storage.get_heartbeat_interval()

        def beat(tid: int) -> None:
            storage.record_heartbeat(tid)
    elif hasattr(storage, "vpt_heartbeat"):
        interval = storage.vpt_heartbeat[0]

        def beat(tid: int) -> None:
            storage.set_trial_system_attr(tid, HEARTBEAT_ATTR, time.time())
    else:
        yield
        return
    stop = threading.Event()

    def beat_all() -> None:
        for tid in trial_ids:
            with contextlib.suppress(Exception):  # a trial finished meanwhile: nothing to beat
                beat(tid)

    def loop() -> None:
        while not stop.wait(interval):
            beat_all()
    beat_all()  # before training starts: a trial with no beat at all would never count as stale
    thread = threading.Thread(target=loop, name="vpt-sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study) -> List[int]:
    """Fail the running trials whose worker stopped beating, and queue each once more; returns their numbers.

    The trials of one pack go together: one process trains and beats for all of them, writing their beats
    one after another, so when one has aged past the grace period the others are as dead even if their last
    beat has not aged yet. Failing them in the same pass lets their retries regroup into the same pack and
    resume it (``vpt.sweep.run``), instead of the first retry running alone and starting over."""
    optuna = require_optuna()
    storage = study._storage
    if native_heartbeat(storage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
        return _fail_packmates(study, sorted(before & after))
    if not hasattr(storage, "vpt_heartbeat"):
        return []
    _, grace, retry = storage.vpt_heartbeat
    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        last = t.system_attrs.get(HEARTBEAT_ATTR, t.datetime_start.timestamp() if t.datetime_start else now)
        if now - float(last) <= grace:
            continue
        if _fail(study, t):
            failed.append(t.number)
    return _fail_packmates(study, failed)


def _fail(study, trial) -> bool:
    """Fail a RUNNING trial and queue it once more; False when another worker finished or failed it first."""
    optuna = require_optuna()
    try:
        if not study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    requeue(study, trial)
    return True


def _fail_packmates(study, failed: List[int]) -> List[int]:
    """``failed`` plus the RUNNING trials that share a pack with one of them, failed and queued now."""
    if not failed:
        return failed
    optuna = require_optuna()
    trials = study.get_trials(deepcopy=False)
    packs = {t.user_attrs.get(PACK_ATTR) for t in trials if t.number in set(failed)} - {None}
    more = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING
            and t.user_attrs.get(PACK_ATTR) in packs and _fail(study, t)]
    return sorted(failed + more)


def requeue(study, trial) -> None:
    """Queue a failed trial once more, as a stale one would be (Ctrl-C / SIGTERM: the trial did not fail)."""
    storage = study._storage
    retry = storage.vpt_heartbeat[2] if hasattr(storage, "vpt_heartbeat") else (
        storage.get_heartbeat_stale_trial_callback() if native_heartbeat(storage) else None)
    if retry is not None:
        retry(study, storage.get_trial(trial._trial_id))


# --- the trial queue -----------------------------------------------------------------------------------
def is_surplus(trial) -> bool:
    return bool(trial.user_attrs.get(SURPLUS_ATTR))


def is_retry(trial) -> bool:
    """Whether a (frozen) trial is the queued copy of a failed one."""
    return "failed_trial" in trial.system_attrs


def retried_numbers(trials) -> set:
    out = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
    return out


def budget_left(study, budget: int) -> int:
    """Trials still to start: ``budget`` minus the trials begun (a retry of a killed trial is not a new one;
    surplus trials do not count), plus retries waiting in the queue."""
    optuna = require_optuna()
    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    begun = [t for t in trials if not is_surplus(t) and not is_retry(t) and t.state != S.WAITING]
    waiting = [t for t in trials if t.state == S.WAITING]
    return max(budget - len(begun), 0) + len(waiting)


def duplicate_of(study, trial, params: Mapping[str, Any]) -> Optional[int]:
    """The number of an EARLIER trial that ran (or runs) the same grid point, if any. A failed trial that was
    queued again, and the queued copy itself, do not count. Only earlier trials count, so when two workers
    draw the same point at once the first keeps it and the second is surplus (each seeing the other's trial
    made both surplus, and the point never ran)."""
    optuna = require_optuna()
    S = optuna.trial.TrialState
    if is_retry(study._storage.get_trial(trial._trial_id)):
        return None
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for t in trials:
        if t.number >= trial.number or is_surplus(t) or t.state == S.WAITING:
            continue
        if t.state == S.FAIL and t.number in retried:
            continue
        if dict(t.params) == dict(params):
            return t.number
    return None


def tell(study, trial, value: Optional[float] = None, state=None) -> None:
    """``study.tell`` that tolerates GridSampler stopping the study outside ``optimize`` (the trial's
    state is stored before that RuntimeError; the workers stop on an empty queue anyway)."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
