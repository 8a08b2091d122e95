"""What the engine needs from a task, and what a callback may do. The engine imports no task: a task is a
subclass of :class:`Task` in one file, registered with ``@TASKS.register(name)`` (``vpt.registry``).

The engine owns the loop (DDP, AMP, accumulation, clipping, schedule, checkpoints / resume, logging,
selection on val, the final test, results.json); the task owns everything that depends on what is
learned: its run config, the data, the model, the loss of one micro-batch and the metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError

# The ``run`` every hook receives is the engine's :class:`vpt.engine.trainer.Trainer` (its ``cfg``, ``device``,
# ``info``, ``run_dir``, ``model`` ...). Named, not imported: the trainer imports this file, and the import graph
# has no cycles (tests/test_layering.py).
Run = Any


@dataclass
class StepOutput:
    """One micro-batch's result. ``loss`` is the SUM over its samples (the engine divides by the global
    batch size, so N ranks x k micro-steps equal one process); ``count`` the samples it covered;
    ``sums`` extra per-sample sums reported per epoch as their mean ``train_<name>`` (e.g. correct
    predictions x 100 -> train_top1); ``totals`` counts reported as epoch totals (e.g. skipped images).
    Everything stays on the device: the engine reads it once per log interval and per epoch."""
    loss: torch.Tensor
    count: int
    sums: Dict[str, torch.Tensor] = field(default_factory=dict)
    totals: Dict[str, torch.Tensor] = field(default_factory=dict)


class Task:
    """Base class of a task. Override what differs; the docstrings say when the engine calls each hook."""

    name: str = ""  # registry key, also results.json's "task"
    config_cls: type = type(None)  # the run config dataclass: sections optim, sched, train, output + the task's own
    selection: str = "top1"  # val metric that picks the best epoch (higher is better)
    selection_label: str = ""  # how results.json names it ("best val <label>"); default: ``selection``
    find_unused_parameters: bool = False  # DDP: True when some trainable tensors may get no gradient in a step
    handles_divergence: bool = False  # True: the task watches for non-finite losses and weights itself (e.g. one
    #                                   that trains several independent models and stops only the diverged ones);
    #                                   the engine's divergence guard then stays out
    drop_last: bool = False  # True: every training batch is a whole train.batch_size (the epoch's rest is skipped)
    field_aliases: Dict[str, str] = {}  # a shared option's dotted field -> where this task's config keeps it

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # --- setup ----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the task's own config sections (the engine checks train / optim / sched)."""

    def setup(self, run: Run) -> None:
        """Read the data (every rank, after the run folder is ready). ``run.info`` / ``run.device`` are set."""

    def build_model(self, run: Run) -> nn.Module:
        """The model to train, with ``save_pretrained`` and ``param_roles`` (``vpt.model.AdapterMixin``)."""
        raise NotImplementedError

    def load_init(self, run: Run, model: nn.Module, path: str) -> None:
        """``train.init_from``: start this new run from the trainable tensors of the artifact at ``path``
        (a task whose models are saved as vpt artifacts calls ``vpt.artifact.init_from_artifact``)."""
        raise ConfigError(f"task {self.name!r} cannot start from an artifact (train.init_from); drop --init-from")

    def train_dataset(self, run: Run) -> torch.utils.data.Dataset:
        """The training samples; ``set_epoch(epoch)`` is called on it each epoch when it has one."""
        raise NotImplementedError

    def build_optimizer(self, run: Run) -> Optional[Tuple[torch.optim.Optimizer, Any, float]]:
        """(optimizer, per-step scheduler, peak lr) when the task builds its own (e.g. several independent models
        trained at once, each with its own parameter groups, lr and schedule); None: the engine's
        ``build_optimizer_and_scheduler`` from optim / sched."""
        return None

    def collate(self, batch: List[Any]) -> Any:
        return torch.utils.data.default_collate(batch)

    def data_fingerprint(self) -> Optional[Dict[str, Any]]:
        """What identifies the training data (counts and a digest of the sample list), saved with the run
        state so that ``--resume`` on other data is refused, naming what differs; None: not checked."""
        return None

    def has_split(self, split: str) -> bool:
        """Whether ``val`` / ``test`` data exist (no val: the last epoch is kept; no test: no final test)."""
        return False

    # --- the loop -------------------------------------------------------------------------------
    def train_step(self, run: Run, net: nn.Module, batch: Any) -> StepOutput:
        """Forward one micro-batch through ``net`` (DDP / compiled wrapper; autocast is on) and return the
        summed loss. Under DDP every rank must run ``net`` on every micro-step, also when its share of the
        batch is empty: return the loss of a dummy forward times 0 then (count 0)."""
        raise NotImplementedError

    def train_epoch_end(self, run: Run, epoch: int, row: Dict[str, Any]) -> None:
        """After the training part of ``epoch`` (1-based); ``row`` holds its train metrics (all ranks summed)."""

    def state_dict(self, run: Run) -> Dict[str, Any]:
        """What a resumed run needs besides the trainable tensors (e.g. a running prompt average); saved in the
        run state after every epoch (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, run: Run, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on ``--resume`` (after the model and trainable tensors are loaded)."""

    def evaluate(self, run: Run, model: nn.Module, split: str) -> Dict[str, Any]:
        """Metrics of ``model`` (unwrapped, eval mode handled by the task) on ``split`` ('val' | 'test'),
        the same on every rank; must include ``self.selection`` for val."""
        raise NotImplementedError

    def epoch_columns(self, val: Dict[str, Any]) -> Dict[str, float]:
        """The metrics.csv columns of an epoch's val metrics."""
        return {f"val_{self.selection}": val[self.selection]}

    def brief(self, metrics: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """What results.json keeps of val / test metrics."""
        return metrics

    def results(self, run: Run, model: nn.Module) -> Dict[str, Any]:
        """The task's own part of results.json (data summary, classes, backbone identity, ...)."""
        return {}

    def finish(self, run: Run, results: Dict[str, Any]) -> None:
        """On rank 0, after results.json was written: plots and the like, into ``run.run_dir``."""

    def summary(self, results: Dict[str, Any]) -> List[str]:
        """Lines that tell a person how the run went (the CLI prints them)."""
        return [f"best epoch: {results['best_epoch']} ({results['selection']})"]

    # --- a saved artifact (``vpt eval``) ------------------------------------------------------------
    def evaluate_artifact(self, model: nn.Module, split: str, device: torch.device) -> Dict[str, Any]:
        """Metrics of a loaded artifact on ``split`` of this config's data (train | val | test | all). Which
        task evaluates an artifact is named by its model class (``task = "<name>"``, ``vpt.Artifact.task``)."""
        raise NotImplementedError(f"task {self.name!r} cannot evaluate artifacts")

    def eval_summary(self, split: str, metrics: Dict[str, Any]) -> str:
        """One line for a person about ``evaluate_artifact``'s metrics."""
        return f"{split}: {self.selection} {metrics[self.selection]:.4g}"


class Callback:
    """Hooks into the loop, for features that are not tasks (kill switches in tests, divergence guards,
    a hyper-parameter search's pruning). Runs on every rank; ``run.info.is_main`` tells rank 0. To stop the run cleanly after the
    current epoch call ``run.request_stop(reason)``; to abort, raise (e.g. ``optuna.TrialPruned``)."""

    def on_train_start(self, run: Run) -> None:
        """After setup and resume, before the first epoch of this process."""

    def on_step_end(self, run: Run, step: int, loss: torch.Tensor) -> None:
        """After optimizer step ``step`` (global, 1-based). ``loss`` is the step's summed loss as a device
        tensor: reading it (``.item()``) syncs the host, so a guard should accumulate on the device (e.g.
        ``bad |= ~torch.isfinite(loss)``) and look at it in ``on_epoch_end``."""

    def on_epoch_end(self, run: Run, epoch: int, row: Dict[str, Any]) -> None:
        """After epoch ``epoch`` (1-based) was trained and evaluated, before its checkpoint: what a callback
        changes here (its state, a stop request) is in the run state; raising keeps the previous checkpoint.
        ``row`` is the epoch's metrics.csv row (train and, when evaluated, val metrics); it may add columns."""

    def on_train_end(self, run: Run, results: Dict[str, Any]) -> None:
        """After results.json was written."""

    def state_dict(self) -> Dict[str, Any]:
        """Saved in the run state, so a resumed run restores it (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class CallbackList(Callback):
    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.callbacks = list(callbacks)

    def _each(self, name: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            for cb in self.callbacks:
                getattr(cb, name)(*args)
        return call

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            return object.__getattribute__(self, "_each")(name)
        return object.__getattribute__(self, name)

    def state_dict(self) -> Dict[str, Any]:
        return {str(i): cb.state_dict() for i, cb in enumerate(self.callbacks)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for i, cb in enumerate(self.callbacks):
            if str(i) in state:
                cb.load_state_dict(state[str(i)])
