"""model.type 'lora': peft LoRA on the frozen backbone, trained and saved through the same engine."""
import os

import pytest
import torch
import yaml

import vpt
from conftest import TINY_VIT, TINY_VIT_NAME, make_image_folder
from vpt.backbones import create_backbone
from vpt.config import ConfigError

pytest.importorskip("peft")
from vpt.lora import LoraClassifier  # noqa: E402


def build(r=4, targets=("qkv",)):
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT))
    torch.manual_seed(0)
    return LoraClassifier(bb, lora={"r": r, "target_modules": list(targets)}, num_classes=3)


def test_lora_starts_as_the_linear_probe_and_trains_only_lora_and_head():
    model = build()
    x, y = torch.randn(4, 3, *model.data_config.input_size[1:]), torch.tensor([0, 1, 2, 0])
    probe = vpt.create_model(model.backbone, num_classes=3)
    probe.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():  # LoRA's B starts at zero: the model is the plain backbone + head
        torch.testing.assert_close(model(x), probe(x), rtol=1e-5, atol=1e-6)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for n, p in model.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == (n in names), n


def test_lora_artifact_round_trip(tmp_path):
    model = build()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(tmp_path / "a"))
    loaded = vpt.from_pretrained(str(tmp_path / "a"))
    assert type(loaded) is LoraClassifier and loaded.lora_config.r == 4
    x = torch.randn(2, 3, *model.data_config.input_size[1:])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_lora_config_errors():
    with pytest.raises(ConfigError, match="match no module"):
        build(targets=("nope",))
    with pytest.raises(ConfigError, match="unknown"):
        LoraClassifier(create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT)),
                       lora={"rank": 4}, num_classes=3)


def test_vpt_train_lora(tmp_path, one_thread):
    from vpt.cli import main
    data = make_image_folder(tmp_path / "data", per_class=6)
    cfg = {"model": {"type": "lora", "backbone": {"name": TINY_VIT_NAME, "pretrained": False,
                                                  "model_kwargs": dict(TINY_VIT)},
                     "lora": {"r": 2, "target_modules": ["qkv", "fc1"]}},
           "optim": {"opt": "adamw", "lr": 0.01},
           "train": {"epochs": 1, "batch_size": 8, "workers": 0, "log_interval": 0}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "run")
    assert main(["train", "-c", str(recipe), "--data", data, "--output", out]) == 0
    assert main(["eval", os.path.join(out, "best"), "--data", data, "--split", "val"]) == 0
    loaded = vpt.from_pretrained(os.path.join(out, "best"))
    assert loaded.lora_config.target_modules == ["qkv", "fc1"]
