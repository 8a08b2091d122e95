"""benchmarks/profile_inference.py --train (the training-step profile) and benchmarks/speed_ab.py (the before/after
table of repeated speed.py runs) on toy inputs."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


def test_profile_train_mode(tmp_path):
    import profile_inference
    out = tmp_path / "profile_train.json"
    assert profile_inference.main(["--train", "--model", "timm:vit_tiny_patch16_224", "--img", "32", "--batch", "2",
                                   "--dtype", "float32", "--device", "cpu", "--arms", "vpt_deep", "--steps", "1", "--profiled", "2",
                                   "--rows", "6", "--out", str(out)]) == 0
    arm = json.loads(out.read_text())["arms"]["vpt_deep"]
    assert 0.0 < arm["matmul_share"] < 1.0 and len(arm["profiled_step_ms"]) == 2
    names = {r["name"] for r in arm["top"]}
    assert "aten::mm" in names or "aten::addmm" in names  # a training step: the weight / input gradients
    glue = arm["glue_cpu"]
    assert glue and all(not profile_inference.MATMUL_OPS.match(g["name"]) for g in glue)
    assert any("backward" in g["called_from"].lower() for g in glue)  # ops of the backward pass, by caller


def _run(full_img_s, deep_img_s, plain, deep_infer):
    return {"train": {"full": {"img_per_s_ratio_to_full": 1.0, "memory_ratio_to_full": 1.0},
                      "vpt_deep": {"img_per_s_ratio_to_full": deep_img_s / full_img_s, "memory_ratio_to_full": 0.5}},
            "inference": {"plain": {"ratio_to_plain": 1.0}, "vpt_deep": {"ratio_to_plain": deep_infer / plain}},
            "multitask": {"tasks": 8, "mixed_over_single_throughput": 0.97, "mixed_over_separate_throughput": 1.3}}


def test_speed_ab_table_change_spread_and_verdict():
    import speed_ab
    before = {"repeats": [_run(5, 7.5, 16, 16), _run(5, 7.8, 16, 16)]}  # 1.50 / 1.56: spread 3.9 %
    after = {"repeats": [_run(5, 8.5, 16, 14), _run(5, 8.6, 16, 14)]}
    rows = {r.split(" | ")[0].lstrip("| "): r for r in speed_ab.table(before, after).splitlines()[2:]}
    assert set(rows) == {"train img/s vpt_deep / full", "peak memory vpt_deep / full",
                         "inference img/s vpt_deep / plain", "8 tasks mixed / one task", "8 tasks mixed / separate passes"}
    train = rows["train img/s vpt_deep / full"].split(" | ")
    assert train[1:3] == ["1.500 / 1.560", "1.700 / 1.720"]
    assert float(train[3]) == pytest.approx(1.71 / 1.53, abs=1e-3) and train[4] == "3.9%" and train[7] == "better |"
    assert rows["inference img/s vpt_deep / plain"].endswith("| worse |")  # 0.875x, no spread
    assert rows["peak memory vpt_deep / full"].endswith("| no |")


def test_speed_ab_one_repeat_uses_halves_of_its_steps():
    """With one run per side, a training ratio's noise is its spread between the first and second half of the
    run's timed steps (here 1.5x and 1.0x: 40 %), so a 10 % change is not called."""
    import speed_ab

    def run(deep_ms):
        r = _run(5, 7.5, 16, 16)
        r["train"]["full"]["all_step_ms"] = [1500, 1500, 1000, 1000]
        r["train"]["vpt_deep"]["all_step_ms"] = deep_ms
        return r
    table = speed_ab.table({"repeats": [run([1000] * 4)]}, {"repeats": [run([900] * 4)]})
    row = next(r for r in table.splitlines() if r.startswith("| train img/s vpt_deep")).split(" | ")
    assert row[6] == "40.0%" and row[7] == "no |"


def test_speed_ab_no_verdict_without_a_noise_estimate():
    """Inference ratios of single runs have no spread to judge against; equal memory ratios are no change."""
    import speed_ab
    table = speed_ab.table({"repeats": [_run(5, 7.5, 16, 16)]}, {"repeats": [_run(5, 7.5, 16, 12)]})
    rows = {r.split(" | ")[0].lstrip("| "): r for r in table.splitlines()[2:]}
    assert rows["inference img/s vpt_deep / plain"].endswith("| unknown (one repeat) |")
    assert rows["peak memory vpt_deep / full"].endswith("| no |")
