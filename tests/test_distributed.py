"""torchrun with two CPU (gloo) processes == one process with the same global batch.

Tolerance (documented in vpt/engine/trainer.py): DDP sums the two ranks' gradients in another order than
one process sums its batch, so tensors agree to float rounding (atol 1e-4 after training) and metrics
to within one sample; with this tiny run they are equal.
"""
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import make_image_folder, tiny_recipe
from vpt.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=9)
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=2, batch_size=8, eval_batch_size=8)
    common = ["train", "-c", recipe, "--data", data, "--device", "cpu", "--set", "data.val_fraction=0.2",
              "--set", "data.test_fraction=0.2", "--set", "augment.color_jitter=0.3"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(common + ["--output", one]) == 0

    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "vpt", *common, "--output", two], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (one, two))
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert b["data"] == a["data"] and b["best_epoch"] == a["best_epoch"]
    for split in ("val", "test"):
        n = a[split]["num_samples"]
        assert b[split]["num_samples"] == n
        assert abs(a[split]["top1"] - b[split]["top1"]) <= 100.0 / n + 1e-9
        assert abs(a[split]["loss"] - b[split]["loss"]) < 1e-3
    ta, tb = (load_file(os.path.join(d, "last", "adapter_model.safetensors")) for d in (one, two))
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=1e-4, rtol=1e-4)
    # rank-0 I/O: one log, one metrics file, each epoch once
    rows = open(os.path.join(two, "metrics.csv")).read().splitlines()
    assert len(rows) == 3
    for col in ("train_loss", "val_loss"):
        i = rows[0].split(",").index(col)
        ra = open(os.path.join(one, "metrics.csv")).read().splitlines()
        for x, y in zip(ra[1:], rows[1:]):
            assert abs(float(x.split(",")[i]) - float(y.split(",")[i])) < 1e-3
