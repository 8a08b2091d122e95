"""The CLIP prompt-learning protocols through the CLI: each method trains end to end on its tiny offline recipe
with --base-to-novel (results.json: base, novel, hm), `vpt eval --base-to-novel` / `--transfer`, the few-shot
grid, the summary table, and the bad-input messages."""
import json
import os

import pytest
import torch
import yaml
from helpers import make_image_folder

import vpt
from vpt.cli import main
from vpt.tasks.protocols import harmonic_mean

pytest.importorskip("open_clip")
pytestmark = pytest.mark.usefixtures("one_thread")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("cocoop", "kgcoop", "maple", "promptsrc")
CLASSES = ("cat", "dog", "frog", "golden_retriever", "red_car")  # base: the first 3 (ceil(5 / 2)); novel: the rest


def recipe(kind):
    return os.path.join(REPO, "vpt", "recipes", f"clip_{kind}_tiny.yaml")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("protocols")
    data = make_image_folder(root / "data", classes=CLASSES, per_class=4)
    other = make_image_folder(root / "other", classes=("apple", "tree"), per_class=3, seed=1)
    kwargs = yaml.safe_load(open(recipe("maple")))["model"]["backbone"]["model_kwargs"]
    mem = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=7, model_kwargs=kwargs)
    weights = str(root / "tiny_clip.safetensors")
    save_file({k: v.contiguous() for k, v in mem.model.state_dict().items()}, weights)
    return {"root": root, "data": data, "other": other, "weights": weights}


def train(env, kind, out, *extra):
    return main(["train", "-c", recipe(kind), "--data", env["data"], "--weights", env["weights"], "--output", out,
                 "--device", "cpu", "--epochs", "1", "--test-fraction", "0.5", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("kind", METHODS)
def test_method_trains_base_to_novel_end_to_end(env, tmp_path, capsys, kind):
    from safetensors.torch import load_file
    out = str(tmp_path / kind)
    assert train(env, kind, out, "--base-to-novel") == 0
    r = json.load(open(os.path.join(out, "results.json")))
    assert r["data"]["classes"] == ["cat", "dog", "frog"] and r["config"]["data"]["classes"] == "base"
    assert r["base"] == r["test"]["top1"] and r["test"]["num_samples"] == 6
    assert r["base_to_novel"]["novel"]["classes"] == ["golden_retriever", "red_car"]
    assert r["base_to_novel"]["novel"]["num_samples"] == 4
    assert r["hm"] == pytest.approx(harmonic_mean(r["base"], r["novel"]))
    best = os.path.join(out, "best")
    cfg = json.load(open(os.path.join(best, "adapter_config.json")))
    assert cfg["text"]["kind"] == kind and cfg["class_names"] == ["cat", "dog", "frog"]
    tensors = load_file(os.path.join(best, "adapter_model.safetensors"))
    assert tensors and all(k.startswith("text_prompt.") for k in tensors)
    assert r["trainable_params"] == sum(t.numel() for t in tensors.values())
    assert "base-to-novel: base" in capsys.readouterr().out
    # vpt eval reproduces the numbers from the artifact and the run's saved config
    ev = str(tmp_path / "eval_b2n.json")
    assert main(["eval", best, "--base-to-novel", "--device", "cpu", "--json", ev]) == 0
    e = json.load(open(ev))
    assert (e["base"], e["novel"], e["hm"]) == (r["base"], r["novel"], r["hm"])


@pytest.mark.sweep
@pytest.mark.slow
def test_base_to_novel_through_vpt_sweep(env, tmp_path, capsys):
    """Search trials select on the base classes' val split and never read test (no base / novel / hm); the
    final run reports base, novel and hm, and the sweep their mean +/- std."""
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [0.05]\n")
    out = tmp_path / "sweep"
    assert main(["sweep", "-c", recipe("maple"), "--data", env["data"], "--weights", env["weights"], "--output",
                 str(out), "--device", "cpu", "--epochs", "1", "--test-fraction", "0.5", "--val-fraction", "0.5",
                 "--base-to-novel",
                 "--space", str(space), "--seeds", "1", "--pruner", "none"]) == 0
    assert "base-to-novel test top1: base" in capsys.readouterr().out
    r = json.load(open(out / "trials" / "0000" / "results.json"))
    assert r["test"] is None and not {"base", "novel", "hm"} & set(r)
    assert r["data"]["classes"] == ["cat", "dog", "frog"]  # trained and selected on the base half
    res = json.load(open(out / "results.json"))
    final = res["final"]
    run = json.load(open(out / final["folder"] / "seed_0" / "results.json"))
    assert (final["base_mean"], final["novel_mean"], final["hm_mean"]) == (run["base"], run["novel"], run["hm"])
    assert run["base_to_novel"]["novel"]["classes"] == ["golden_retriever", "red_car"]


def test_cross_dataset_transfer_and_summary_table(env, tmp_path, capsys):
    out = str(tmp_path / "kg")
    assert train(env, "kgcoop", out) == 0
    ev = str(tmp_path / "kg" / "eval_transfer.json")
    assert main(["eval", os.path.join(out, "best"), "--transfer", env["other"], env["data"], "--split", "all",
                 "--device", "cpu", "--json", ev]) == 0
    t = json.load(open(ev))["transfer"]
    assert t[env["other"]]["classes"] == ["apple", "tree"] and t[env["other"]]["num_samples"] == 6
    assert t[env["data"]]["num_samples"] == 20
    capsys.readouterr()
    assert main(["summarize", str(tmp_path), "--csv", str(tmp_path / "t.csv")]) == 0
    table = capsys.readouterr().out
    assert "| kgcoop | other | transfer | all | 1 |" in table and "| kgcoop | data | train run | all | 1 |" in table
    assert open(tmp_path / "t.csv").read().startswith("method,data,eval,shots,runs,top-1,base,novel,HM")


def test_few_shot_grid_with_seeds(env, tmp_path, capsys):
    root = str(tmp_path / "fs")
    assert main(["fewshot", "-c", recipe("kgcoop"), "--data", env["data"], "--weights", env["weights"],
                 "--output", root, "--shots", "1", "2", "--seeds", "1", "2", "--epochs", "1", "--device", "cpu",
                 "--test-fraction", "0.25"]) == 0
    assert sorted(os.listdir(root)) == ["shots1_seed1", "shots1_seed2", "shots2_seed1", "shots2_seed2"]
    r = json.load(open(os.path.join(root, "shots2_seed2", "results.json")))
    assert r["data"]["train"] == 2 * len(CLASSES) and r["config"]["train"]["seed"] == 2
    assert r["config"]["data"]["split_seed"] == 2
    out = capsys.readouterr().out
    assert "| kgcoop | data | train run | 1 | 2 |" in out and "| kgcoop | data | train run | 2 | 2 |" in out


def test_protocol_bad_input(env, tmp_path, capsys):
    one = make_image_folder(tmp_path / "one", classes=("cat",), per_class=3)
    assert main(["train", "-c", recipe("kgcoop"), "--data", one, "--output", str(tmp_path / "a"), "--device", "cpu",
                 "--base-to-novel", "--test-fraction", "0.3"]) == 2
    assert "base-to-novel splits the classes into a base and a novel half, so it needs at least 2 classes" in \
        capsys.readouterr().err
    assert train(env, "maple", str(tmp_path / "b"), "--base-to-novel", "--test-fraction", "0") == 2
    assert "has no test split; add" in capsys.readouterr().err
    assert main(["train", "-c", os.path.join(REPO, "vpt", "recipes", "tiny_offline.yaml"), "--data", env["data"],
                 "--output", str(tmp_path / "c"), "--base-to-novel", "--test-fraction", "0.5"]) == 2
    assert "need a CLIP model (model.type: clip)" in capsys.readouterr().err
    assert train(env, "kgcoop", str(tmp_path / "d"), "--shots", "3") == 2
    assert "--shots 3 is larger than what 5 class(es)" in capsys.readouterr().err
    assert train(env, "maple", str(tmp_path / "e"), "--set", "model.text.depth=4") == 2
    assert "text.depth=4 is beyond the text encoder's depth: it has 2 blocks" in capsys.readouterr().err
    assert main(["fewshot", "-c", recipe("kgcoop"), "--data", env["data"], "--output", str(tmp_path / "f"),
                 "--shots", "0"]) == 2
    assert "shots must be positive integers" in capsys.readouterr().err


def test_promptsrc_aggregate_survives_resume(env, tmp_path):
    """A PromptSRC run stopped after epoch 1 and resumed ends with the same aggregated prompts as one
    uninterrupted run (the running Gaussian-weighted sum is in the run state)."""
    from safetensors.torch import load_file

    from vpt.commands._common import resolve_config
    from vpt.engine import Callback, train
    from vpt.tasks import task_class

    task_cls = task_class("classification")

    def cfg(out):
        return resolve_config(task_cls.config_cls, recipe("promptsrc"), {
            "data.root": env["data"], "output.dir": out, "model.backbone.weights": env["weights"],
            "train.device": "cpu", "train.epochs": 3, "model.text.gpa_mean": 2}, [])

    class StopAfterFirst(Callback):
        def on_epoch_end(self, run, epoch, row):
            if epoch == 1:
                run.request_stop("test: stop after epoch 1")

    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    train(task_cls(cfg(whole)))
    assert train(task_cls(cfg(parts)), callbacks=[StopAfterFirst()])["stopped"]
    train(task_cls(cfg(parts)), resume=True)
    a = load_file(os.path.join(whole, "best", "adapter_model.safetensors"))
    b = load_file(os.path.join(parts, "best", "adapter_model.safetensors"))
    assert set(a) == {"text_prompt.ctx", "text_prompt.text_deep.0", "text_prompt.vision_prompts.0",
                      "text_prompt.vision_prompts.1"}
    assert all(torch.equal(a[k], b[k]) for k in a)
