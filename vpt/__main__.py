"""``python -m vpt ...``: the ``vpt`` command line (:mod:`vpt.cli`)."""
import sys

from .cli import main

sys.exit(main())
