"""benchmarks/transfer_sweep.py: cells in the order given, one vpt sweep command per cell with the arm's space
and packing for frozen arms only, and finished cells skipped unless made with other epochs / weights / space."""
import argparse
import json
import sys

import pytest

import transfer_sweep as ts  # benchmarks/ is on the test path (pyproject: tool.pytest.ini_options.pythonpath)
from vpt.weights import SHIPPED

pytestmark = pytest.mark.sweep


def args(**kw):
    base = {"control": False, "epochs": 10, "seeds": 3, "pack": 7, "pruner": "median", "set": [], "extend_edges": 2,
            "data_root": "/data", "effnet_weights": "/missing.safetensors"}
    return argparse.Namespace(**{**base, **kw})


def test_cells_in_order_and_bad_names():
    cells = ts.parse_cells(["vit_tiny_cifar10:mnist,elpv:linear,vpt_deep", "effnet_lite0:all:pixel_pad",
                            "vit_tiny_cifar10:mnist:linear"])  # a repeat is dropped
    assert cells[:4] == [("vit_tiny_cifar10", "mnist", "linear"), ("vit_tiny_cifar10", "mnist", "vpt_deep"),
                         ("vit_tiny_cifar10", "elpv", "linear"), ("vit_tiny_cifar10", "elpv", "vpt_deep")]
    assert len(cells) == 4 + 5
    assert len(ts.parse_cells(["vit_tiny_cifar10:all:all"])) == 35
    with pytest.raises(SystemExit, match="unknown task or arm 'vpt_deep' for effnet_lite0"):
        ts.parse_cells(["effnet_lite0:mnist:vpt_deep"])
    with pytest.raises(SystemExit, match="expected SETUP:TASKS:ARMS"):
        ts.parse_cells(["vit_tiny_cifar10:mnist"])


def test_sweep_args():
    a = args()
    deep = ts.sweep_args(a, "vit_tiny_cifar10", "mnist", "vpt_deep", "/out", "st")
    assert deep[deep.index("--space") + 1].endswith("spaces/head.yaml") and deep[deep.index("--pack") + 1] == "7"
    assert deep[deep.index("--model") + 1] == "vpt:vit_tiny_cifar10" and "--seeds" in deep
    assert 'model.prompt={"kind": "vpt_deep", "num_tokens": 10}' in deep
    assert deep[deep.index("--extend-edges") + 1] == "2" and "--extend-edges" not in ts.sweep_args(
        args(extend_edges=0), "vit_tiny_cifar10", "mnist", "vpt_deep", "/out", "st")
    full = ts.sweep_args(a, "vit_tiny_cifar10", "mnist", "full", "/out", "st")
    assert full[full.index("--space") + 1].endswith("spaces/full.yaml") and "--pack" not in full
    pad = ts.sweep_args(a, "vit_tiny_cifar10", "mnist", "pixel_pad", "/out", "st")
    assert 'model.prompt={"kind": "pixel_pad", "width": 4}' in pad  # 30/224 of 32 px
    with pytest.raises(SystemExit, match="effnet-weights"):  # no weights file: say how to make it
        ts.sweep_args(a, "effnet_lite0", "mnist", "linear", "/out", "st")
    e2vpt = ts.sweep_args(a, "vit_tiny_cifar10", "mnist", "e2vpt", "/out", "st")  # a prompt + method arm
    assert e2vpt[e2vpt.index("--space") + 1].endswith("spaces/head.yaml") and "--pack" not in e2vpt  # VPT-deep's space
    assert 'model.prompt={"kind": "vpt_deep", "num_tokens": 10}' in e2vpt
    assert 'model.method={"kind": "e2vpt", "num_kv": 5}' in e2vpt
    control = ts.sweep_args(args(control=True), "effnet_lite0", "mnist", "pixel_pad", "/out", "st")
    assert "model.backbone.pretrained=false" in control and "--pack" not in control  # CNN pixel prompts: alone


def test_every_arm_has_the_same_budget():
    from vpt.sweep.space import load_space
    sizes = {arm: load_space(f"{ts.SPACES_DIR}/{name}").grid_size() for arm, name in ts.SPACES.items()}
    assert set(sizes) == set(ts.ARMS) and set(sizes.values()) == {7}


def test_finished_cells_are_skipped_only_when_they_match(tmp_path):
    from vpt.sweep.space import load_space
    space = load_space(f"{ts.SPACES_DIR}/head.yaml").to_dict()
    sha = SHIPPED["vit_tiny_cifar10"]["sha256"]
    path = tmp_path / "linear.json"
    assert ts.load_record(str(path), args(), sha, "linear") is None
    path.write_text(json.dumps({"epochs": 10, "backbone_weights_sha256": sha, "space": space}))
    assert ts.load_record(str(path), args(), sha, "linear")
    for rec in ({"epochs": 30, "backbone_weights_sha256": sha, "space": space},
                {"epochs": 10, "backbone_weights_sha256": "0" * 64, "space": space},
                {"epochs": 10, "backbone_weights_sha256": sha, "space": {"optim.lr": {"values": [0.1]}}}):
        path.write_text(json.dumps(rec))
        with pytest.raises(SystemExit, match="other epochs, backbone weights or space"):
            ts.load_record(str(path), args(), sha, "linear")


def test_a_record_whose_best_lies_on_an_edge_runs_on_with_more_widening_steps(tmp_path):
    """A cell made with fewer --extend-edges steps than asked, whose best lr lies on an edge of the space it
    searched, is not done (its sweep goes on and widens); one inside its widened space, or made with as many
    steps, is."""
    from vpt.sweep.space import load_space
    space = load_space(f"{ts.SPACES_DIR}/head.yaml").to_dict()
    sha = SHIPPED["vit_tiny_cifar10"]["sha256"]
    lrs = space["optim.lr"]["values"]
    trials = [{"number": i, "state": "COMPLETE", "value": 50.0 + (i == 0), "params": {"optim.lr": lr}}
              for i, lr in enumerate(lrs)]  # the lowest lr wins alone: a low edge
    rec = {"epochs": 10, "backbone_weights_sha256": sha, "space": space, "trials": trials,
           "best": {"params": {"optim.lr": lrs[0]}, "val": 51.0}}
    path = tmp_path / "linear.json"
    path.write_text(json.dumps(rec))
    assert ts.record_edges(rec) == {"optim.lr": "low"}
    assert ts.load_record(str(path), args(), sha, "linear") is None  # made without widening: runs on
    assert ts.load_record(str(path), args(extend_edges=0), sha, "linear")
    path.write_text(json.dumps({**rec, "extend_edges": 2}))  # widened as far as asked: done, edge and all
    assert ts.load_record(str(path), args(), sha, "linear")
    wider = {"optim.lr": {"values": [0.001, *lrs]}}
    trials.append({"number": 7, "state": "COMPLETE", "value": 49.0, "params": {"optim.lr": 0.001}})
    path.write_text(json.dumps({**rec, "space_searched": wider, "extend_edges": 1}))
    assert ts.record_edges({**rec, "space_searched": wider}) == {}  # inside the widened space
    assert ts.load_record(str(path), args(), sha, "linear")


def test_wall_time_counts_every_invocation_of_a_sweep_killed_and_resumed(tmp_path):
    log = tmp_path / "vpt_deep.log"
    log.write_text(  # an old sweep folder (discarded), then the sweep killed mid-run (no exit line), then resumed
        "\n[2026-12-06T08:00:00Z] python vpt-sweep ...\n08:00:05 INFO vpt.sweep.study: created study 'st'\n"
        "08:50:00 INFO vpt.engine.trainer: epoch 1/8\n"
        "[2026-12-06T08:55:00Z] exit 0 after 3300.0 s\n"
        "\n[2026-12-06T23:00:00Z] python vpt-sweep ...\n23:00:40 INFO vpt.sweep.study: created study 'st'\n"
        "23:01:00 INFO vpt.sweep.study: created study 'st/final/trial_0'\n"
        "00:10:00 INFO vpt.engine.trainer: epoch 2/8\nvpt sweep: interrupted\n", encoding="utf-8")
    killed = 70 * 60  # 23:00:00 (the command line) to 00:10:00, past midnight
    assert ts.logged_wall_seconds(str(log), "st") == killed
    assert ts.logged_wall_seconds(str(log), "other") is None
    assert ts.logged_wall_seconds(str(tmp_path / "missing.log"), "st") is None
    out_dir = tmp_path / "vpt_deep"  # run_logged appends the resumed invocation, closed by its exit line
    code, wall = ts.run_logged([sys.executable, "-c", "import time; time.sleep(0.3)"], str(out_dir), "vpt_deep", 1)
    assert code == 0 and 0.3 <= wall < 30
    assert ts.logged_wall_seconds(str(log), "st") == pytest.approx(killed + wall, abs=0.06)
    assert log.read_text(encoding="utf-8").splitlines()[-1].endswith(f"] exit 0 after {wall:.1f} s")
