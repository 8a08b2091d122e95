"""The first hour with `vpt train`, as a new user hits it (issue 36 points 1-4 and issue 32's typo): the
embedded default recipe prompt-tunes the shipped ViT, recipes are found by name from any folder, --model
replaces the backbone, a run folder is claimed only when the run can start (and a run that never finished
an epoch is taken over), --resume refuses settings it would not apply, --set switches a prompt kind."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import make_image_folder, tiny_recipe
from vpt.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_SHA = "3ac16fda3cdd565fe24775e36e1ff075f6ab6d6330ac1c992f216977cd5228ef"


@pytest.fixture
def data(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=6)


def _cfg(run):
    return yaml.safe_load(open(os.path.join(run, "config.yaml")))


def _artifact_backbone(run):
    return json.load(open(os.path.join(run, "best", "adapter_config.json")))["backbone"]


# --- 1. the embedded default and recipes by name ------------------------------------------------------
def test_default_recipe_prompt_tunes_the_shipped_vit(tmp_path, data, monkeypatch, capsys):
    """`vpt train --data DIR` (no -c) from an unrelated folder: VPT-deep on vpt:vit_tiny_cifar10, offline;
    train.log's first line names the recipe and how to choose another."""
    monkeypatch.chdir(tmp_path)
    run = str(tmp_path / "run")
    assert main(["train", "--data", data, "--output", run, "--epochs", "1"]) == 0
    cfg = _cfg(run)
    assert cfg["model"]["backbone"]["name"] == "vpt:vit_tiny_cifar10" and cfg["model"]["backbone"]["pretrained"]
    assert cfg["model"]["prompt"]["kind"] == "vpt_deep" and cfg["model"]["prompt"]["num_tokens"] == 10
    bb = _artifact_backbone(run)
    assert bb["weights_id"] == f"file:{SHIPPED_SHA}"
    first = open(os.path.join(run, "train.log")).readline()
    assert "recipe: vpt_deep_vit_tiny_cifar10" in first and "vpt list recipes" in first
    assert "-c vpt_deep_vitb16_in21k" in first
    results = json.load(open(os.path.join(run, "results.json")))
    assert "-c vpt_deep_vit_tiny_cifar10" in results["command"]
    assert results["total_params"] > 1_500_000  # the shipped ViT (1.8M), not a tiny random one


def test_recipes_by_name_from_any_folder(tmp_path, data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = str(tmp_path / "tiny")
    assert main(["train", "-c", "tiny_offline", "--data", data, "--output", run, "--epochs", "1",
                 "--set", "train.batch_size=8"]) == 0
    assert _cfg(run)["model"]["backbone"]["model_kwargs"]["depth"] == 4
    assert main(["train", "-c", "tiny_ofline", "--data", data, "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'tiny_offline'" in err and "vpt list recipes" in err
    assert not os.path.exists(tmp_path / "x")


def test_list_recipes(capsys):
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines()[1:] if "vpt_deep_vit_tiny_cifar10" in x)
    assert line.lstrip().startswith("*") and "classification" in line and "shipped" in line
    assert re.search(r"vpt_deep_vitb16_in21k\s+classification\s+VPT-deep on ViT-B/16", out)
    assert re.search(r"det_bccd_cpu\s+detection", out) and re.search(r"zeroshot_vit_b32\s+zeroshot", out)


def test_recipes_are_package_data():
    """Every packaged recipe matches the package-data globs a non-editable install copies; configs/ keeps
    no recipe (one copy of each YAML)."""
    import fnmatch
    import tomllib

    from vpt import recipes
    globs = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["tool"]["setuptools"]["package-data"]["vpt"]
    for name in recipes.names():
        assert any(fnmatch.fnmatch(f"recipes/{name}.yaml", g) for g in globs), name
    assert not [f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".yaml")]


# --- 2. --model replaces the backbone section -----------------------------------------------------------
def test_model_flag_replaces_the_recipe_backbone(tmp_path, data, caplog):
    """tiny_offline's backbone is a random-init 4-block ViT (pretrained: false, model_kwargs); --model
    vpt:vit_tiny_cifar10 must build the shipped, pretrained ViT, not a random hybrid named after it."""
    run = str(tmp_path / "run")
    assert main(["train", "-c", "tiny_offline", "--model", "vpt:vit_tiny_cifar10", "--data", data,
                 "--output", run, "--epochs", "1", "--set", "train.batch_size=8"]) == 0
    bb = _cfg(run)["model"]["backbone"]
    assert bb["pretrained"] is True and bb["model_kwargs"] == {}
    assert _artifact_backbone(run)["weights_id"] == f"file:{SHIPPED_SHA}"
    assert json.load(open(os.path.join(run, "results.json")))["total_params"] > 1_500_000
    assert "replaces the recipe's backbone" in caplog.text and "pretrained: False" in caplog.text
    # --set after --model still reaches the new section: the random-init control of the same ViT
    ctrl = str(tmp_path / "ctrl")
    assert main(["train", "-c", "tiny_offline", "--model", "vpt:vit_tiny_cifar10", "--data", data,
                 "--output", ctrl, "--epochs", "1", "--set", "train.batch_size=8",
                 "--set", "model.backbone.pretrained=false"]) == 0
    assert _artifact_backbone(ctrl)["weights_id"] == "random:0"


# --- 3. a run folder is claimed only when the run can start -------------------------------------------
def test_failed_start_writes_nothing_and_the_fix_runs(tmp_path, data, capsys):
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    typo = tmp_path / "typo.yaml"
    cfg = yaml.safe_load(open(recipe))
    cfg["model"]["prompt"] = {"kind": "vpt_deep", "num_tokns": 4}
    typo.write_text(yaml.safe_dump(cfg))
    run = str(tmp_path / "run")
    assert main(["train", "-c", str(typo), "--data", data, "--output", run]) == 2
    assert "num_tokens" in capsys.readouterr().err and not os.path.exists(run)
    assert main(["train", "-c", recipe, "--data", str(tmp_path / "missing"), "--output", run]) == 2
    assert not os.path.exists(run)
    assert main(["train", "-c", recipe, "--data", data, "--output", run, "--shots", "50"]) == 2
    assert not os.path.exists(run)
    assert main(["train", "-c", recipe, "--data", data, "--output", run, "--device", "cuda:7"]) == 2 or \
        torch.cuda.device_count() > 7
    assert not os.path.exists(run)
    assert main(["train", "-c", recipe, "--data", data, "--output", run]) == 0  # the corrected command


def test_run_killed_in_its_first_epoch_is_taken_over(tmp_path, data, one_thread, caplog):
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    cmd = ["train", "-c", recipe, "--data", data, "--output", str(tmp_path / "run")]
    pid = os.fork()
    if pid == 0:  # child: SIGKILLed after its first optimizer step
        try:
            os.environ["VPT_TEST_KILL_AT_STEP"] = "1"
            main(cmd)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert os.path.isfile(tmp_path / "run" / ".vpt_run")
    assert main(cmd) == 0  # the same command, no flag
    assert "never finished an epoch" in caplog.text
    assert main(cmd) == 2  # a run with a finished epoch is not taken over


def test_fewshot_accepts_the_resume_it_is_told_to_use(tmp_path, data, capsys):
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    argv = ["fewshot", "-c", recipe, "--data", data, "--output", str(tmp_path / "grid"), "--shots", "2",
            "--seeds", "1", "--set", "train.batch_size=4", "--set", "data.val_fraction=0.2"]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert "finished, kept" in capsys.readouterr().out


# --- 4. honest resume ---------------------------------------------------------------------------------
def test_resume_refuses_what_it_would_not_apply(tmp_path, data, capsys):
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=2)
    run = str(tmp_path / "run")
    assert main(["train", "-c", recipe, "--data", data, "--output", run]) == 0
    before = open(os.path.join(run, "config.yaml")).read()
    assert main(["train", "--resume", "--output", run, "--epochs", "3"]) == 2  # the cosine depends on it
    err = capsys.readouterr().err
    assert "train.epochs 2 in the run, 3 now" in err and "--init-from" in err
    assert main(["train", "--resume", "--output", run, "--lr", "0.5", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.01 in the run, 0.5 now" in err
    assert open(os.path.join(run, "config.yaml")).read() == before
    assert main(["train", "--resume", "--output", run, "--workers", "0"]) == 0  # how it runs may change
    # the suggested command is real: a new run from this run's best model, at the new settings
    suggested = shlex.split(err[err.index("vpt train "):].strip())[1:]
    assert "--init-from" in suggested
    assert main(suggested) == 0
    new = suggested[suggested.index("--output") + 1]
    cfg = _cfg(new)
    assert cfg["optim"]["lr"] == 0.5 and cfg["train"]["epochs"] == 3
    assert cfg["train"]["init_from"] == os.path.join(run, "best")
    res = json.load(open(os.path.join(new, "results.json")))
    assert res["config"]["optim"]["lr"] == 0.5


def test_resume_to_more_epochs_where_the_schedule_allows(tmp_path, data, capsys):
    """A constant schedule does not depend on the total: --resume --epochs 2 on a finished 1-epoch run
    continues for real, equals a straight 2-epoch run, and config.yaml / results.json say 2."""
    from safetensors.torch import load_file
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    common = ["train", "-c", recipe, "--data", data, "--set", "sched.sched=constant", "--set", "sched.warmup_epochs=0"]
    run, straight = str(tmp_path / "run"), str(tmp_path / "straight")
    assert main(common + ["--output", run]) == 0
    assert main(["train", "--resume", "--output", run, "--epochs", "2"]) == 0
    assert _cfg(run)["train"]["epochs"] == 2
    assert json.load(open(os.path.join(run, "results.json")))["config"]["train"]["epochs"] == 2
    assert main(common + ["--output", straight, "--epochs", "2"]) == 0
    a, b = (load_file(os.path.join(d, "last", "adapter_model.safetensors")) for d in (run, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "--resume", "--output", run, "--epochs", "1"]) == 2  # fewer than it finished
    assert "already finished 2 epochs" in capsys.readouterr().err


def test_init_from_refuses_an_artifact_that_does_not_fit(tmp_path, data, capsys):
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    run = str(tmp_path / "run")
    assert main(["train", "-c", recipe, "--data", data, "--output", run]) == 0
    assert main(["train", "-c", recipe, "--data", data, "--output", str(tmp_path / "b"), "--init-from", run,
                 "--set", "model.prompt.num_tokens=3"]) == 2
    assert "does not fit this model's trainable tensors" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "b")


# --- 5. --set switching a section's kind --------------------------------------------------------------
def test_set_switches_the_prompt_kind(tmp_path, data, caplog):
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    run = str(tmp_path / "pad")
    assert main(["train", "-c", recipe, "--data", data, "--output", run, "--set", "model.prompt.kind=pixel_pad",
                 "--set", "model.prompt.width=2"]) == 0
    assert _cfg(run)["model"]["prompt"]["kind"] == "pixel_pad"
    assert "dropped the recipe's num_tokens: 2" in caplog.text and "model.prompt={kind: pixel_pad" in caplog.text
    run2 = str(tmp_path / "pad2")
    assert main(["train", "-c", recipe, "--data", data, "--output", run2,
                 "--set", "model.prompt={kind: pixel_pad, width: 2}"]) == 0


def test_help_names_the_default(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-m", "vpt", "train", "--help"], capture_output=True, text=True,
                         env=env, cwd=tmp_path).stdout
    assert "vpt_deep_vit_tiny_cifar10" in out and "vpt list recipes" in out
