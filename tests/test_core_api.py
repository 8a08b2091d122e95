"""Core API: timm-compatible forward_intermediates, peft-style parameter report, error paths, `vpt list`."""
import json
import os
import shutil

import pytest
import torch

import vpt
from vpt.artifact import ArtifactError
from vpt.backbones import BackboneError, create_backbone
from vpt.config import ConfigError

from helpers import TINY_VIT, TINY_VIT_NAME


@pytest.fixture(scope="module")
def vit():
    return create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT, reg_tokens=1))


def x_(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kwargs", [
    dict(), dict(indices=1), dict(indices=[0, -1], norm=True), dict(output_fmt="NLC", return_prefix_tokens=True),
    dict(intermediates_only=True, stop_early=True, indices=[0]), dict(output_dict=True, return_prefix_tokens=True),
])
def test_forward_intermediates_matches_timm_conventions(vit, kwargs):
    """Unprompted: identical to timm's own forward_intermediates; prompted: same shapes, prompts stripped."""
    x = x_()
    plain = vpt.create_model(vit)
    with torch.no_grad():
        ours, theirs = plain.forward_intermediates(x, **kwargs), vit.model.forward_intermediates(x, **kwargs)
    flat = lambda o: [t for t in torch.utils._pytree.tree_leaves(o) if isinstance(t, torch.Tensor)]  # noqa: E731
    assert len(flat(ours)) == len(flat(theirs))
    for a, b in zip(flat(ours), flat(theirs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    prompted = vpt.create_model(vit, prompt={"kind": "vpt_deep", "num_tokens": 5})
    with torch.no_grad():
        out = prompted.forward_intermediates(x, **kwargs)
    assert [t.shape for t in flat(out)] == [t.shape for t in flat(theirs)]


def test_print_trainable_parameters_peft_format(vit, capsys):
    m = vpt.create_model(vit, prompt={"kind": "vpt_deep", "num_tokens": 4}, num_classes=5)
    m.print_trainable_parameters()
    out = capsys.readouterr().out.strip()
    trainable = 2 * 4 * 32 + 32 * 5 + 5
    total = trainable + sum(p.numel() for p in vit.parameters())
    assert out == f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def test_mlp_and_pool_choices(vit):
    x = x_()
    for pool in ("cls", "avg", "backbone"):
        m = vpt.create_model(vit, prompt="vpt_shallow", num_classes=3, head={"kind": "mlp", "pool": pool, "hidden_dim": 8})
        assert m(x).shape == (2, 3)
    m = vpt.create_model(vit, prompt="vpt_deep", num_classes=3, head={"pool": "avg"})
    with torch.no_grad():
        f = m.forward_features(x)
        torch.testing.assert_close(m.forward_head(f, pre_logits=True), f[:, 2:].mean(1))  # 1 cls + 1 register


# --- errors name the problem and the fix ------------------------------------------------------------
def test_unknown_prompt_kind_suggests(vit):
    with pytest.raises(ConfigError, match=r"unknown prompt kind 'vpt-depp'.*did you mean 'vpt_deep'"):
        vpt.create_model(vit, prompt="vpt-depp")


def test_unknown_prompt_field_suggests(vit):
    with pytest.raises(ConfigError, match=r"unknown config key 'prompt.num_token'.*did you mean 'num_tokens'"):
        vpt.create_model(vit, prompt={"kind": "vpt_deep", "num_token": 3})


def test_bad_layer_choice(vit):
    with pytest.raises(ConfigError, match="last_k must be in 1..2"):
        vpt.create_model(vit, prompt={"kind": "vpt_deep", "last_k": 5})


def test_cls_pool_without_class_token():
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT, class_token=False, global_pool="avg"))
    with pytest.raises(ConfigError, match="needs a class token"):
        vpt.create_model(bb, num_classes=2, head={"pool": "cls"})


@pytest.mark.parametrize("name,kw,why", [
    ("timm:swin_tiny_patch4_window7_224", dict(img_size=32, window_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 1)),
     "hierarchical"),
    ("timm:beit_base_patch16_224", dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=1),
     "relative-position bias"),
])
def test_refused_architectures_say_why(name, kw, why):
    with pytest.raises(BackboneError, match=why) as e:
        vpt.create_model(name, prompt="vpt_deep", pretrained=False, model_kwargs=kw)
    assert "Pixel prompts (pixel_pad, pixel_patch) still work" in str(e.value)
    m = vpt.create_model(name, prompt={"kind": "pixel_pad", "width": 2}, num_classes=2, pretrained=False, model_kwargs=kw)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_backbone_name_errors():
    with pytest.raises(BackboneError, match="needs a library prefix"):
        create_backbone("vit_base_patch16_224")
    with pytest.raises(BackboneError, match=r"unknown backbone library 'tim'.*did you mean 'timm'"):
        create_backbone("tim:vit_base_patch16_224")
    with pytest.raises(BackboneError, match=r"unknown timm architecture 'vit_tiny_patch16_22'.*did you mean"):
        create_backbone("timm:vit_tiny_patch16_22", pretrained=False)


def test_hub_download_offline_says_how_to_pass_a_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="--weights PATH"):
        create_backbone("timm:vit_tiny_patch16_224.augreg_in21k", model_kwargs=TINY_VIT)


def test_local_weights_file(tmp_path, vit):
    from safetensors.torch import save_file
    path = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, path)
    kw = dict(TINY_VIT, reg_tokens=1)
    loaded = create_backbone(TINY_VIT_NAME, weights=path, model_kwargs=kw, init_seed=123)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.forward_features(x_()), vit.model.forward_features(x_()), rtol=0, atol=0)
    assert loaded.identity()["weights_id"].startswith("file:")
    with pytest.raises(BackboneError, match="does not fit"):
        create_backbone(TINY_VIT_NAME, weights=path, model_kwargs=dict(TINY_VIT, embed_dim=64))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_backbone(TINY_VIT_NAME, weights=str(tmp_path / "nope.safetensors"), model_kwargs=kw)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneError, match="cannot read weights file"):
        create_backbone(TINY_VIT_NAME, weights=str(bad), model_kwargs=kw)


@pytest.fixture
def artifact(tmp_path, vit):
    m = vpt.create_model(vit, prompt="vpt_deep", num_classes=2, class_names=["a", "b"])
    d = str(tmp_path / "art")
    m.save_pretrained(d)
    return d


def test_artifact_errors(artifact, tmp_path):
    with pytest.raises(ArtifactError, match="artifact folder not found"):
        vpt.from_pretrained(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="has no adapter_config.json"):
        vpt.from_pretrained(str(empty))
    cfg_path = os.path.join(artifact, "adapter_config.json")
    cfg = json.load(open(cfg_path))

    newer = dict(cfg, format_version=99)
    json.dump(newer, open(cfg_path, "w"))
    with pytest.raises(ArtifactError, match="newer than this vpt reads.*upgrade vpt"):
        vpt.from_pretrained(artifact)

    open(cfg_path, "w").write("{ not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        vpt.from_pretrained(artifact)

    json.dump(cfg, open(cfg_path, "w"))
    wpath = os.path.join(artifact, "adapter_model.safetensors")
    data = open(wpath, "rb").read()
    open(wpath, "wb").write(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="adapter_model.safetensors is corrupt"):
        vpt.from_pretrained(artifact)
    os.remove(wpath)
    with pytest.raises(ArtifactError, match="no adapter_model.safetensors"):
        vpt.from_pretrained(artifact)


def test_artifact_on_another_backbone_names_the_field(artifact):
    other = create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=7, model_kwargs=dict(TINY_VIT, reg_tokens=1))
    with pytest.raises(ArtifactError, match=r"weights_id is 'random:0' in the artifact but 'random:7'"):
        vpt.from_pretrained(artifact, backbone=other)
    wider = create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT, embed_dim=64))
    with pytest.raises(ArtifactError, match="model_kwargs is"):
        vpt.from_pretrained(artifact, backbone=wider)
    with pytest.raises(ArtifactError, match="made for backbone"):
        vpt.from_pretrained(artifact, backbone="timm:vit_small_patch16_224")


def test_artifact_with_moved_weights_file(tmp_path, vit):
    from safetensors.torch import save_file
    w = str(tmp_path / "bb.safetensors")
    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, w)
    kw = dict(TINY_VIT, reg_tokens=1)
    m = vpt.create_model(TINY_VIT_NAME, weights=w, model_kwargs=kw, prompt="vpt_shallow", num_classes=2)
    d = str(tmp_path / "art")
    m.save_pretrained(d)
    moved = str(tmp_path / "moved.safetensors")
    os.rename(w, moved)
    with pytest.raises(ArtifactError, match="weights file .* is missing.*pass weights=PATH"):
        vpt.from_pretrained(d)
    loaded = vpt.from_pretrained(d, weights=moved)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_()), m(x_()), rtol=0, atol=0)
    other = str(tmp_path / "other.safetensors")
    save_file({k: torch.zeros_like(v).contiguous() for k, v in vit.model.state_dict().items()}, other)
    with pytest.raises(ArtifactError, match="sha256 differs"):
        vpt.from_pretrained(d, weights=other)


def test_cli_list(capsys):
    from vpt.cli import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad", "pixel_patch", "timm:", "open_clip:"):
        assert name in out


def test_dynamic_img_size_other_resolution():
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT, dynamic_img_size=True))
    m = vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": 3}, num_classes=2)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        assert m.forward_features(x).shape == (2, 1 + 6 * 8, 32)
        inter = m.forward_intermediates(x, intermediates_only=True)
        ref = bb.model.forward_intermediates(x, intermediates_only=True)
    assert [t.shape for t in inter] == [t.shape for t in ref] == [(2, 32, 6, 8)] * 2


@pytest.mark.slow
@pytest.mark.subprocess
def test_import_vpt_is_light_and_every_registry_entry_resolves_on_its_own():
    """`import vpt` and `vpt --help` load no torch (the public names load on first use); in a fresh process
    each registry name imports its own module and is registered by it, so no lookup depends on import order;
    `vpt.X` and `from vpt import X` give the defining module's object; a submodule (`vpt.data`) loads on first
    access as well, so `import vpt; vpt.data.load_splits` does not depend on what was imported before."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo}
    probe = ("import sys, vpt; assert 'torch' not in sys.modules, 'import vpt loaded torch'\n"
             "try:\n    getattr(vpt, 'sweep.study')\nexcept AttributeError:\n    pass\n"
             "else:\n    raise AssertionError('a dotted name reached a nested module')\n"
             "assert 'vpt.sweep' not in sys.modules, 'a dotted name imported vpt.sweep'; "
             "assert 'vpt.data' not in sys.modules; load = vpt.data.load_splits; import vpt.data as d; "
             "assert load is d.load_splits, 'vpt.<submodule> after a plain import vpt'\n"
             "from vpt.registry import PROMPTS, HEADS, BACKBONES, MODEL_TYPES, TASKS\n"
             "for reg in (PROMPTS, HEADS, BACKBONES, MODEL_TYPES, TASKS):\n"
             "    for name in reg.names():\n"
             "        assert reg.get(name).name == name, (reg.what, name)\n"
             "print('ok')")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    helped = subprocess.run([sys.executable, "-c", "import sys; from vpt.cli import main\ntry:\n    main(['--help'])\n"
                             "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, sorted(sys.modules)"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "sweep" in helped.stdout, helped.stderr[-2000:]
    from vpt.model import create_model
    from vpt.prompts import DeepPromptConfig
    assert vpt.create_model is create_model and vpt.DeepPromptConfig is DeepPromptConfig
    assert set(vpt.__all__) <= set(dir(vpt))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vpt.nope  # noqa: B018


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_commit_names_this_checkout_only(tmp_path):
    """Results record the commit of the vpt source they ran (``versions.vpt_commit``): HEAD of this checkout
    (with -dirty for changed tracked files); None for a copy outside git and for a package that merely sits
    inside some other repository."""
    import subprocess
    from vpt.engine.trainer import versions
    from vpt.version import source_commit
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = lambda *a, cwd=repo: subprocess.run(["git", *a], cwd=cwd, capture_output=True, text=True)  # noqa: E731
    head, top = git("rev-parse", "HEAD"), git("rev-parse", "--show-toplevel")
    if head.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(repo):  # a git checkout
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        assert source_commit() == head.stdout.strip() + ("-dirty" if dirty else "")
        assert versions()["vpt_commit"] == source_commit()
    copy = tmp_path / "copy" / "vpt"
    shutil.copytree(os.path.join(repo, "vpt"), copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_commit(str(copy)) is None  # not in a git work tree
    other = tmp_path / "other"
    nested = other / "site-packages" / "vpt"
    shutil.copytree(copy, nested)
    assert git("init", "-q", str(other), cwd=tmp_path).returncode == 0
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x", cwd=other)
    assert source_commit(str(nested)) is None  # inside another repository: not vpt's commit
