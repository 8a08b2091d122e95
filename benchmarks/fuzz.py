"""Long fuzz run: the hypothesis fuzz tests of tests/test_fuzz.py (adapter_config.json, YAML recipes, data
CSVs) with many more examples than CI runs, and fresh random draws each time (CI is derandomised).

    python benchmarks/fuzz.py --examples 2000 --out benchmarks/results/fuzz.json

Every case must end in success or a vpt error with a message (no other exception, no hang: 30 s deadline per
case; peak memory growth under 1 GiB per test). Writes a JSON result with the command, versions and outcome;
on a failure hypothesis prints the smallest failing input and a blob to reproduce it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=2000, help="examples per fuzz test (CI: 40)")
    p.add_argument("--out", default=None, help="write a JSON result here")
    p.add_argument("-k", default=None, help="only the fuzz tests matching this pytest -k expression")
    args = p.parse_args(argv)
    env = dict(os.environ, VPT_FUZZ_PROFILE="long", VPT_FUZZ_EXAMPLES=str(args.examples), HF_HUB_OFFLINE="1",
               NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # a fixed argument list, no shell: the only subprocess is pytest on this repository's own test file
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join(REPO, "tests", "test_fuzz.py")]
    if args.k:
        cmd += ["-k", args.k]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    result = {"command": " ".join([os.path.basename(sys.executable), "benchmarks/fuzz.py"] + (argv or sys.argv[1:])),
              "examples_per_test": args.examples, "returncode": proc.returncode, "passed": proc.returncode == 0,
              "seconds": round(time.time() - t0, 1), "python": platform.python_version(),
              "platform": platform.platform()}
    try:
        import hypothesis
        import torch
        import vpt
        from vpt.version import source_commit
        result["versions"] = {"vpt": vpt.__version__, "vpt_commit": source_commit(),
                              "torch": torch.__version__, "hypothesis": hypothesis.__version__}
    except ImportError:
        pass
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
