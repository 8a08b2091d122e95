"""The engine: ONE training loop for every task (``Trainer``; tasks plug in as ``Task`` subclasses), run
configs' shared sections, optimizers / schedules, checkpoints / resume, torchrun (DDP), sharded inference
and run-folder logging. Nothing here knows a task (tasks live in ``vpt.tasks``).

- the loop: ``Trainer``, ``train``, ``Task``, ``StepOutput``, ``Callback``
- config sections: ``OptimSection``, ``SchedSection``, ``TrainSection``, ``OutputSection``, ``validate_sections``
- ``build_optimizer``, ``build_scheduler``, ``build_optimizer_and_scheduler``, ``resolve_lr``, ``param_groups``
- ``seed_everything``, ``rng_state``, ``set_rng_state``
- ``save_run_state``, ``load_run_state``, ``save_artifact_atomic``, ``trainable_tensors``, ``load_trainable_tensors``
- ``init_distributed``, ``teardown_distributed``, ``DistInfo``, ``all_gather_objects``, ``all_reduce_sum``,
  ``GlobalBatchSampler``, ``ShardSampler``, ``run_sharded``
- ``MetricsWriter``, ``prepare_run_dir``, ``attach_file_log``, ``progress``, ``tensorboard_writer``, ``autocast``
"""
from ..errors import ResumeError, RunDirError
from .build import autocast, count_parameters, memory_format
from .checkpoint import load_run_state, load_trainable_tensors, save_artifact_atomic, save_run_state, trainable_tensors
from .config import OptimSection, OutputSection, SchedSection, TrainSection, amp_dtype_name, validate_sections
from .distributed import (DistInfo, all_gather_objects, all_reduce_sum, barrier, init_distributed, resolve_device,
                          teardown_distributed)
from .inference import run_sharded
from .metrics import MetricsWriter
from .optim import build_optimizer, build_optimizer_and_scheduler, build_scheduler, param_groups, resolve_lr
from .rundir import holds_run, prepare_run_dir
from .runlog import attach_file_log, detach_file_log, progress, tensorboard_writer
from .sampler import GlobalBatchSampler, ShardSampler
from .seed import rng_state, seed_everything, set_rng_state
from .task import Callback, StepOutput, Task
from .trainer import Trainer, train

__all__ = [n for n in dir() if not n.startswith("_")]
