"""torchrun entry for tests/test_torchrun.py: run several jobs in the same ranks, one after another.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/torchrun_jobs.py JOBS.json

JOBS.json is a list of ``{"cli": [vpt argv ...]}`` (through ``vpt.cli.main``, which joins and leaves the
process group itself) or ``{"toy": OUT}`` (tests/toy_task.py's task through the engine). One launch pays
the interpreter, torch and process-group start-up once for all the jobs, instead of once per test. The
group is created here, once, so each job finds it and leaves it up (as in a user's own DDP program).
"""
import json
import sys


def main(path: str) -> int:
    from vpt.cli import main as cli
    from vpt.engine import init_distributed, teardown_distributed, train

    group = init_distributed("cpu")
    for job in json.load(open(path)):
        if "cli" in job:
            rc = cli(job["cli"])
            if rc != 0:
                raise SystemExit(f"vpt {' '.join(job['cli'])} exited {rc}")
        else:
            import toy_task
            cfg = toy_task.ToyConfig()
            cfg.output.dir = job["toy"]
            info = init_distributed("cpu")
            try:
                train(toy_task.ToyRegression(cfg), info)
            finally:
                teardown_distributed(info)
    teardown_distributed(group)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
