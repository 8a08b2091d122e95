"""``python -m vpt.commands.sweep_trial CONFIG --study NAME --trial-id ID ...``: one rank of a sweep trial's
torchrun job. Started by ``vpt sweep --nproc-per-trial N`` (see vpt/sweep/torchrun.py), not by hand."""
from __future__ import annotations

import logging
import sys


def main() -> int:
    from ..sweep.torchrun import trial_main
    from .train import kill_callback
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    return trial_main(sys.argv[1:], callbacks=[cb for cb in (kill_callback(),) if cb is not None])


if __name__ == "__main__":
    sys.exit(main())
