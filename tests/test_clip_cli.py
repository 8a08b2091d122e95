"""CLIP through the CLI: `vpt train` with visual prompts and with CoOp on an offline image folder and a local
tiny CLIP weights file, `vpt eval` of the artifacts, `vpt zeroshot -c` recipes, and the shipped recipes'
published hyper-parameters."""
import glob
import json
import os

import pytest
import torch
import yaml
from helpers import make_image_folder

import vpt
from vpt.cli import main
from vpt.config import from_dict

pytest.importorskip("open_clip")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RECIPE = os.path.join(REPO, "vpt", "recipes", "clip_tiny_offline.yaml")
TINY_CLIP = yaml.safe_load(open(TINY_RECIPE))["model"]["backbone"]["model_kwargs"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("clipcli")
    data = make_image_folder(root / "data", classes=("cat", "dog", "golden_retriever"), per_class=6)
    mem = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=7, model_kwargs=TINY_CLIP)
    weights = str(root / "tiny_clip.safetensors")
    save_file({k: v.contiguous() for k, v in mem.model.state_dict().items()}, weights)
    return {"root": root, "data": data, "weights": weights}


RUNS = {
    "visual": [],  # the recipe: vpt_deep tokens + head initialised from the zero-shot classifier
    "coop_plus_pad": ["--set", "model.text={num_tokens: 4, class_specific: true}", "--set", "model.head.kind=zeroshot",
                      "--set", "model.prompt={kind: pixel_pad, width: 4}"],
}
EXPECTED = {
    "visual": {"prompt.prompts.0", "prompt.prompts.1", "head.weight", "head.bias"},
    "coop_plus_pad": {"text_prompt.ctx", "prompt.pad_up", "prompt.pad_down", "prompt.pad_left", "prompt.pad_right"},
}


@pytest.mark.parametrize("run", list(RUNS))
def test_train_clip_end_to_end(env, tmp_path, capsys, run):
    from safetensors.torch import load_file
    out = str(tmp_path / run)
    argv = ["train", "-c", TINY_RECIPE, "--data", env["data"], "--weights", env["weights"], "--output", out,
            "--epochs", "1", "--device", "cpu"] + RUNS[run]
    assert main(argv) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    best = os.path.join(out, "best")
    cfg = json.load(open(os.path.join(best, "adapter_config.json")))
    assert cfg["model_type"] == "clip" and cfg["class_names"] == ["cat", "dog", "golden_retriever"]
    assert cfg["backbone"]["weights_id"].startswith("file:")
    assert set(load_file(os.path.join(best, "adapter_model.safetensors"))) == EXPECTED[run]
    assert results["trainable_params"] == sum(t.numel() for t in load_file(
        os.path.join(best, "adapter_model.safetensors")).values())
    capsys.readouterr()
    ev = str(tmp_path / "eval.json")
    assert main(["eval", best, "--data", env["data"], "--split", "val", "--device", "cpu", "--json", ev]) == 0
    got = json.load(open(ev))
    assert got["num_samples"] == results["val"]["num_samples"] and got["top1"] == results["val"]["top1"]
    assert got["loss"] == pytest.approx(results["val"]["loss"], rel=1e-5)
    model = vpt.from_pretrained(best)
    assert model.text_prompt is None if run == "visual" else tuple(model.text_prompt.ctx.shape) == (3, 4, 32)


def test_zeroshot_recipe_with_local_weights(env, tmp_path, capsys):
    out = tmp_path / "zs.json"
    argv = ["zeroshot", "-c", os.path.join(REPO, "vpt", "recipes", "zeroshot_vit_b32.yaml"), "--weights", env["weights"],
            "--model-kwargs", json.dumps(TINY_CLIP), "--data", env["data"], "--no-cache", "--device", "cpu",
            "-j", "0", "--set", "templates=simple", "--output", str(out)]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["pretrained"] == env["weights"] and record["model"] == "ViT-B-32"
    details = json.loads((tmp_path / "zs.details.json").read_text())
    assert details["config"]["templates"] == "simple" and len(details["templates"]) == 7
    assert details["config"]["workers"] == 0 and details["num_images"] == 18


def test_recipes_carry_published_hyperparameters():
    from vpt.tasks.classification import RunConfig, validate
    from vpt.prompts import PadPromptConfig
    from vpt.prompts.text import TextContextConfig
    from vpt.zeroshot import ZeroShotConfig
    recipes = {os.path.basename(p): p for p in glob.glob(os.path.join(REPO, "vpt", "recipes", "*.yaml"))}
    for arch in ("32", "16"):
        pad = validate(from_dict(RunConfig, yaml.safe_load(open(recipes[f"clip_pad_vit_b{arch}.yaml"]))))
        assert pad.model.type == "clip" and pad.model.backbone.name == f"open_clip:ViT-B-{arch}/openai"
        assert pad.model.prompt == PadPromptConfig(width=30) and pad.model.head.kind == "zeroshot"  # typed on load
        assert (pad.optim.opt, pad.optim.lr, pad.optim.momentum, pad.optim.weight_decay) == ("sgd", 40.0, 0.9, 0.0)
        assert (pad.train.epochs, pad.train.batch_size, pad.sched.warmup_epochs) == (1000, 256, 30)
        coop = validate(from_dict(RunConfig, yaml.safe_load(open(recipes[f"clip_coop_vit_b{arch}.yaml"]))))
        assert coop.model.text == TextContextConfig(num_tokens=16, class_specific=False, position="end", init_std=0.02)
        assert (coop.optim.opt, coop.optim.lr, coop.train.batch_size, coop.train.epochs) == ("sgd", 0.002, 32, 200)
        assert (coop.sched.sched, coop.sched.warmup_epochs, coop.sched.warmup_lr) == ("cosine", 1, 1e-5)
        assert coop.data.shots == 16 and coop.model.prompt is None
        zs = from_dict(ZeroShotConfig, yaml.safe_load(open(recipes[f"zeroshot_vit_b{arch}.yaml"])))
        assert zs.model.startswith(f"open_clip:ViT-B-{arch}/") and zs.templates == "openai"


def test_coop_learns_on_colour_classes(env):
    """Class-specific context alone separates the three colour classes of the tiny folder."""
    import torchvision

    from vpt import zeroshot as zs
    from vpt.clip import create_clip_model
    adapter = vpt.create_backbone("open_clip:ViT-B-32", weights=env["weights"], model_kwargs=TINY_CLIP)
    ds = torchvision.datasets.ImageFolder(env["data"], transform=zs.clip_preprocess(adapter))
    x, y = map(torch.cat, zip(*torch.utils.data.DataLoader(ds, batch_size=64)))
    torch.manual_seed(0)
    model = create_clip_model(adapter, ds.classes, text={"num_tokens": 4, "class_specific": True})
    with torch.no_grad():
        feats = model.forward_features(x)  # no visual prompt: image tokens are fixed, train the text side only
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0, momentum=0.9)
    losses = []
    for _ in range(15):
        model.train()
        loss = torch.nn.functional.cross_entropy(model.forward_head(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).double().mean().item()
    assert losses[-1] < 0.5 * losses[0] and acc == 1.0
