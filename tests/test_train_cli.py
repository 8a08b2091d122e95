"""`vpt train / eval / predict` end to end, in process, on tiny image folders; and bad input."""
import glob
import json
import os
import re

import pytest
import yaml

from helpers import TINY_VIT_NAME, make_image_folder, tiny_recipe
from vpt.cli import main

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "vpt", "recipes")


def make_split_folder(root):
    make_image_folder(os.path.join(root, "train"), per_class=10, seed=0)
    make_image_folder(os.path.join(root, "test"), per_class=4, seed=1)
    return str(root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    data = make_split_folder(tmp / "data")
    recipe = tiny_recipe(tmp / "recipe.yaml")
    out = str(tmp / "run")
    rc = main(["train", "-c", recipe, "--data", data, "--output", out, "--seed", "1", "--set", "data.val_fraction=0.2"])
    assert rc == 0
    return {"tmp": tmp, "data": data, "recipe": recipe, "out": out,
            "results": json.load(open(os.path.join(out, "results.json")))}


def test_run_folder_contents(trained):
    out, r = trained["out"], trained["results"]
    for name in ("config.yaml", "train.log", "metrics.csv", "results.json", "run_state.pt", "confusion_matrix.png",
                 "best/adapter_config.json", "best/adapter_model.safetensors", "last/adapter_model.safetensors"):
        assert os.path.exists(os.path.join(out, name)), name
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert saved["train"]["seed"] == 1 and saved["data"]["val_fraction"] == 0.2  # flags and --set resolved
    assert saved["data"]["root"] == os.path.abspath(trained["data"])
    assert r["data"]["train"] == 24 and r["data"]["val"] == 6 and r["data"]["test"] == 12
    assert r["selection"] == "best val top-1" and 1 <= r["best_epoch"] <= 3
    assert set(r["test"]) >= {"top1", "top5", "mean_per_class_recall", "per_class_accuracy", "confusion_matrix"}
    assert set(r["test"]["per_class_accuracy"]) == {"cat", "dog", "frog"}
    assert r["trainable_params"] > 0 and r["trainable_params"] < r["total_params"]
    assert r["throughput"]["train_images_per_second"] > 0
    assert r["versions"]["torch"] and r["device"].startswith("cpu") and r["config"]["train"]["seed"] == 1
    # which weights: random init here (init_seed defaults to 0); a weights file would be 'file:<sha256>'
    assert r["backbone"] == {"name": TINY_VIT_NAME, "arch": r["backbone"]["arch"], "weights_id": "random:0"}
    assert r["test"]["top1"] >= 75.0  # colour classes are easy: the prompts + head learn them
    rows = open(os.path.join(out, "metrics.csv")).read().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,lr,train_loss")
    assert "best epoch" in open(os.path.join(out, "train.log")).read()
    best_val = max(float(row.split(",")[rows[0].split(",").index("val_top1")]) for row in rows[1:])
    assert r["val"]["top1"] == pytest.approx(best_val, abs=1e-3)  # selected on val


def test_eval_reproduces_results_exactly(trained, tmp_path):
    js = str(tmp_path / "eval.json")
    assert main(["eval", os.path.join(trained["out"], "best"), "--data", trained["data"], "--json", js]) == 0
    ev = json.load(open(js))
    assert ev["top1"] == trained["results"]["test"]["top1"]
    assert ev["top5"] == trained["results"]["test"]["top5"]
    assert ev["confusion_matrix"] == trained["results"]["test"]["confusion_matrix"]


def test_predict_topk(trained, tmp_path, capsys):
    imgs = os.path.join(trained["data"], "test")
    capsys.readouterr()
    assert main(["predict", os.path.join(trained["out"], "best"), os.path.join(imgs, "dog"),
                 os.path.join(imgs, "cat", "000.png"), "--topk", "2"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 5 and recs[-1]["path"].endswith("cat/000.png")
    for rec in recs:
        probs = [p["prob"] for p in rec["predictions"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert rec["predictions"][0]["label"] in ("cat", "dog", "frog")
    assert sum(rec["predictions"][0]["label"] == "dog" for rec in recs[:4]) >= 3
    csv_out = str(tmp_path / "p.csv")
    assert main(["predict", os.path.join(trained["out"], "best"), imgs, "--format", "csv", "--output", csv_out]) == 0
    lines = open(csv_out).read().splitlines()
    assert lines[0] == "path,rank,label,index,prob" and len(lines) == 1 + 12 * 3


def test_refuses_existing_run_and_keeps_it(trained, capsys):
    before = open(os.path.join(trained["out"], "results.json")).read()
    rc = main(["train", "-c", trained["recipe"], "--data", trained["data"], "--output", trained["out"]])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert open(os.path.join(trained["out"], "results.json")).read() == before


def test_eval_refuses_other_classes(trained, tmp_path, capsys):
    other = make_image_folder(tmp_path / "other", classes=("cat", "dog", "zebra"), per_class=2)
    rc = main(["eval", os.path.join(trained["out"], "best"), "--data", other, "--split", "all"])
    err = capsys.readouterr().err
    assert rc == 2 and "differ from the model's" in err and "zebra" in err


@pytest.mark.parametrize("extra,message", [
    (["--set", "optim.lrr=0.1"], "did you mean 'lr'"),
    (["--set", "optim.lr=1e-3x"], "cannot read '1e-3x' as float"),
    (["--amp-dtype", "fp8"], "unknown train.amp_dtype"),
])
def test_bad_config_values(trained, tmp_path, capsys, extra, message):
    rc = main(["train", "-c", trained["recipe"], "--data", trained["data"], "--output", str(tmp_path / "r"), *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")  # nothing written


def test_malformed_flag_is_an_argparse_error(trained, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "-c", trained["recipe"], "--lr", "1e-3x"])
    assert e.value.code == 2 and "invalid float value: '1e-3x'" in capsys.readouterr().err


@pytest.mark.parametrize("setup,message", [
    (lambda d: None, "data folder not found"),
    (lambda d: os.makedirs(d), "no class sub-folders"),
    (lambda d: make_image_folder(d, classes=("cat",), per_class=2), "at least two classes"),
    (lambda d: (make_image_folder(d, per_class=2), os.makedirs(os.path.join(d, "emu"))), "emu' has no images"),
])
def test_bad_data_folders(trained, tmp_path, capsys, setup, message):
    d = str(tmp_path / "data")
    setup(d)
    rc = main(["train", "-c", trained["recipe"], "--data", d, "--output", str(tmp_path / "r")])
    assert rc == 2 and message in capsys.readouterr().err


def test_corrupt_image_skipped_or_fatal(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=4)
    open(os.path.join(data, "cat", "zz_bad.jpg"), "wb").write(b"\x00not a jpeg")
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    out = str(tmp_path / "run")
    assert main(["train", "-c", recipe, "--data", data, "--output", out, "--set", "data.val_fraction=0"]) == 0
    log = open(os.path.join(out, "train.log")).read()
    assert "skipping unreadable image" in log and "zz_bad.jpg" in log
    assert "skipped 1 unreadable training images" in log and "no validation split" in log
    assert open(os.path.join(out, "metrics.csv")).read().splitlines()[1].split(",")[5] == "1"  # train_skipped
    rc = main(["train", "-c", recipe, "--data", data, "--output", str(tmp_path / "run2"), "--strict-data",
               "--set", "data.val_fraction=0"])
    assert rc == 2 and "zz_bad.jpg" in capsys.readouterr().err


def test_recipes_parse():
    """Every packaged `vpt train` recipe (vpt/recipes/) (classification and CLIP; not det_* / zeroshot_*) is a valid
    RunConfig with resolvable prompt kinds."""
    import vpt  # noqa: F401
    from vpt.config import from_dict
    from vpt.tasks.classification import RunConfig, validate
    from vpt.prompts import resolve_prompt_config
    paths = [p for p in glob.glob(os.path.join(CONFIGS, "*.yaml"))
             if not os.path.basename(p).startswith(("det_", "zeroshot_"))]
    names = {os.path.basename(p) for p in paths}
    assert {"tiny_offline.yaml", "vpt_deep_vitb16_in21k.yaml", "vpt_shallow_vitb16_in21k.yaml",
            "prefix_vitb16_in21k.yaml", "pixel_pad_vitb16_in21k.yaml", "linear_probe_vitb16_in21k.yaml",
            "full_finetune_vitb16_in21k.yaml", "vpt_deep_vit_tiny_cifar10.yaml"} <= names
    for p in paths:
        cfg = validate(from_dict(RunConfig, yaml.safe_load(open(p))))
        if cfg.model.type == "classifier" and cfg.model.prompt is not None:
            resolve_prompt_config(cfg.model.prompt)


def _last_tensors(out):
    from safetensors.torch import load_file
    return load_file(os.path.join(out, "last", "adapter_model.safetensors"))


def test_grad_accumulation_and_amp(tmp_path):
    """2 accumulation steps == one step over the same global batch; bf16 / fp16 (GradScaler) runs train."""
    import torch
    data = make_image_folder(tmp_path / "data", per_class=6)
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    runs = {}
    for name, extra in {"plain": [], "accum": ["--set", "train.grad_accum_steps=2"],
                        "bf16": ["--amp-dtype", "bf16"], "fp16": ["--amp-dtype", "fp16"]}.items():
        out = str(tmp_path / name)
        assert main(["train", "-c", recipe, "--data", data, "--output", out, "--set", "data.val_fraction=0", *extra]) == 0
        runs[name] = _last_tensors(out)
        assert yaml.safe_load(open(os.path.join(out, "config.yaml")))["train"]["amp_dtype"] == \
            {"bf16": "bfloat16", "fp16": "float16"}.get(name, "float32")
    for k, v in runs["plain"].items():
        torch.testing.assert_close(runs["accum"][k], v, atol=1e-6, rtol=1e-5)
        assert torch.isfinite(runs["bf16"][k]).all() and torch.isfinite(runs["fp16"][k]).all()
    assert any(not torch.equal(runs["bf16"][k], v) for k, v in runs["plain"].items())  # autocast was on


def test_each_subcommand_lists_only_its_own_flags(capsys):
    for cmd, absent, present in (("eval", ("--epochs", "--lr", "--resume", "--overwrite", "--output"), ("--split",)),
                                 ("train", ("--split", "--topk"), ("--epochs", "--resume"))):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        flags = set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))
        assert not flags & set(absent) and set(present) <= flags, (cmd, sorted(flags))
