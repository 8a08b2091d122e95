"""model.type 'peft': peft's own tuners on vpt's backbones, their artifacts in peft's layout (both ways), merge."""
import json
import warnings

import pytest
import torch
import yaml

import vpt
from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder, perturb_trainable, train_eval_reload
from vpt.backbones import BackboneConfig, create_backbone
from vpt.config import ConfigError
from vpt.errors import ArtifactError

peft = pytest.importorskip("peft")
from vpt.peft_model import PeftClassifier  # noqa: E402

# peft tuners on the tiny ViT (width 32): settings that fit its layers
TUNERS = {
    "LORA": {"r": 4},
    "DORA": {"peft_type": "LORA", "r": 4, "use_dora": True},
    "RSLORA": {"peft_type": "LORA", "r": 4, "use_rslora": True},
    "IA3": {"target_modules": ["qkv", "fc2"]},
    "LOHA": {"r": 4},
    "LOKR": {"r": 4},
    "BOFT": {"boft_block_size": 4},
    "OFT": {"r": 0, "oft_block_size": 8},
    "FOURIERFT": {"n_frequency": 50},
    "LN_TUNING": {},
    "HRA": {"r": 4},
}
# FourierFT starts from a random spectrum (peft's default, as the paper): no identity start
IDENTITY_START = [t for t in TUNERS if t != "FOURIERFT"]


def spec(name):
    return {"peft_type": name, **TUNERS[name]}


def backbone():
    return create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=0, model_kwargs=dict(TINY_VIT))


def build(peft_spec, **kw):
    torch.manual_seed(0)
    return PeftClassifier(backbone(), peft=peft_spec, num_classes=3, **kw)


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", IDENTITY_START)
def test_tuner_starts_as_the_linear_probe(name):
    model = build(spec(name))
    probe = vpt.create_model(backbone(), num_classes=3)
    probe.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(X), probe(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(TUNERS))
def test_tuner_trains_saves_and_reloads(name, tmp_path):
    model = build(spec(name))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(not n.startswith("head.") for n in trainable)  # the tuner's own tensors train ...
    assert all(not p.requires_grad for n, p in model.backbone.model.named_parameters()
               if ".base_layer." in n)  # ... the wrapped layers stay frozen
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    torch.nn.functional.cross_entropy(model(X), torch.tensor([0, 1])).backward()
    opt.step()
    model.eval()
    model.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["model_type"] == "peft" and cfg["peft_type"] == spec(name)["peft_type"]  # peft's keys too
    loaded = vpt.from_pretrained(str(tmp_path))
    assert type(loaded) is PeftClassifier
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X))
    from safetensors.torch import load_file
    assert all(k.startswith("base_model.model.") for k in load_file(str(tmp_path / "adapter_model.safetensors")))


@pytest.mark.parametrize("name", ["LORA", "DORA", "IA3", "LOHA", "LOKR", "OFT", "BOFT", "HRA", "FOURIERFT",
                                  "LN_TUNING"])
def test_merge_is_exact_and_unmerge_restores_the_frozen_weights(name):
    model = perturb_trainable(build(spec(name)), scale=0.1)
    frozen = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    with torch.no_grad():
        before = model(X)
        model.merge()
        torch.testing.assert_close(model(X), before, rtol=1e-5, atol=1e-5)
        model.unmerge()
        torch.testing.assert_close(model(X), before, rtol=0, atol=0)
    for k, v in model.backbone.model.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_merge_alpha_interpolates_between_frozen_and_tuned():
    model = perturb_trainable(build(spec("LORA")), scale=0.1)
    probe = vpt.create_model(backbone(), num_classes=3)
    probe.head.load_state_dict(model.head.state_dict())
    half = build(spec("LORA"))
    half.load_state_dict(model.state_dict())
    with torch.no_grad():
        for n, p in half.named_parameters():
            if "lora_B" in n:
                p.mul_(0.5)  # W0 + 0.5 * B A: the LoRA update at half scale
        model.merge(alpha=0.0)
        torch.testing.assert_close(model(X), probe(X), rtol=1e-5, atol=1e-5)
        model.unmerge().merge(alpha=0.5)
        torch.testing.assert_close(model(X), half(X), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="already merged"):
        model.merge()
    model.unmerge()
    with pytest.raises(ConfigError, match="not merged"):
        model.unmerge()
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        model.merge(alpha=1.5)


@pytest.mark.parametrize("bad,match", [
    ({"peft_type": "ADALORA"}, "update_and_allocate"),
    ({"peft_type": "PREFIX_TUNING"}, "vpt_prefix"),
    ({"peft_type": "PROMPT_TUNING"}, "vpt's prompt kinds"),
    ({"peft_type": "LORAA"}, "did you mean 'LORA'"),
    ({"r": 4}, "peft_type is required"),
    ({"peft_type": "LORA", "rank": 4}, r"unknown key model.peft.rank for peft_type LORA.*allowed: .*lora_alpha"),
    ({"peft_type": "LORA", "modules_to_save": ["head"]}, "saves its head itself"),
    ({"peft_type": "LORA", "megatron_core": "os"}, "never names code"),
    ({"peft_type": "LORA", "init_lora_weights": "pissa"}, "rewrites the frozen backbone's weights"),
    ({"peft_type": "LORA", "target_modules": ["nope"]}, r"match no module.*qkv"),
    ({"peft_type": "LORA", "target_modules": "blocks.("}, "not a valid regular expression"),
    ({"peft_type": "VERA", "r": 4}, "shared by all layers.*use LORA"),
    ({"peft_type": "VBLORA"}, "shared by all layers.*use LORA"),
    ({"peft_type": "BOFT", "boft_block_size": 5}, "peft cannot put BOFT on this backbone's layers"),
])
def test_bad_peft_configs_are_refused_with_the_reason(bad, match):
    with pytest.raises(ConfigError, match=match):
        build(bad)


def test_open_clip_tower_takes_peft_tuners():
    pytest.importorskip("open_clip")
    from helpers import BACKBONES
    name, kw = BACKBONES["open_clip"]
    bb = create_backbone(name, pretrained=False, init_seed=0, model_kwargs=kw)
    torch.manual_seed(0)
    model = PeftClassifier(bb, peft={"peft_type": "LOHA", "r": 2, "target_modules": ["c_fc", "c_proj"]},
                           num_classes=3)
    probe = vpt.create_model(create_backbone(name, pretrained=False, init_seed=0, model_kwargs=kw), num_classes=3)
    probe.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(X), probe(X), rtol=1e-5, atol=1e-5)
    assert any("hada_w1_a" in n for n, p in model.named_parameters() if p.requires_grad)


# --- peft interop, both ways ----------------------------------------------------------------------------
def timm_twin(adapter, num_classes):
    """A plain timm model with ``adapter``'s frozen weights and a head of ``num_classes`` (what a peft user has)."""
    import timm
    name = adapter.config.name.split(":", 1)[1]
    kw = {k: v for k, v in adapter.config.model_kwargs.items() if k != "pretrained_cfg_overlay"}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    state = {k.replace(".base_layer.", "."): v for k, v in adapter.model.state_dict().items()
             if not any(t in k for t in ("lora_", "ia3_", "hada_"))}
    missing = model.load_state_dict(state, strict=False).missing_keys
    assert set(missing) <= {"head.weight", "head.bias"}, missing
    return model.eval()


def test_vpt_lora_artifact_loads_in_peft_with_the_same_outputs(tmp_path):
    from vpt.lora import LoraClassifier
    torch.manual_seed(0)
    model = perturb_trainable(LoraClassifier(backbone(), lora={"r": 4, "target_modules": ["qkv", "fc1"]}, num_classes=3), scale=0.1)
    model.save_pretrained(str(tmp_path))
    base = timm_twin(backbone(), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft names vpt's own keys as unexpected and ignores them
        pm = peft.PeftModel.from_pretrained(base, str(tmp_path))
    assert pm.peft_config["default"].r == 4
    with torch.no_grad():
        torch.testing.assert_close(pm(X), model(X), rtol=1e-5, atol=1e-5)


def peft_saved(path, base, **config):
    """A LoRA adapter saved by peft itself (get_peft_model + save_pretrained) for the timm model ``base``."""
    torch.manual_seed(2)
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc2"],
                                                   modules_to_save=["head"], **config))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    pm.save_pretrained(str(path))
    return pm.eval()


def test_peft_saved_lora_loads_in_vpt_with_the_same_outputs(tmp_path):
    pm = peft_saved(tmp_path / "a", timm_twin(backbone(), 3))
    loaded = vpt.from_pretrained(str(tmp_path / "a"), backbone=backbone())
    assert type(loaded) is PeftClassifier and loaded.num_classes == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), pm(X), rtol=1e-5, atol=1e-5)
    # without a backbone to put it on, the message says how to give one
    with pytest.raises(ArtifactError, match=r"backbone='timm:ARCH.TAG'.*base_model_name_or_path"):
        vpt.from_pretrained(str(tmp_path / "a"))


def test_peft_saved_adapter_without_a_head_is_refused(tmp_path):
    base = timm_twin(backbone(), 3)
    peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["qkv"])).save_pretrained(str(tmp_path))
    with pytest.raises(ArtifactError, match="modules_to_save=\\['head'\\]"):
        vpt.from_pretrained(str(tmp_path), backbone=backbone())


@pytest.mark.subprocess
def test_vpt_predict_runs_a_peft_saved_adapter_named_by_its_base_model(tmp_path):
    """peft's base_model_name_or_path names the backbone (here vpt's shipped ViT; a timm hub id works alike)."""
    import subprocess
    import sys
    from PIL import Image
    shipped = create_backbone("vpt:vit_tiny_cifar10")
    from vpt.weights import resolve_shipped
    cfg, _ = resolve_shipped(BackboneConfig(name="vpt:vit_tiny_cifar10"))
    import timm
    from safetensors.torch import load_file
    kw = {k: v for k, v in cfg.model_kwargs.items() if k != "pretrained_cfg_overlay"}
    base = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, **kw)
    base.load_state_dict({k: v for k, v in load_file(cfg.weights).items() if not k.startswith("head.")},
                         strict=False)
    pm = peft_saved(tmp_path / "a", base.eval())
    conf = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = "vpt:vit_tiny_cifar10"
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(conf))
    img = tmp_path / "x.png"
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(img)
    out = subprocess.run([sys.executable, "-m", "vpt", "predict", str(tmp_path / "a"), str(img), "--topk", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    pred = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip().startswith("{") else \
        json.loads(out.stdout)
    # vpt's preprocessing of the shipped backbone, then the peft model: the same top class and score
    from vpt.data.transforms import EvalTransform
    x = EvalTransform(shipped.data_config())(Image.open(img).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        probs = pm(x).softmax(-1)[0]
    text = json.dumps(pred)
    assert str(int(probs.argmax())) in text
    assert f"{float(probs.max()):.3f}"[:4] in text


def test_vpt_train_peft_tuner_and_eval(tmp_path, one_thread):
    from vpt.cli import main
    data = make_image_folder(tmp_path / "data", per_class=6)
    cfg = {"model": {"type": "peft", "backbone": {"name": TINY_VIT_NAME, "pretrained": False,
                                                  "model_kwargs": dict(TINY_VIT)},
                     "peft": {"peft_type": "LOHA", "r": 2, "target_modules": ["qkv", "fc1"]}},
           "optim": {"opt": "adamw", "lr": 0.01},
           "train": {"epochs": 1, "batch_size": 8, "workers": 0, "log_interval": 0}}
    loaded = train_eval_reload(cfg, data, tmp_path)
    assert loaded.peft_spec["peft_type"] == "LOHA" and loaded.peft_spec["target_modules"] == ["qkv", "fc1"]
    # a recipe error is a user error (exit code 2) that names the field
    cfg["model"]["peft"] = {"peft_type": "LOHA", "rnak": 2}
    recipe = tmp_path / "r.yaml"  # the recipe train_eval_reload wrote, edited below
    recipe.write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(recipe), "--data", data, "--output", str(tmp_path / "run2")]) == 2
