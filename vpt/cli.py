"""``vpt`` command line: the only place that reads argv, and where the library's errors
(``vpt.errors.VptError``) become one-line messages and exit code 2.

Exit codes (also in ``vpt --help``): see ``EXIT_CODES``. A closed output pipe (``vpt list | head -1``)
is not an error worth a traceback: the rest of the output goes to /dev/null, as the Python docs
recommend (``signal`` module, "Note on SIGPIPE"), and the exit status is 141 (128 + SIGPIPE), the status
a shell reports for ``yes | head -1``: ``set -o pipefail`` scripts see the same thing as with any Unix tool.

Each subcommand is a module in ``vpt/commands/`` with ``register(subparsers)``; the parser it adds
carries ``func(args) -> int``. The library below never imports this module or ``vpt.commands``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141
EXIT_CODES = """exit codes:
  0    success
  1    the run failed (an error while training or evaluating, a trial that failed), or a file could
       not be written (disk full, read-only or forbidden folder: the message says which)
  2    user error: a bad flag, recipe, config value, data folder or file, or a missing optional
       dependency (the message has the pip command); the message names the fix
  130  interrupted (Ctrl-C); `vpt train --resume` continues an interrupted run
  141  the program reading vpt's output closed it early (e.g. `vpt list | head -1`); not an error
"""

COMMANDS = ["list", "train", "eval", "predict", "zeroshot", "fewshot", "summarize", "sweep", "suite", "inspect", "push",
            "serve"]


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    parser = argparse.ArgumentParser(prog="vpt", description="Visual prompt tuning for frozen vision backbones.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vpt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(f"{__package__}.commands"):
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


def path_error_hint(e: OSError) -> Optional[str]:
    """A one-line message for a path that names the wrong kind of thing (a folder where a file goes, a file
    where a folder goes): the user's path is wrong (exit 2); None for anything else."""
    import errno
    name = getattr(e, "filename2", None) or getattr(e, "filename", None)  # os.replace(tmp, target): the target
    where = f" {name!r}" if name else ""
    if e.errno == errno.EISDIR:
        return f"{where.strip() or 'a path'} is a folder where a file was expected; give a file path (e.g. DIR/out.json)"
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and name:
        blocker = _file_in_path(str(name))  # EEXIST: only makedirs meeting a file (an existing folder is fine)
        if blocker is not None:
            return f"{blocker!r} is a file, but the path{where} needs it to be a folder; choose another path"
    return None


def _file_in_path(path: str) -> Optional[str]:
    """The first part of ``path`` (itself included) that exists and is not a folder; None if there is none."""
    parts, probe = [], os.path.abspath(path)
    while True:
        parts.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for p in reversed(parts):  # from the root down
        if os.path.lexists(p) and not os.path.isdir(p):
            return p
    return None


def os_error_hint(e: OSError) -> Optional[str]:
    """A one-line message for the file-system failures a user can fix (full disk, read-only or forbidden
    folder); None for anything else (a bug: keep its traceback)."""
    import errno
    where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"no space left on the device while writing{where} ({e.strerror}); free some space or choose "
                f"another output folder. Files vpt writes are replaced atomically, so the previous ones are intact")
    if e.errno == errno.EROFS:
        return (f"cannot write{where}: the file system is read-only; choose an output folder you can write to "
                f"(e.g. --output ~/runs/NAME)")
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied for{where}; choose a file or folder you may read and write (e.g. --output "
                f"~/runs/NAME), or fix its permissions")
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Run one ``vpt`` command; returns the exit status (``EXIT_CODES``)."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here (or in a print above), not at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # before a command started (while importing, parsing)
        print("vpt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _discard_stdout() -> None:
    """Point stdout (and stderr when it is the same closed pipe, as with ``2>&1 | head``) at /dev/null, so
    the flush at interpreter exit writes nowhere instead of printing a second BrokenPipeError."""
    try:
        out = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stdout (tests): nothing to redirect
        return
    targets = [out]
    try:
        a, b = os.fstat(out), os.fstat(sys.stderr.fileno())
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            targets.append(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in targets:
        os.dup2(devnull, fd)
    os.close(devnull)


def _main(argv: Optional[List[str]]) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from .errors import VptError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (VptError, FileNotFoundError) as e:
        print(f"vpt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # main() ends quietly
    except OSError as e:
        hint = path_error_hint(e)
        if hint is not None:
            print(f"vpt {args.command}: error: {hint}", file=sys.stderr)
            return EXIT_USAGE
        hint = os_error_hint(e)
        if hint is None:
            raise
        print(f"vpt {args.command}: error: {hint}", file=sys.stderr)
        return EXIT_FAILED
    except ImportError as e:
        if "pip install" not in str(e):  # vpt's "needs X: pip install ..." for an optional part; else a bug
            raise
        print(f"vpt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vpt {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
