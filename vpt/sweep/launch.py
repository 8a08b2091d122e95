"""``python -m vpt.sweep.launch PARENT_PID TORCHRUN_ARGS...``: torch's launcher (``torch.distributed.run``),
run in a process that dies with the sweep worker that started it.

The process first asks the kernel for SIGTERM when its parent thread dies, even by SIGKILL (Linux
``prctl(PR_SET_PDEATHSIG)``), and exits if that parent is already gone (it died between the fork and the
prctl); then it runs torch's launcher in itself, which passes the SIGTERM on to the trial's ranks. Doing this
here, after exec, instead of in a ``preexec_fn`` keeps Python code out of the forked child of a worker that
runs threads (its trial heartbeat), where the subprocess docs warn it can deadlock. The module it runs is
always torch's launcher: nothing on the command line chooses code.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys

LAUNCHER = "torch.distributed.run"


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM to this process when its parent thread dies (Linux); exit now if the parent is gone already."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None
        if prctl is not None:
            pr_set_pdeathsig = 1
            prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != parent_pid:  # the worker died before the prctl: nobody waits for this job
        raise SystemExit(f"vpt sweep: the worker (pid {parent_pid}) that started this trial job is gone")


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        raise SystemExit(f"usage: python -m vpt.sweep.launch PARENT_PID TORCHRUN_ARGS... (started by vpt sweep "
                         f"--nproc-per-trial, not by hand)")
    die_with_parent(int(sys.argv[1]))
    sys.argv = [LAUNCHER, *sys.argv[2:]]
    runpy.run_module(LAUNCHER, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
