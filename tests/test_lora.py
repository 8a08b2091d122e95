"""model.type 'lora': peft LoRA on the frozen backbone, trained and saved through the same engine."""
import pytest
import torch

import vpt
from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder, train_eval_reload
from vpt.backbones import create_backbone
from vpt.config import ConfigError

pytest.importorskip("peft")
from vpt.lora import LoraClassifier  # noqa: E402


def build(**lora):
    """A LoRA classifier (3 classes) on the tiny ViT; ``lora``: the LoRA config (default r=4 on qkv)."""
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT))
    torch.manual_seed(0)
    return LoraClassifier(bb, lora={"r": 4, "target_modules": ["qkv"], **lora}, num_classes=3)


def saved_as_trained(path):
    """build(), its trainable tensors moved off their init (LoRA's B off zero), saved at ``path``."""
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(path))
    return model


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
    model = saved_as_trained(tmp_path / "a")
    loaded = vpt.from_pretrained(str(tmp_path / "a"))
    assert type(loaded) is LoraClassifier and loaded.lora_config.r == 4
    x = torch.randn(2, 3, *model.data_config.input_size[1:])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_lora_config_errors():
    with pytest.raises(ConfigError, match="match no module"):
        build(target_modules=["nope"])
    with pytest.raises(ConfigError, match="unknown"):
        build(rank=4)


def test_vpt_train_lora(tmp_path, one_thread):
    data = make_image_folder(tmp_path / "data", per_class=6)
    cfg = {"model": {"type": "lora", "backbone": {"name": TINY_VIT_NAME, "pretrained": False,
                                                  "model_kwargs": dict(TINY_VIT)},
                     "lora": {"r": 2, "target_modules": ["qkv", "fc1"]}},
           "optim": {"opt": "adamw", "lr": 0.01},
           "train": {"epochs": 1, "batch_size": 8, "workers": 0, "log_interval": 0}}
    loaded = train_eval_reload(cfg, data, tmp_path)
    assert loaded.lora_config.target_modules == ["qkv", "fc1"]


def test_lora_dropout_is_active_in_training_only():
    model = build(dropout=0.5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # B starts at zero: make the LoRA branch (and so its dropout) matter
    x = torch.randn(4, 3, *model.data_config.input_size[1:])
    model.train()
    assert not model.backbone.training  # the frozen backbone stays in eval ...
    drops = [m for n, m in model.backbone.model.named_modules() if n.endswith("lora_dropout")]
    assert drops and all(m.training for m in drops)  # ... LoRA's dropout trains
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.equal(a, model(x))  # dropout noise in training
    model.eval()
    assert not any(m.training for m in drops)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("targets,expected", [
    (["qkv"], {"blocks.0.attn.qkv", "blocks.1.attn.qkv"}),
    (["blocks.1.attn.qkv"], {"blocks.1.attn.qkv"}),  # peft's suffix form
    (r"blocks\.0\.(attn\.qkv|mlp\.fc1)", {"blocks.0.attn.qkv", "blocks.0.mlp.fc1"}),  # peft's regex form
])
def test_lora_target_modules_follow_peft_forms(targets, expected):
    model = build(r=2, target_modules=targets)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in model.backbone.model.named_modules() if n.endswith("lora_A")}
    assert wrapped == expected


def test_lora_target_modules_errors():
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        build(target_modules="blocks.(")
    with pytest.raises(ConfigError, match=r"match no module.*suffixes.*regex"):
        build(target_modules=r"blocks\.9\.attn\.qkv")


def test_lora_artifact_keys_are_peft_saved_names(tmp_path):
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file
    model = saved_as_trained(tmp_path / "a")
    saved = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    # peft's PeftModel names: the adapter under base_model.model., the linear head as peft's modules_to_save head
    peft_names = {"base_model.model." + k for k in get_peft_model_state_dict(model.backbone.model)}
    assert set(saved) == peft_names | {"base_model.model.head.weight", "base_model.model.head.bias"}
    assert not any(".default." in k for k in saved)  # no in-memory adapter name
    loaded = vpt.from_pretrained(str(tmp_path / "a"))
    for k, v in get_peft_model_state_dict(loaded.backbone.model).items():
        assert torch.equal(v, saved["base_model.model." + k])


def test_lora_artifact_of_the_old_layout_still_loads(tmp_path):
    """vpt <= 0.x: tensors under backbone.model. and head.fc., no peft keys in adapter_config.json."""
    import json

    from safetensors.torch import load_file, save_file
    model = saved_as_trained(tmp_path / "a")
    path = tmp_path / "a" / "adapter_model.safetensors"
    old = {k.replace("base_model.model.head.", "head.fc.").replace("base_model.model.", "backbone.model."): v
           for k, v in load_file(str(path)).items()}
    save_file(old, str(path))
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    keep = ("format", "format_version", "vpt_version", "model_type", "backbone", "prompt", "head", "num_classes",
            "class_names", "train_backbone", "preprocessing")
    cfg = {k: cfg[k] for k in keep if k in cfg}
    cfg["lora"] = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["qkv"]}
    cfg_path.write_text(json.dumps(cfg))
    loaded = vpt.from_pretrained(str(tmp_path / "a"))
    x = torch.randn(2, 3, *model.data_config.input_size[1:])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
