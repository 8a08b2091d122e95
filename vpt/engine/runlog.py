"""Run-folder logging: ``train.log``, progress bars (TTY and rank 0 only) and optional TensorBoard."""
from __future__ import annotations

import logging
import sys
from typing import Any, Iterable, Optional

_logger = logging.getLogger(__name__)


def attach_file_log(path: str, level: int = logging.INFO) -> logging.Handler:
    """Copy the ``vpt`` loggers into ``path`` (appending, so a resumed run keeps its history)."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("vpt")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    return handler


def detach_file_log(handler: Optional[logging.Handler]) -> None:
    if handler is not None:
        logging.getLogger("vpt").removeHandler(handler)
        handler.close()


def progress(iterable: Iterable, enabled: Optional[bool], is_main: bool, **kwargs: Any):
    """tqdm over ``iterable`` when enabled (None: only on a TTY) and on rank 0; the plain iterable otherwise."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not (enabled and is_main):
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


def tensorboard_writer(log_dir: str):
    """A torch SummaryWriter; a clear ImportError when tensorboard isn't installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("output.tensorboard: true needs the tensorboard package: pip install tensorboard "
                          "(or pip install 'vpt[tensorboard]'), or set output.tensorboard: false") from None
    return SummaryWriter(log_dir=log_dir)
