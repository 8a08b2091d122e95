"""The ONE training loop, for every task: honest selection (best epoch on val only, test once at the end),
DDP under torchrun, AMP (a GradScaler for float16), gradient accumulation and clipping, a per-step schedule,
atomic checkpoints and exact resume, logging, progress bars, metrics.csv, results.json and callbacks.

What is learned comes from a :class:`vpt.engine.task.Task`; this file imports none.

Equivalences the tests hold us to:
- ``torchrun --nproc_per_node=N`` == one process with the same ``train.batch_size`` (see ``sampler.py``)
  for tasks whose loss is a sum over samples; metrics agree up to float summation order (documented
  tolerance: weights within 1e-4, top-1 within one sample, with prompt/head dropout 0).
- a run killed anywhere and resumed == the uninterrupted run, exactly: sampling order, augmentation
  and dropout are seeded by (seed, epoch[, sample]), and the run state holds everything else.
- an epoch means one thing: ``epoch`` in the run state counts the epochs finished, metrics.csv and the
  logs number them from 1.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..config import to_dict
from ..errors import ConfigError, DivergenceError, ResumeError, RunDirError
from ..io import atomic_write_json, atomic_write_text
from .build import autocast, count_parameters
from .checkpoint import (STATE_NAME, load_run_state, load_trainable_tensors, save_artifact_atomic, save_run_state,
                         trainable_tensors)
from .config import validate_sections
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, resolve_device
from .metrics import MetricsWriter
from .optim import build_optimizer_and_scheduler
from .rundir import check_run_dir, holds_run, prepare_run_dir
from .runlog import attach_file_log, detach_file_log, progress, tensorboard_writer
from .sampler import GlobalBatchSampler
from .speedups import choose_compiled, convert_fp8, fp8_refusal
from .seed import rng_state, seed_everything, set_rng_state
from .task import Callback, CallbackList, Task

_logger = logging.getLogger(__name__)


def package_version(pkg: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def versions() -> Dict[str, Optional[str]]:
    from ..version import __version__, source_commit
    out: Dict[str, Optional[str]] = {"vpt": __version__, "vpt_commit": source_commit(),
                                     "python": platform.python_version(), "torch": torch.__version__}
    out.update({pkg: package_version(pkg) for pkg in ("timm", "open_clip_torch", "torchvision", "albumentations")})
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def config_yaml(cfg: Any) -> str:
    import yaml
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _diff(old: Any, new: Any, where: str) -> List[str]:
    """'where.key: old -> new' for every leaf that differs between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: List[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k), new.get(k), f"{where}.{k}")
        return out
    return [] if old == new else [f"{where}: {old!r} in the run, {new!r} now"]


class LogBuffer(logging.Handler):
    """Holds the ``vpt`` log records of a run until its folder is claimed, then copies them into train.log:
    the folder is written only once the run can start, and its log still begins with the first line."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self.active = False

    @classmethod
    def start(cls) -> "LogBuffer":
        buf = cls()
        root = logging.getLogger("vpt")
        root.addHandler(buf)
        if root.level == logging.NOTSET or root.level > logging.INFO:  # as attach_file_log: train.log gets INFO
            root.setLevel(logging.INFO)
        buf.active = True
        return buf

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def replay(self, handler: logging.Handler) -> None:
        for record in self.records:
            if record.levelno >= handler.level:
                handler.handle(record)
        self.stop()

    def stop(self) -> None:
        if self.active:
            logging.getLogger("vpt").removeHandler(self)
            self.active = False
        self.records = []


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2 ** 63)


class Trainer:
    """One run of one task. ``run()`` returns the results dict written to ``results.json``.

    Attributes a task or callback may read: ``cfg``, ``task``, ``info`` (rank, world size), ``device``,
    ``model`` (unwrapped), ``net`` (what trains: DDP / compiled), ``optimizer``, ``epoch`` (0-based, current),
    ``steps_per_epoch``, ``run_dir``.
    """

    def __init__(self, task: Task, info: Optional[DistInfo] = None, resume: bool = False, overwrite: bool = False,
                 callbacks: Sequence[Callback] = (), command: Optional[str] = None,
                 log_buffer: Optional[LogBuffer] = None):
        self.log_buffer = log_buffer
        self.task, self.cfg = task, task.cfg
        validate_sections(self.cfg)
        task.validate()
        self.info = info or DistInfo(device=resolve_device(self.cfg.train.device))
        self.resume, self.overwrite, self.command = resume, overwrite, command
        self.callbacks = CallbackList(callbacks)
        self.run_dir = self.cfg.output.dir
        self.device = self.info.device
        self.epoch = 0
        self.stop_reason: Optional[str] = None

    def request_stop(self, reason: str) -> None:
        """End the run cleanly after the current epoch (selection and the final test still happen)."""
        self.stop_reason = reason

    # --- setup ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, info, t = self.cfg, self.info, self.cfg.train
        if t.fp8:
            refusal = fp8_refusal(self.device)
            if refusal:
                raise ConfigError(refusal)
        if t.batch_size % (info.world_size * t.grad_accum_steps):
            _logger.warning("train.batch_size %d is not a multiple of ranks x grad_accum_steps (%d); micro-batches "
                            "differ in size by one", t.batch_size, info.world_size * t.grad_accum_steps)
        # check the run folder on every rank (read-only); it is claimed only once everything below succeeded
        if not info.is_main:
            if self.resume and not holds_run(self.run_dir):
                raise RunDirError(f"--resume: {self.run_dir!r} holds no run to resume")
        else:
            check_run_dir(self.run_dir, resume=self.resume, overwrite=self.overwrite)
        seed_everything(t.seed, t.deterministic)
        self.task.setup(self)
        seed_everything(t.seed, t.deterministic)  # the model's init does not depend on how the data was read
        self.model = self.task.build_model(self).to(self.device)
        if t.init_from and not self.resume:
            self.task.load_init(self, self.model, t.init_from)
        elif not self.resume and any(getattr(m, "pending_data_init", False) for m in self.model.modules()):
            raise ConfigError(f"prompt init 'data' draws the prompts from training images, and task "
                              f"{self.task.name!r} does not draw them; use init xavier_uniform or patch_embed")
        self.fp8 = convert_fp8(self.model) if t.fp8 else None
        self.params = count_parameters(self.model)
        _logger.info("trainable params: %d || all params: %d || trainable%%: %.4f", self.params["trainable"],
                     self.params["total"], self.params["trainable_percent"])
        self.train_ds = self.task.train_dataset(self)
        if len(self.train_ds) == 0:
            raise ConfigError(f"task {self.task.name!r} has no training samples")
        self.sampler = GlobalBatchSampler(len(self.train_ds), t.batch_size, info.world_size, info.rank,
                                          t.grad_accum_steps, seed=t.seed, drop_last=self.task.drop_last)
        self.steps_per_epoch = self.sampler.steps()
        if self.steps_per_epoch < 1:
            raise ConfigError(f"train.batch_size {t.batch_size} is larger than the {len(self.train_ds)} training "
                              f"samples and task {self.task.name!r} uses whole batches only; lower train.batch_size")
        built = self.task.build_optimizer(self)
        self.own_schedule = built is not None
        self.optimizer, self.scheduler, self.lr = built if built is not None else build_optimizer_and_scheduler(
            self.model, cfg.optim, cfg.sched, t.batch_size, self.steps_per_epoch, t.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type) if t.amp_dtype == "float16" else None

        if self.resume:  # read-only checks of the saved state first: a refused resume writes nothing
            self._check_state(load_run_state(os.path.join(self.run_dir, STATE_NAME)))
        # the run can start: claim the folder (rank 0), then copy what was logged so far into its train.log
        if info.is_main:
            self.run_lock = prepare_run_dir(self.run_dir, resume=self.resume, overwrite=self.overwrite,
                                            command=self.command or "")
        barrier()
        self.log_handler = attach_file_log(os.path.join(self.run_dir, "train.log")) if info.is_main else None
        if self.log_handler is not None:
            self.log_buffer.replay(self.log_handler)
        self.log_buffer.stop()

        self.start_epoch, self.best = 0, {"epoch": -1, "score": -math.inf, "val": None}
        self.best_tensors: Optional[Dict[str, torch.Tensor]] = None
        if self.resume:
            self._load_state()
        elif info.is_main:
            self._save_state(0)  # a run killed in its first epoch resumes from its start
        self.net = self.model
        if info.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.find_unused_parameters)
        self.net_eager, self.compile_choice = self.net, None
        if t.compile:
            self.net = torch.compile(self.net)  # kept only if faster (_choose_compiled, on the first batch)
        self.metrics = self.tb = None
        if info.is_main:
            atomic_write_text(os.path.join(self.run_dir, "config.yaml"), config_yaml(cfg))
            self.metrics = MetricsWriter(os.path.join(self.run_dir, "metrics.csv"),
                                         keep_before_epoch=self.start_epoch + 1 if self.resume else None)
            self.tb = tensorboard_writer(os.path.join(self.run_dir, "tb")) if cfg.output.tensorboard else None

    def _check_state(self, state: Dict[str, Any]) -> None:
        """What a resume must keep: the model config, the data, and the learning rate of every step taken."""
        self._check_fingerprint(state.get("fingerprint"))
        self._check_epochs(state["epoch"])

    def _check_epochs(self, done: int) -> None:
        """``train.epochs`` may change on resume only where the steps already taken had the same learning
        rate under the new total (a constant schedule, or a cosine whose finished epochs were all warmup):
        then the run continues to the new total and config.yaml says so; otherwise it is refused."""
        import yaml
        t = self.cfg.train
        try:
            with open(os.path.join(self.run_dir, "config.yaml"), encoding="utf-8") as f:
                was = int(yaml.safe_load(f)["train"]["epochs"])
        except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
            return  # no readable config.yaml (a library run): nothing to compare with
        if was == t.epochs:
            return
        fix = (f"resume with the run's {was} epochs (drop --epochs), or start a new run from this run's best model: "
               f"--init-from {os.path.join(self.run_dir, 'best')} --epochs {t.epochs} and another --output")
        if t.epochs < done:
            raise ResumeError(f"--resume: train.epochs {t.epochs} but the run already finished {done} epochs; {fix}")
        if not self._same_schedule(was, t.epochs, done * self.steps_per_epoch):
            raise ResumeError(
                f"--resume: train.epochs {was} in the run, {t.epochs} now; the {done} finished epoch"
                f"{'s' if done != 1 else ''} followed a {self.cfg.sched.sched} schedule that depends on the total, so "
                f"the result would match neither config; {fix}")
        _logger.info("--resume: train.epochs %d -> %d; the %d finished epochs ran the same learning rates under "
                     "both totals, so the run continues to %d epochs (config.yaml and results.json say %d)", was,
                     t.epochs, done, t.epochs, t.epochs)

    def _same_schedule(self, old_epochs: int, new_epochs: int, steps: int) -> bool:
        """Whether the first ``steps`` learning rates are equal for both epoch totals (False when the task
        builds its own scheduler: it can't be recomputed here)."""
        if self.own_schedule:
            return False
        from .optim import build_scheduler

        def factors(epochs: int) -> List[float]:
            opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            fn = build_scheduler(opt, self.cfg.sched, self.steps_per_epoch, epochs, float(self.lr)).lr_lambdas[0]
            return [fn(s) for s in range(steps)]
        return factors(old_epochs) == factors(new_epochs)

    def _load_state(self) -> None:
        state = load_run_state(os.path.join(self.run_dir, STATE_NAME))
        self._check_state(state)
        load_trainable_tensors(self.model, state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.best, self.best_tensors = state["epoch"], state["best"], state["best_tensors"]
        self.callbacks.load_state_dict(state.get("callbacks") or {})
        self.task.load_state_dict(self, state.get("task_state") or {})
        set_rng_state(state["rng"])
        _logger.info("resumed %s after epoch %d (best so far: epoch %d)", self.run_dir, self.start_epoch,
                     self.best["epoch"] + 1)

    def _save_state(self, epochs_done: int) -> None:
        save_run_state(os.path.join(self.run_dir, STATE_NAME), {
            "task": self.task.name, "epoch": epochs_done, "trainable": trainable_tensors(self.model),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None, "best": self.best,
            "best_tensors": self.best_tensors, "rng": rng_state(), "callbacks": self.callbacks.state_dict(),
            "task_state": self.task.state_dict(self),
            "fingerprint": self._fingerprint(),
        })

    def _fingerprint(self) -> Dict[str, Any]:
        """What a resume must not change: the model config and the training data (the task's digest)."""
        model = getattr(self.cfg, "model", None)
        return {"model": to_dict(model) if model is not None else None, "data": self.task.data_fingerprint()}

    def _check_fingerprint(self, saved: Optional[Dict[str, Any]]) -> None:
        if not saved:
            return  # a state written before fingerprints existed
        now = self._fingerprint()
        diffs = _diff(saved.get("model"), now["model"], "model")
        if diffs:
            raise ResumeError(f"--resume: the model config differs from the run's: {'; '.join(diffs[:5])}; resume "
                              f"with the run's own config (drop the flags / --set that change it) or start a new "
                              f"run with --overwrite or another --output")
        old, new = saved.get("data"), now["data"]
        if old and new and old.get("sha256") != new.get("sha256"):
            counts = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in ("classes", "train", "val", "test")
                               if old.get(k) != new.get(k)) or "same counts, other files or labels"
            raise ResumeError(f"--resume: the data differs from the run's ({counts}; run: {old.get('root')}, "
                              f"now: {new.get('root')}); resume with the run's data (--data {old.get('root')}) or "
                              f"start a new run with --overwrite or another --output")

    # --- one epoch --------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> Dict[str, Any]:
        t, info = self.cfg.train, self.info
        self.sampler.set_epoch(epoch)
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(t.seed, epoch, info.rank))  # dropout etc.
        global_sizes = [len(b) for b in self.sampler.global_batches()]
        loader = torch.utils.data.DataLoader(self.train_ds, batch_sampler=self.sampler, num_workers=t.workers,
                                             collate_fn=self.task.collate, pin_memory=self.device.type == "cuda")
        it = iter(loader)
        self.net.train()
        # running sums stay on the device: no host sync per step (read at log steps and at the end)
        loss_t = torch.zeros((), dtype=torch.float64, device=self.device)
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        sums: Dict[str, torch.Tensor] = {}
        totals: Dict[str, torch.Tensor] = {}
        count = 0.0
        # divergence guard, on the device: the first non-finite step and its value, read at log steps only
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_value = torch.zeros((), dtype=torch.float64, device=self.device)
        self._bad_what = torch.zeros((), dtype=torch.long, device=self.device)  # 1: loss, 2: gradient norm
        start = time.perf_counter()
        steps = progress(range(self.steps_per_epoch), t.progress, info.is_main, desc=f"epoch {epoch + 1}")
        for step in steps:
            scale = info.world_size / global_sizes[step]  # DDP averages over ranks; we want the global mean
            step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
            for a in range(t.grad_accum_steps):
                batch = next(it)
                if t.compile and self.compile_choice is None:
                    self._choose_compiled(batch)
                sync = (a == t.grad_accum_steps - 1 or not info.distributed)
                with (contextlib.nullcontext() if sync else self.net.no_sync()):
                    with autocast(self.device, t.amp_dtype):
                        out = self.task.train_step(self, self.net, batch)
                    scaled = out.loss.float() * scale
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                step_loss += out.loss.detach().double()
                for store, values in ((sums, out.sums), (totals, out.totals)):
                    for k, v in values.items():
                        store[k] = store.get(k, zero) + v.detach().double()
                count += out.count
            gstep = epoch * self.steps_per_epoch + step + 1
            self._optimizer_step()
            # the loss per step; the gradients' effect is checked on the weights at the epoch end (a per-step
            # gradient-norm check flagged models trained side by side whose NaN gradients never reach a weight)
            self._flag_non_finite(gstep, step_loss, None)
            loss_t += step_loss
            if t.log_interval and (step + 1) % t.log_interval == 0:
                self._check_divergence(epoch)
                if info.is_main:
                    _logger.info("epoch %d step %d/%d loss %.4f lr %.4g", epoch + 1, step + 1, self.steps_per_epoch,
                                 loss_t.item() / max(count, 1), self.optimizer.param_groups[0]["lr"])
            self.callbacks.on_step_end(self, gstep, step_loss)
        self._check_divergence(epoch, weights=True)
        mean_keys, total_keys = sorted(sums), sorted(totals)
        local = [loss_t.item(), count, *(sums[k].item() for k in mean_keys), *(totals[k].item() for k in total_keys)]
        reduced = all_reduce_sum(local, self.device)
        loss_sum, count = reduced[0], reduced[1]
        elapsed = time.perf_counter() - start
        row: Dict[str, Any] = {"train_loss": loss_sum / max(count, 1)}
        row.update({f"train_{k}": v / max(count, 1) for k, v in zip(mean_keys, reduced[2:])})
        row["train_images_per_second"] = count / elapsed if elapsed > 0 else float("nan")
        row.update({f"train_{k}": int(v) for k, v in zip(total_keys, reduced[2 + len(mean_keys):])})
        row["epoch_seconds"] = elapsed
        self.task.train_epoch_end(self, epoch + 1, row)
        return row

    def _choose_compiled(self, batch: Any) -> None:
        """train.compile: keep the compiled forward only if its step is faster than eager on this batch (timed
        with gradients discarded and random state and buffers restored); rank 0's choice holds on every rank."""
        def step(net):
            def run():
                with autocast(self.device, self.cfg.train.amp_dtype):
                    out = self.task.train_step(self, net, batch)
                out.loss.float().backward()
            return run
        choice = choose_compiled(step(self.net_eager), step(self.net), self.model, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        self.compile_choice = choice = broadcast_object(choice)
        if not choice["used"]:
            self.net = self.net_eager
        if self.info.is_main:
            _logger.info("train.compile: %s", choice["reason"])

    def _optimizer_step(self) -> Optional[torch.Tensor]:
        """One optimizer step; returns the gradient norm (a device tensor) to check, or None under the fp16
        GradScaler, whose skipped steps (inf gradients from a too-large scale) are expected, not divergence."""
        clip = self.cfg.optim.clip_grad
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = None
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            self.scheduler.step()
        else:
            # The schedule counts attempted steps, skipped ones included: knowing whether the scaler skipped
            # would cost a host sync per step, and a few skipped steps early in a run shift the schedule by as
            # many steps. torch warns about exactly this case ("lr_scheduler.step() before optimizer.step()").
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()
        return norm

    # --- divergence guard ---------------------------------------------------------------------------
    def _flag_non_finite(self, gstep: int, loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> None:
        """Remember the first step whose loss or gradient norm is not finite; device ops only, no sync."""
        bad_loss = ~torch.isfinite(loss)
        bad = bad_loss if grad_norm is None else bad_loss | ~torch.isfinite(grad_norm)
        first = bad & (self._bad_step < 0)
        value = loss if grad_norm is None else torch.where(bad_loss, loss, grad_norm.double())
        self._bad_step.copy_(torch.where(first, torch.full_like(self._bad_step, gstep), self._bad_step))
        self._bad_value.copy_(torch.where(first, value.double(), self._bad_value))
        self._bad_what.copy_(torch.where(first, torch.where(bad_loss, 1, 2), self._bad_what))

    def _check_divergence(self, epoch: int, weights: bool = False) -> None:
        """Read the flags (at log steps and at the end of the epoch: the only host syncs) on every rank; with
        ``weights``, also check the trainable tensors. On divergence: stop with a DivergenceError. Nothing
        of this epoch is saved: run_state.pt keeps the last finished epoch and best/ only finite models."""
        if self.task.handles_divergence:
            return
        bad_weights = 0.0
        if weights:
            finite = [torch.isfinite(p).all() for p in self.model.parameters() if p.requires_grad]
            bad_weights = float(not bool(torch.stack(finite).all())) if finite else 0.0
        step = int(self._bad_step.item())
        found = all_reduce_sum([float(step >= 0), bad_weights], self.device)
        if not found[0] and not found[1]:
            return
        o = self.cfg.optim
        lr = float(self.lr)  # the run's learning rate (after warmup), not the step's
        if step >= 0:
            what = "training loss" if int(self._bad_what.item()) == 1 else "gradient norm"
            where = f"at step {step} (epoch {epoch + 1}): {what} = {self._bad_value.item()}"
        elif found[0]:
            where = f"in epoch {epoch + 1} on another rank"
        else:
            where = f"in epoch {epoch + 1}: a trainable weight became non-finite"
        fix = (f"lower the learning rate (optim.lr is {lr:.3g}; try --lr {lr / 10:.3g})"
               + ("" if o.clip_grad else " or clip gradients (--set optim.clip_grad=1.0)")
               + " and start again with --overwrite")
        done = f"epoch {epoch}" if epoch else "the start (no epoch finished)"
        raise DivergenceError(f"training diverged {where}; {fix}. Nothing non-finite was saved: "
                              f"{os.path.join(self.run_dir, STATE_NAME)} holds {done} and best/ only finite models")

    # --- the run ----------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        if self.log_buffer is None:
            self.log_buffer = LogBuffer.start()
        try:
            self._setup()
            return self._run()
        finally:
            self.log_buffer.stop()
            if getattr(self, "run_lock", None) is not None:
                self.run_lock.release()
            detach_file_log(getattr(self, "log_handler", None))
            if getattr(self, "tb", None) is not None:
                self.tb.close()

    def _keep_best(self, epoch: int, val: Optional[Dict[str, Any]]) -> None:
        self.best = {"epoch": epoch, "score": val[self.task.selection] if val else float("nan"),
                     "val": self.task.brief(val)}
        self.best_tensors = trainable_tensors(self.model)
        if self.info.is_main:
            save_artifact_atomic(self.model, os.path.join(self.run_dir, "best"))

    def _run(self) -> Dict[str, Any]:
        cfg, t, info, task = self.cfg, self.cfg.train, self.info, self.task
        if self.start_epoch >= t.epochs:
            _logger.info("the run already finished its %d epochs; writing results again", t.epochs)
        self.callbacks.on_train_start(self)
        self.train_ips: List[float] = []
        has_val = task.has_split("val")
        for epoch in range(self.start_epoch, t.epochs):
            self.epoch = epoch
            row: Dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self._train_epoch(epoch))
            self.train_ips.append(row["train_images_per_second"])
            last = epoch == t.epochs - 1
            if has_val and ((epoch + 1) % t.eval_every == 0 or last or self.stop_reason):
                val = task.evaluate(self, self.model, "val")
                row.update(task.epoch_columns(val))
                if val[task.selection] > self.best["score"]:
                    self._keep_best(epoch, val)
            elif not has_val:
                self._keep_best(epoch, None)
            val_col = f"val_{task.selection}"
            _logger.info("epoch %d/%d: train loss %.4f%s (%.1fs)", epoch + 1, t.epochs, row["train_loss"],
                         f", val {task.selection} {row[val_col]:.4g}" if val_col in row else "", row["epoch_seconds"])
            self.callbacks.on_epoch_end(self, epoch + 1, row)
            if info.is_main:
                if cfg.output.save_last:
                    save_artifact_atomic(self.model, os.path.join(self.run_dir, "last"))
                self.metrics.write(row)
                if self.tb is not None:
                    for k, v in row.items():
                        if k != "epoch":
                            self.tb.add_scalar(k, v, epoch + 1)
                self._save_state(epoch + 1)
            barrier()
            if self.stop_reason:
                _logger.warning("stopping after epoch %d: %s", epoch + 1, self.stop_reason)
                break
        return self._finish()

    def _finish(self) -> Dict[str, Any]:
        train_ips = self.train_ips
        cfg, info, task = self.cfg, self.info, self.task
        # the test set is seen exactly once, by the epoch chosen on val
        if self.best_tensors is not None:
            load_trainable_tensors(self.model, self.best_tensors)
        test = task.evaluate(self, self.model, "test") if task.has_split("test") else None
        results: Dict[str, Any] = {"task": task.name}
        if self.command:
            results["command"] = self.command
        results.update({
            "selection": f"best val {task.selection_label or task.selection}" if task.has_split("val") else "last epoch (no val split)",
            "best_epoch": self.best["epoch"] + 1,
            "val": self.best["val"],
            "test": task.brief(test),
            "trainable_params": self.params["trainable"],
            "total_params": self.params["total"],
            "throughput": {"train_images_per_second": (sum(train_ips) / len(train_ips)) if train_ips else None,
                           "eval_images_per_second": test.get("images_per_second") if test else None},
        })
        if self.compile_choice is not None:
            results["compile"] = self.compile_choice
        if self.fp8 is not None:
            results["fp8"] = self.fp8
        results.update(task.results(self, self.model))  # may refine the keys below (e.g. more versions)
        if self.stop_reason:
            results["stopped"] = self.stop_reason
        for k, v in (("world_size", info.world_size), ("device", device_name(self.device)),
                     ("versions", versions()), ("config", to_dict(cfg))):
            results.setdefault(k, v)
        if info.is_main:
            atomic_write_json(os.path.join(self.run_dir, "results.json"), results)
            task.finish(self, results)
        results = broadcast_object(results)
        self.callbacks.on_train_end(self, results)
        return results


def train(task: Task, info: Optional[DistInfo] = None, resume: bool = False, overwrite: bool = False,
          callbacks: Sequence[Callback] = (), command: Optional[str] = None,
          log_buffer: Optional[LogBuffer] = None) -> Dict[str, Any]:
    """Run ``task`` (built from its run config) end to end; returns the results (also in results.json).
    ``log_buffer``: records logged before the call, to copy into the run's train.log (the CLI's recipe line)."""
    return Trainer(task, info, resume=resume, overwrite=overwrite, callbacks=callbacks, command=command,
                   log_buffer=log_buffer).run()
