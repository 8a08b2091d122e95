"""Engine: run configs, optimizers / schedules, the train loop, evaluation, checkpoints / resume,
torchrun (DDP), metrics and run-folder logging. Reusable pieces for other tasks (detection, CLIP):

- configs: ``RunConfig`` and its sections, ``validate``
- ``build_optimizer``, ``build_scheduler``, ``build_optimizer_and_scheduler``, ``resolve_lr``, ``param_groups``
- ``seed_everything``, ``rng_state``, ``set_rng_state``
- ``save_run_state``, ``load_run_state``, ``save_artifact_atomic``, ``trainable_tensors``, ``load_trainable_tensors``
- ``init_distributed``, ``teardown_distributed``, ``DistInfo``, ``all_gather_objects``, ``all_reduce_sum``,
  ``GlobalBatchSampler``, ``ShardSampler``
- ``MetricsWriter``, ``classification_metrics``, ``draw_confusion_matrix``
- ``prepare_run_dir``, ``attach_file_log``, ``progress``, ``tensorboard_writer``, ``autocast``
"""
from .build import autocast, build_model, count_parameters
from .checkpoint import (ResumeError, load_run_state, load_trainable_tensors, save_artifact_atomic, save_run_state,
                         trainable_tensors, unwrap_model)
from .config import (AugmentSection, DataSection, ModelSection, OptimSection, OutputSection, RunConfig, SchedSection,
                     TrainSection, validate)
from .distributed import (DistInfo, all_gather_objects, all_reduce_sum, barrier, init_distributed, resolve_device,
                          teardown_distributed)
from .evaluate import evaluate, predict_logits
from .metrics import MetricsWriter, classification_metrics, draw_confusion_matrix, read_metrics_csv
from .optim import build_optimizer, build_optimizer_and_scheduler, build_scheduler, param_groups, resolve_lr
from .rundir import RunDirError, holds_run, prepare_run_dir
from .runlog import attach_file_log, detach_file_log, progress, tensorboard_writer
from .sampler import GlobalBatchSampler, ShardSampler
from .seed import rng_state, seed_everything, set_rng_state
from .trainer import Trainer, train

__all__ = [n for n in dir() if not n.startswith("_")]
