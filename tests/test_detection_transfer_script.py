"""benchmarks/detection_transfer.py and make_detection_table.py at toy size: a cell per backbone kind (EfficientNet-Lite0
with a random weights file through the weights-file path; the shipped ViT's random-init copy), one vpt
sweep each, a record per cell with mAP, seed spread, weights sha256 and commands, finished cells skipped, and
the README table regenerated from the records."""
import json
import os

import pytest

import detection_transfer as dt  # benchmarks/ is on the test path (pyproject: tool.pytest.ini_options.pythonpath)
import make_detection_table as mdt

from helpers import make_voc

pytestmark = [pytest.mark.sweep, pytest.mark.subprocess, pytest.mark.slow]


def test_cells_configs_and_spaces_exist_and_bad_names_are_refused():
    cells = dt.parse_cells(["effnet_lite0:all:all", "vit_tiny_cifar10:fcos:head,vpt_deep", "effnet_lite0:fcos:head"])
    assert len(cells) == 2 * 4 + 2 and cells[0] == ("effnet_lite0", "fcos", "head")
    assert len(dt.parse_cells(["vit_tiny_cifar10:all:all"])) == 6
    for bb, det, arm in dt.parse_cells(["effnet_lite0:all:all", "vit_tiny_cifar10:all:all"]):
        assert os.path.isfile(os.path.join(dt.REPO, dt.config_file(bb, det, arm)))
    with pytest.raises(SystemExit, match="unknown detector or arm 'vpt_deep' for effnet_lite0"):
        dt.parse_cells(["effnet_lite0:fcos:vpt_deep"])
    with pytest.raises(SystemExit, match="expected BACKBONE:DETECTORS:ARMS"):
        dt.parse_cells(["effnet_lite0:fcos"])
    from vpt.sweep.space import load_space
    sizes = {k: load_space(os.path.join(dt.REPO, p)).grid_size() for k, p in dt.SPACES.items()}
    assert sizes == {"frozen": 4, "full": 4}  # the same 4-lr budget for every arm


def test_toy_cells_write_records_skip_when_done_and_make_the_table(tmp_path, capsys):
    import timm
    import torch
    from safetensors.torch import save_file
    data, _ = make_voc(tmp_path / "voc", n=7, size=(64, 64), splits=None)
    weights = str(tmp_path / "effnet_random.safetensors")  # the real architecture, random weights (no download)
    torch.manual_seed(0)
    save_file(timm.create_model("tf_efficientnet_lite0").state_dict(), weights)
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [0.001, 0.01]\n")
    out, sweeps = tmp_path / "results", tmp_path / "sweeps"
    vit = ["run", "--cells", "vit_tiny_cifar10:fcos:random_vpt_deep", "--data", data, "--epochs", "1",
           "--seeds", "2", "--pruner", "none", "--extend-edges", "0", "--space", str(space), "--scale", "toy",
           "--out", str(out),
           "--sweeps-root", str(sweeps), "--effnet-weights", weights, "--jobs", "2",
           "--set", "detector.min_size=64", "--set", "detector.max_size=64", "--set", "detector.fixed_size=[64, 64]",
           "--set", "train.batch_size=2", "--set", "train.eval_every=1"]
    both = vit[:1] + ["--cells", "effnet_lite0:fcos:pixel_pad"] + vit[1:]
    assert dt.main(both) == 0  # the two cells' sweeps run side by side (--jobs 2)
    rec = json.load(open(out / "toy" / "effnet_lite0" / "fcos" / "pixel_pad.json"))
    assert rec["benchmark"] == "detection_transfer" and rec["test_n"] == 2 and len(rec["final_runs"]) == 2
    assert rec["backbone_weights_sha256"] == dt._sha256(weights)
    assert all(r["backbone_weights_id"] == f"file:{rec['backbone_weights_sha256']}" for r in rec["final_runs"])
    assert 0.0 <= rec["test_mAP_mean"] <= 1.0 and rec["test_mAP_std"] is not None
    assert rec["test_mAP_range"] == [min(r["test_mAP"] for r in rec["final_runs"]),
                                     max(r["test_mAP"] for r in rec["final_runs"])]
    assert {t["params"]["optim.lr"] for t in rec["trials"]} == {0.001, 0.01}
    assert rec["config"]["model"]["prompt"]["kind"] == "pixel_pad" and rec["wall_seconds"] > 0
    last = (sweeps / "toy" / "effnet_lite0" / "fcos" / "pixel_pad.log").read_text().splitlines()[-1]
    assert last.endswith(f"exit 0 after {rec['wall_seconds']:.1f} s")  # the sweep's wall, from its log
    assert "vpt sweep" in rec["command"] or "sweep" in rec["command"]
    assert {"torch", "timm"} <= set(rec["versions"]) and rec["device"]
    ctrl = json.load(open(out / "toy" / "vit_tiny_cifar10" / "fcos" / "random_vpt_deep.json"))
    assert ctrl["backbone_weights_sha256"] is None
    assert all(r["backbone_weights_id"] == "random:0" for r in ctrl["final_runs"])
    capsys.readouterr()
    assert dt.main(vit + ["--dry-run"]) == 0  # finished: skipped
    assert "1 cells (toy, 1 epochs, 2 seeds, 2 at a time): 1 done, 0 to run" in capsys.readouterr().out
    # a 2-lr grid: its best lies on an edge, so asking for widening steps it was not made with runs it on
    assert ctrl["extend_edges"] == 0 and ctrl["edges"]
    widen = list(vit)
    widen[widen.index("--extend-edges") + 1] = "1"
    assert dt.main(widen + ["--dry-run"]) == 0
    assert "0 done, 1 to run" in (o := capsys.readouterr().out) and "on an edge: widen" in o
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{mdt.START}\nold\n{mdt.END}\ny\n")
    assert mdt.main(["--root", str(out), "--write", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| EfficientNet-Lite0 (ImageNet-1k) | fcos | pixel pad | " in text
    assert f"{rec['test_mAP_mean']:.3f} ± {rec['test_mAP_std']:.3f}" in text
    assert " edge**) | " in text  # a best lr on the 2-lr grid's edge is flagged in the lr column
    assert "VPT-deep on the random-init copy" in text and text.startswith("x\n") and text.endswith("y\n")


def test_verdicts_compare_with_head_only_and_name_the_spread():
    def r(arm, m, s):
        return {"backbone": "effnet_lite0", "detector": "fcos", "arm": arm, "test_mAP_mean": m, "test_mAP_std": s}
    lines = mdt.verdicts([r("head", 0.30, 0.01), r("pixel_pad", 0.28, 0.005), r("pixel_patch", 0.305, 0.01),
                          r("full", 0.40, 0.02)])
    assert lines == ["- EfficientNet-Lite0 (ImageNet-1k) + fcos: pixel pad loses to head only, 0.280 vs 0.300 "
                     "(-0.020, beyond the seed spread of 0.010); pixel patch ties with head only, 0.305 vs 0.300 "
                     "(+0.005, within the seed spread of 0.010); full fine-tuning against the best frozen arm "
                     "(pixel patch): 0.400 vs 0.305 (+0.095, beyond the seed spread of 0.020)."]
