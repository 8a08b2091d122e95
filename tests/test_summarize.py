"""`vpt summarize` over real run folders: only runs that differ by seed are averaged, and it says so."""
import csv
import json
import os

import pytest
from helpers import make_image_folder, tiny_recipe

from vpt.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Six one-epoch runs of one recipe on one folder: seeds 0, 1 (also a split seed) and 2 (logged more
    often: a setting of how it ran, not what it measures), seed 3 with another lr, seed 4 with other
    backbone weights (init seed), seed 5 over 2 epochs."""
    tmp = tmp_path_factory.mktemp("summ")
    data = make_image_folder(tmp / "data", per_class=6)
    recipe = tiny_recipe(tmp / "recipe.yaml", epochs=1)  # + a held-out test third below
    root = tmp / "runs"
    plan = {"s0": ["--seed", "0"], "s1": ["--seed", "1", "--split-seed", "1"],
            "s2": ["--seed", "2", "--set", "train.log_interval=1"], "lr": ["--seed", "3", "--lr", "0.05"], "weights": ["--seed", "4", "--set", "model.backbone.init_seed=7"],
            "epochs": ["--seed", "5", "--epochs", "2"]}
    for name, extra in plan.items():
        assert main(["train", "-c", recipe, "--data", data, "--output", str(root / name), "--device", "cpu",
                     "--set", "data.test_fraction=0.34", *extra]) == 0
    return root


def _rows(table):
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def test_summarize_averages_only_seeds_and_says_what_it_grouped(runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["summarize", str(runs), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 4, out  # seeds 0-2 together; lr, weights and epochs each on their own
    seeds = {r["seeds"]: r for r in rows}
    assert set(seeds) == {"0, 1, 2", "3", "4", "5"}
    assert seeds["0, 1, 2"]["runs"] == "3" and "±" in seeds["0, 1, 2"]["top-1"]
    assert "optim.lr=0.05" in seeds["3"]["setting"] and "optim.lr=0.01" in seeds["0, 1, 2"]["setting"]
    assert "backbone weights=random:7" in seeds["4"]["setting"] and "model.backbone.init_seed=7" in seeds["4"]["setting"]
    assert "train.epochs=2" in seeds["5"]["setting"]
    for r in rows:  # the seeds and where a run was written never set a row apart
        assert "seed=" not in r["setting"].replace("init_seed=", "") and "output.dir" not in r["setting"]
    one = list(seeds).index("0, 1, 2") + 1
    assert f"- row {one} (vpt_deep, data, train run): 3 runs averaged, seeds 0, 1, 2" in out
    assert ("kept apart: they differ in more than the seed, in backbone weights, model.backbone.init_seed, optim.lr, "
            "train.epochs") in out
    with open(tmp_path / "t.csv") as f:
        table = list(csv.reader(f))
    assert table[0][-2:] == ["seeds", "setting"] and len(table) == 5


def test_summarize_of_one_group_has_no_setting_column_noise(runs, capsys):
    capsys.readouterr()
    assert main(["summarize", str(runs / "s0"), str(runs / "s2")]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["runs"] == "2" and rows[0]["seeds"] == "0, 2" and rows[0]["setting"] == ""
    assert "kept apart" not in out


def test_summarize_flags_repeated_seeds(runs, tmp_path, capsys):
    """A copy of a run (same seed, same settings) is not a second seed: the note says so."""
    import shutil
    shutil.copytree(runs / "s0", tmp_path / "copy")
    capsys.readouterr()
    assert main(["summarize", str(runs / "s0"), str(tmp_path / "copy")]) == 0
    assert "seeds 0, 0 (a seed repeats: those runs are repeats, not independent seeds)" in capsys.readouterr().out


def test_summarize_without_results_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["summarize", str(tmp_path / "empty")]) == 2
    assert "no results found" in capsys.readouterr().err
    assert main(["summarize", str(tmp_path / "missing")]) == 2
    assert "neither a run folder nor a results file" in capsys.readouterr().err
