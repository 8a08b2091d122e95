"""Subcommands of the ``vpt`` CLI, one module each (see vpt/cli.py)."""
