"""The run folder guard: one run per folder at a time, and only vpt's own files are ever touched.

- A folder is a vpt run when it holds the marker ``.vpt_run`` that `vpt train` writes first (runs written
  before the marker existed are recognised by ``config.yaml`` + ``run_state.pt``).
- A folder that exists, holds files and is not a run is refused, unless ``--overwrite``; even then a file or
  folder there with a name vpt writes (``best/``, ``metrics.csv``...) is refused: vpt never deletes or replaces
  a file it did not write. ``--overwrite`` on a run removes only the files vpt writes.
- An OS-level lock (``fcntl.flock`` on ``.vpt_run.lock``; ``filelock`` where fcntl is missing) is held for
  the run's life by rank 0: a second run on the folder is refused at once, naming the holder. The kernel
  drops the lock when its process dies, so a run killed with SIGKILL never blocks ``--resume``.
- A folder is claimed (created, marker written) only when the run can start: ``check_run_dir`` refuses what
  it can without writing, before the data is read and the model built; ``prepare_run_dir`` claims it after.
- A run that never finished an epoch (no metrics.csv row, no results.json) left nothing worth keeping: the
  next run there takes it over without --overwrite (its files are replaced, the takeover logged).
- Leftover temporary files of an interrupted write (``.NAME.*.tmp``, ``best.old``) are cleaned on start.
- Another vpt tool may claim a folder with the same marker (its own ``kind`` and a ``label`` naming the owner)
  and the same lock, held SHARED by its processes when they share the folder legitimately: a `vpt train`
  there is refused, by the lock while they run and by the marker afterwards.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from typing import List, Optional

from ..errors import RunDirError  # noqa: F401  (re-exported)

_logger = logging.getLogger(__name__)

MARKER = ".vpt_run"
LOCK = ".vpt_run.lock"
# files and folders `vpt train` writes; only these (and the marker, lock and temporary files) are ever removed
RUN_FILES = ("config.yaml", "run_state.pt", "results.json", "metrics.csv", "train.log", "best", "last",
             "confusion_matrix.png", "tb")
# ".NAME.*.tmp" (vpt.io.atomic_write); ".vpt_run.<pid>.tmp" is what a marker claim wrote before 2026-12-03
_TMP = re.compile(r"^\.(%s)\..+\.tmp$" % "|".join(re.escape(n) for n in RUN_FILES + (MARKER, MARKER[1:])))


def holds_run(path: str) -> bool:
    """True for a folder vpt wrote a run into (the marker, or an older run's config.yaml + run_state.pt)."""
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, MARKER)):
        return True
    return all(os.path.exists(os.path.join(path, f)) for f in ("config.yaml", "run_state.pt"))


def read_marker(path: str) -> dict:
    """The marker's content ({} for a folder without one, or an unreadable one); ``kind`` is "train" unless
    another vpt tool claimed the folder (its marker names its kind)."""
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        return {"kind": "train"} if holds_run(path) else {}
    data.setdefault("kind", "train")
    return data


def foreign_entries(path: str) -> List[str]:
    """Entries of a non-run folder, hidden lock / marker / our temporary files aside."""
    return sorted(e for e in os.listdir(path) if e not in (MARKER, LOCK) and not _TMP.match(e))


def clean_stale_tmp(path: str) -> int:
    """Remove what an interrupted atomic write leaves behind: ``.NAME.*.tmp`` files and folders of vpt's own
    names; a ``best.old`` / ``last.old`` is put back when its folder is missing (killed mid-swap), else removed."""
    n = 0
    for e in os.listdir(path):
        p = os.path.join(path, e)
        if _TMP.match(e):
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
            n += 1
        elif e in ("best.old", "last.old") and os.path.isdir(p):
            final = os.path.join(path, e[:-4])
            if os.path.exists(final):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, final)
            n += 1
    if n:
        _logger.info("%s: cleaned %d leftovers of an interrupted write", path, n)
    return n


class RunLock:
    """An exclusive OS lock on ``<run>/.vpt_run.lock`` for the life of a run; who holds it is written inside."""

    def __init__(self, path: str):
        self.path = os.path.join(path, LOCK)
        self._fd: Optional[int] = None
        self._filelock = None

    def acquire(self, command: str = "", shared: bool = False, kind: str = "train") -> "RunLock":
        """Take the lock, exclusive (a run) or shared (processes that share the folder, each naming ``kind``);
        refused at once when held in the other mode (or exclusively), naming the holder."""
        try:
            import fcntl
        except ImportError:  # not POSIX: the filelock package (a torch dependency) holds an OS lock too
            fcntl = None
        if fcntl is None and shared:  # filelock has no shared mode: the marker alone keeps other runs out
            _logger.info("no OS lock on %s: shared locks need fcntl (POSIX)", self.path)
            return self
        if fcntl is None:
            from filelock import FileLock, Timeout
            self._filelock = FileLock(self.path + ".os")
            try:
                self._filelock.acquire(timeout=0)
            except Timeout:
                raise RunDirError(self._busy_message()) from None
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunDirError(self._busy_message()) from None
            self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": command, "kind": kind}
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)
        else:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps(info) + "\n")
        return self

    def _busy_message(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as f:
                h = json.loads(f.read() or "{}")
            holder = f"process {h.get('pid')} on {h.get('host')}, started {h.get('started')}" + (
                f" ({h['command']})" if h.get("command") else "")
            kind = h.get("kind") or "train"
        except (OSError, ValueError, AttributeError):
            holder, kind = "another process", "train"
        folder = os.path.dirname(self.path)
        return (f"output folder {folder!r} is in use by a running vpt {kind}: {holder}. Wait for it to finish "
                f"(or stop it), or choose another --output")

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._filelock is not None:
            self._filelock.release()
            self._filelock = None


def finished_epochs(path: str) -> int:
    """Epochs a run folder's metrics.csv records as finished (0 when it has none; a results.json counts as 1)."""
    n = 0
    try:
        with open(os.path.join(path, "metrics.csv"), encoding="utf-8") as f:
            n = max(0, sum(1 for line in f if line.strip()) - 1)  # minus the header
    except OSError:
        pass
    if not n and os.path.isfile(os.path.join(path, "results.json")):
        n = 1
    return n


def check_run_dir(path: str, resume: bool = False, overwrite: bool = False) -> None:
    """The refusals of ``prepare_run_dir`` that need no lock, made without writing anything: called before
    the data is read and the model built, so a command refused for its folder costs nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"output path {path!r} is a file, not a folder; choose another --output")
    is_run = holds_run(path)
    if resume and not is_run:
        raise RunDirError(f"--resume: {path!r} holds no run to resume; drop --resume to start a new run")
    if not os.path.isdir(path):
        return
    marker = read_marker(path)
    if marker.get("kind", "train") != "train":  # another vpt tool's folder, named by its marker
        label = marker.get("label")
        raise RunDirError(f"output folder {path!r} holds a vpt {marker['kind']}" + (f" ({label})" if label else "")
                          + "; a run can't share its folder (--overwrite neither): choose another --output")
    if not is_run:
        others = foreign_entries(path)
        clash = [e for e in others if e in RUN_FILES]
        if clash:
            raise RunDirError(f"output folder {path!r} is not a vpt run but holds {', '.join(clash)}, which a run "
                              f"would write; vpt never replaces files it did not write: move them or choose "
                              f"another --output")
        if others and not overwrite:
            listed = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
            raise RunDirError(f"output folder {path!r} is not a vpt run and holds other files ({listed}); choose "
                              f"a new or empty folder, or pass --overwrite to add the run beside them (they are "
                              f"kept)")
    elif not resume and not overwrite and finished_epochs(path):
        n = finished_epochs(path)
        raise RunDirError(f"output folder {path!r} already holds a run ({n} epoch{'s' if n != 1 else ''} "
                          f"finished); pass --resume to continue it, --overwrite to replace it, or choose another "
                          f"--output")


def _remove_run_files(path: str) -> None:
    for name in RUN_FILES:
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)


def prepare_run_dir(path: str, resume: bool = False, overwrite: bool = False, command: str = "") -> RunLock:
    """Create ``path`` for a new run, or check it for a resume; returns the held lock (release it at the end).

    A folder that already holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (delete
    the files an earlier `vpt train` wrote there; other files are left alone). A folder with other files is
    refused unless ``overwrite``, and never written over where its names collide with vpt's.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"output path {path!r} is a file, not a folder; choose another --output")
    is_run = holds_run(path)
    if not is_run or resume:
        check_run_dir(path, resume=resume, overwrite=overwrite)
    os.makedirs(path, exist_ok=True)
    lock = RunLock(path).acquire(command)
    try:
        marker = read_marker(path)  # checked under the lock: a tool that shares the folder holds it while it runs
        if marker.get("kind", "train") != "train":
            label = marker.get("label")
            raise RunDirError(f"output folder {path!r} holds a vpt {marker['kind']}" + (f" ({label})" if label else "")
                              + "; a run can't share its folder (--overwrite neither): choose another --output")
        clean_stale_tmp(path)
        if is_run and not resume:
            done = finished_epochs(path)  # read under the lock: a run that holds it may be finishing an epoch
            if done and not overwrite:
                raise RunDirError(f"output folder {path!r} already holds a run ({done} epoch"
                                  f"{'s' if done != 1 else ''} finished); pass --resume to continue it, --overwrite "
                                  f"to replace it, or choose another --output")
            _remove_run_files(path)
            if done:
                _logger.warning("--overwrite: removed the previous run's files from %s (other files kept)", path)
            else:
                _logger.info("%s held a run that never finished an epoch (it stopped or failed early): taking it "
                             "over", path)
        from ..io import atomic_write_json
        from ..version import __version__
        if not os.path.isfile(os.path.join(path, MARKER)):
            atomic_write_json(os.path.join(path, MARKER), {"vpt_run": 1, "kind": "train", "vpt_version": __version__,
                                                          "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    except BaseException:
        lock.release()
        raise
    return lock
