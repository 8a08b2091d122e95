"""A real run killed mid-epoch (SIGKILL from inside, after N optimizer steps) and resumed ends exactly like
the uninterrupted run: same per-epoch metrics, same selection, same test metrics, same tensors."""
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_image_folder, tiny_recipe
from vpt.cli import main

TIMING = {"train_images_per_second", "epoch_seconds"}


def _rows(run):
    import csv
    with open(os.path.join(run, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _no_timing(metrics):
    return {k: v for k, v in metrics.items() if k != "images_per_second"}


def _tensors(path):
    return load_file(os.path.join(path, "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_run_resumes_to_identical_result(tmp_path, one_thread):
    # both runs on one thread (the forked child must be): small GEMMs and SDPA may round differently
    # with another thread count, and this test is about resuming, not about thread counts
    data = make_image_folder(tmp_path / "data", per_class=8)
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=2, batch_size=6)  # 18 train images: 3 steps / epoch
    common = ["train", "-c", recipe, "--data", data, "--set", "data.val_fraction=0.125",
              "--set", "data.test_fraction=0.125", "--set", "augment.color_jitter=0.3"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert main(common + ["--output", full]) == 0

    # a real process, killed with SIGKILL mid-epoch 2 (after its 2nd step) by the CLI's test hook; forked so
    # it skips the interpreter start-up and imports (vpt.cli.main reads the env var in the child)
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.environ["VPT_TEST_KILL_AT_STEP"] = "5"
            torch.set_num_threads(1)
            main(common + ["--output", cut])
        finally:
            os._exit(3)  # only reached if the hook did not fire
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert not os.path.exists(os.path.join(cut, "results.json"))
    state = torch.load(os.path.join(cut, "run_state.pt"), weights_only=True)
    assert state["epoch"] == 1

    assert main(["train", "--resume", "--output", cut]) == 0
    assert _rows(cut) == _rows(full) and len(_rows(full)) == 2
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (full, cut))
    assert a["best_epoch"] == b["best_epoch"]
    for split in ("val", "test"):
        assert _no_timing(a[split]) == _no_timing(b[split]) and a[split]["num_samples"] == 3
    for sub in ("best", "last"):
        ta, tb = _tensors(os.path.join(full, sub)), _tensors(os.path.join(cut, sub))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (sub, k)
    log = open(os.path.join(cut, "train.log")).read()
    assert "resumed" in log


def test_resume_needs_a_run(tmp_path, capsys):
    rc = main(["train", "--resume", "--output", str(tmp_path / "nothing")])
    assert rc == 2 and "holds no run to resume" in capsys.readouterr().err
