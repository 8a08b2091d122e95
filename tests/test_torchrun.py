"""DDP under torchrun with two CPU (gloo) processes, for every kind of task: classification (== one process
with the same global batch), a task registered from outside the package (tests/toy_task.py) and detection.

All three runs share ONE torchrun launch (tests/torchrun_jobs.py runs them one after another in the same
ranks), so the suite pays the launcher, two interpreters and the process-group start-up once.

Tolerance (documented in vpt/engine/trainer.py): DDP sums the two ranks' gradients in another order than
one process sums its batch, so tensors agree to float rounding (atol 1e-4 after training) and metrics
to within one sample; with these tiny runs they are equal.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

import toy_task
from helpers import make_image_folder, make_voc, make_vtab_task, tiny_recipe
from test_detection_cli import RECIPE as DETECTION_RECIPE, _check_metrics
from vpt.cli import main
from vpt.engine import train

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.usefixtures("one_thread")]  # see conftest.one_thread


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Inputs of the three runs, and their outputs from one two-process torchrun launch."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_image_folder(tmp / "data", per_class=9)
    recipe = tiny_recipe(tmp / "r.yaml", epochs=2, batch_size=8, eval_batch_size=8)
    classify = ["train", "-c", recipe, "--data", data, "--device", "cpu", "--set", "data.val_fraction=0.2",
                "--set", "data.test_fraction=0.2", "--set", "augment.color_jitter=0.3"]
    voc, _ = make_voc(tmp / "voc")
    det_recipe = tmp / "det.yaml"
    det_recipe.write_text(yaml.safe_dump(DETECTION_RECIPE))
    detect = ["train", "--task", "detection", "-c", str(det_recipe), "--data", voc]
    out = {k: str(tmp / k) for k in ("classify", "toy", "detect")}
    jobs = [{"cli": classify + ["--output", out["classify"]]}, {"toy": out["toy"]},
            {"cli": detect + ["--output", out["detect"]]}]
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, HERE]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(HERE, "torchrun_jobs.py"), str(tmp / "jobs.json")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, classify, out


@pytest.mark.slow
@pytest.mark.subprocess
def test_classification_two_gloo_processes_match_one_process(ddp):
    tmp, common, out = ddp
    one, two = str(tmp / "one"), out["classify"]
    assert main(common + ["--output", one]) == 0
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


@pytest.mark.slow
@pytest.mark.subprocess
def test_plugin_task_two_gloo_processes_match_one_process(ddp):
    tmp, _, out = ddp
    cfg = toy_task.ToyConfig()
    cfg.output.dir = str(tmp / "toy_one")
    res = train(toy_task.ToyRegression(cfg))
    res2 = json.load(open(os.path.join(out["toy"], "results.json")))
    assert res2["world_size"] == 2 and res2["best_epoch"] == res["best_epoch"]
    a, b = (load_file(os.path.join(d, "last", "model.safetensors")) for d in (cfg.output.dir, out["toy"]))
    for k in a:  # the same global batches, summed over two ranks: equal up to float summation order
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.subprocess
def test_detection_two_gloo_processes(ddp):
    _, _, out = ddp
    res = json.load(open(os.path.join(out["detect"], "results.json")))
    assert res["world_size"] == 2 and res["task"] == "detection"
    _check_metrics(res["val"])
    _check_metrics(res["test"])
    assert res["val"]["num_images"] == 2 and res["test"]["num_images"] == 2  # sharded, then gathered: every image once
    rows = open(os.path.join(out["detect"], "metrics.csv")).read().splitlines()
    assert len(rows) == 2  # rank 0 writes, once per epoch


@pytest.mark.slow
@pytest.mark.subprocess
def test_suite_under_torchrun_runs_every_task_in_one_process_group(tmp_path):
    """`torchrun -m vpt suite` (two gloo ranks) on tests/test_suite.py's two-task VTAB fixture: every run trains
    with both ranks and the tables are written. The suite joins the process group once for all its runs; a group
    destroyed and created again in the same process hung the second run (4 launches of 8 before the fix; 0 of 6
    after)."""
    root = tmp_path / "vtab-1k"
    make_vtab_task(root, "patch_camelyon")
    make_vtab_task(root, "kitti", labels=(0, 1, 2, 3), seed=1)
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "vpt", "suite", "vtab1k", "--root", str(root), "-c", recipe, "--output",
                                 str(out), "--seeds", "0", "--device", "cpu", "--set", "train.log_interval=100"],
                                cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun passes SIGTERM on to its ranks (each runs in its own session)
            proc.wait(timeout=60)
            pytest.fail("vpt suite under torchrun did not finish in 180 s (hung ranks):\n" + log.read_text()[-3000:])
    assert proc.returncode == 0, log.read_text()[-3000:]
    res = json.load(open(out / "suite.json"))
    assert [r["task"] for r in res["tasks"]] == ["patch_camelyon", "kitti"]
    for r in res["tasks"]:
        assert r["runs"] == 1
        assert json.load(open(os.path.join(r["run_dirs"][0], "results.json")))["world_size"] == 2
    assert res["summary"]["task_mean"] is not None
