"""benchmarks/ablation_lora_gap.py at toy size: each point is the transfer suite's VPT-deep sweep with one factor
changed (the override reaches the resolved config), a record per point, finished points skipped, the base point
read from the transfer suite's record, and the table + PNG made from the records."""
import json
import os

import pytest

import ablation_lora_gap as ab  # benchmarks/ is on the test path (pyproject: tool.pytest.ini_options.pythonpath)

from helpers import make_image_folder

pytestmark = [pytest.mark.sweep, pytest.mark.subprocess, pytest.mark.slow]


def test_points_change_one_factor_each():
    import argparse
    args = argparse.Namespace(epochs=None, set=["train.device=cpu"], scale="x", control=True)
    assert ab.point_args(args, "base").set == ["train.device=cpu"] and ab.point_args(args, "base").epochs == 10
    assert ab.point_args(args, "epochs_50").epochs == 50 and ab.point_args(args, "epochs_50").set == ["train.device=cpu"]
    deep = ab.point_args(args, "depth_last_half")
    assert deep.scale == "depth_last_half" and not deep.control
    assert deep.set[0] == 'model.prompt={"kind": "vpt_deep", "num_tokens": 10, "last_k": 3}'
    assert ab.point_args(args, "head_mlp").set[0] == 'model.head={"kind": "mlp", "num_layers": 2}'
    assert '"init": "patch_embed"' in ab.point_args(args, "init_patch_embed").set[0]
    with pytest.raises(SystemExit, match="unknown point 'tokens_5'"):
        ab.parse_points("tokens_1,tokens_5")


def test_toy_points_run_skip_and_make_table_and_plot(tmp_path, capsys):
    root = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        make_image_folder(str(root / "mnist" / split), classes=("a", "b"), per_class=n, size=32, seed=len(split))
    (root / "mnist" / "manifest.json").write_text(json.dumps({"source_sha256": "0" * 64, "licence": "toy"}))
    base_dir = tmp_path / "base"
    common = ["--data-root", str(root), "--out", str(tmp_path / "out"), "--base-records", str(base_dir),
              "--sweeps-root", str(tmp_path / "sweeps")]
    argv = ["run", "--points", "tokens_1,init_patch_embed", "--tasks", "mnist", "--epochs", "1", "--seeds", "1",
            "--pruner", "none", "--extend-edges", "0", "--jobs", "2", *common]
    assert ab.main(argv) == 0
    recs = {p: json.load(open(tmp_path / "out" / p / "vit_tiny_cifar10" / "mnist" / "vpt_deep.json"))
            for p in ("tokens_1", "init_patch_embed")}
    assert recs["tokens_1"]["config"]["model"]["prompt"]["num_tokens"] == 1  # the point's change reached the run
    assert recs["init_patch_embed"]["config"]["model"]["prompt"]["init"] == "patch_embed"
    assert recs["tokens_1"]["pack"] == 7 and len(recs["tokens_1"]["trials"]) == 7 and recs["tokens_1"]["test_n"] == 1
    assert recs["tokens_1"]["backbone_weights_sha256"] and recs["tokens_1"]["versions"]["torch"]
    capsys.readouterr()
    assert ab.main(argv + ["--dry-run"]) == 0
    assert "2 done, 0 to run" in capsys.readouterr().out
    # the base point and the references come from the transfer suite's records (here: made-up values for the table)
    for arm, top1 in (("vpt_deep", 50.0), ("lora", 60.0), ("linear", 40.0), ("full", 70.0)):
        path = base_dir / "vit_tiny_cifar10" / "mnist" / f"{arm}.json"
        os.makedirs(path.parent, exist_ok=True)
        path.write_text(json.dumps({"test_top1_mean": top1, "test_top1_std": 1.0, "best": {"params": {"optim.lr": 0.1}}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"{ab.START}\n{ab.END}\n")
    png = tmp_path / "abl.png"
    assert ab.main(["table", "--write", "--readme", str(readme), "--plot", str(png), *common]) == 0
    text = readme.read_text()
    t1 = recs["tokens_1"]["test_top1_mean"]
    assert f"| 1 token | {t1:.1f} ± " in text and f"({t1 - 50.0:+.1f}; {100 * (t1 - 50.0) / 10.0:.0f}%)" in text
    assert "| base (10 tokens, all blocks, 10 ep, linear, uniform) | 50.0 ± 1.0" in text
    assert "| LoRA r8 (reference) | 60.0 ± 1.0 |" in text and "mnist: base VPT-deep trails LoRA by 10.0 points" in text
    assert png.stat().st_size > 5000 and "![VPT-deep ablation](abl.png)" in text


def test_epochs_50_also_runs_lora_at_50_epochs_and_the_table_reads_the_gap_at_equal_epochs(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "manifest.json").write_text(json.dumps({"source_sha256": "0" * 64, "licence": "toy"}))
    common = ["--data-root", str(root), "--out", str(tmp_path / "out"), "--base-records", str(tmp_path / "base"),
              "--sweeps-root", str(tmp_path / "sweeps")]
    run = ["run", "--points", "epochs_50,tokens_1", "--tasks", "mnist", "--dry-run", *common]
    assert ab.main(run) == 0
    out = capsys.readouterr().out
    assert "3 points x tasks x arms" in out and "todo: epochs_50 mnist lora" in out
    assert "tokens_1 mnist lora" not in out  # only the point that names LoRA runs it
    assert ab.main(run + ["--arms", "vpt_deep"]) == 0 and "2 points x tasks x arms" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--arms 'full': choose from lora, vpt_deep"):
        ab.main(run + ["--arms", "full"])
    records = {("base", "vpt_deep"): (70.0, 1.0), ("base", "lora"): (75.0, 1.0),
               ("epochs_50", "vpt_deep"): (74.0, 0.5), ("epochs_50", "lora"): (78.0, 1.5)}
    for (where, arm), (top1, sd) in records.items():
        path = (tmp_path / ("base" if where == "base" else f"out/{where}") / "vit_tiny_cifar10" / "mnist"
                / f"{arm}.json")
        os.makedirs(path.parent, exist_ok=True)
        path.write_text(json.dumps({"test_top1_mean": top1, "test_top1_std": sd,
                                    "best": {"params": {"optim.lr": 0.01}}}))
    readme, png = tmp_path / "README.md", tmp_path / "abl.png"
    readme.write_text(f"{ab.START}\n{ab.END}\n")
    assert ab.main(["table", "--write", "--readme", str(readme), "--plot", str(png), *common]) == 0
    text = readme.read_text()
    assert "| 50 epochs | 74.0 ± 0.5 <sub>lr 0.01</sub> (+4.0; 80%) |" in text  # against LoRA at 10 epochs
    assert "| LoRA r8, 50 epochs (reference) | 78.0 ± 1.5 <sub>lr 0.01</sub> |" in text
    assert ("With 50 epochs both ways, VPT-deep 74.0 against LoRA 78.0 (-4.0, beyond the seed spread)." in text
            and png.stat().st_size > 5000)
