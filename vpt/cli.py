"""``vpt`` command line: the only place that reads argv, and where the library's errors
(``vpt.errors.VptError``) become one-line messages and exit code 2.

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

COMMANDS = ["list", "train", "eval", "predict", "zeroshot", "fewshot", "summarize", "sweep", "inspect"]


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    parser = argparse.ArgumentParser(prog="vpt", description="Visual prompt tuning for frozen vision backbones.")
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
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from .errors import VptError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (VptError, FileNotFoundError) as e:
        print(f"vpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        hint = os_error_hint(e)
        if hint is None:
            raise
        print(f"vpt {args.command}: error: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
