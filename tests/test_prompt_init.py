"""Token prompt inits beside VPT's uniform one. ``patch_embed``: every prompt starts as a patch token the frozen
backbone's own embedding makes (patch embedding + position) from noise images. ``data`` (SPT, Wang et al. 2024):
each prompted block's prompts start as patch tokens that enter that block for a batch of the training images,
drawn by ``vpt train``. Both are refused where they cannot mean anything."""
import os

import pytest
import torch
from safetensors.torch import load_file

import vpt
from vpt.config import ConfigError
from vpt.engine import Callback, train
from vpt.model import init_prompts_from_images, sample_block_tokens, sample_patch_tokens
from vpt.sweep.packed import build_packed_model
from vpt.tasks.classification import ModelSection

from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder, tiny_recipe


def model(prompt, seed=0):
    torch.manual_seed(seed)
    return vpt.create_model(TINY_VIT_NAME, prompt=prompt, num_classes=3, pretrained=False, model_kwargs=TINY_VIT)


def test_patch_embed_init_starts_from_patch_tokens_not_vpts_uniform():
    m = model({"kind": "vpt_deep", "num_tokens": 5, "init": "patch_embed"})
    prompts = torch.stack(list(m.prompt.prompts.values()))  # (depth, P, D)
    assert prompts.shape == (2, 5, 32) and len({tuple(r.tolist()) for r in prompts.reshape(-1, 32)}) == 10
    again = model({"kind": "vpt_deep", "num_tokens": 5, "init": "patch_embed"})
    torch.testing.assert_close(torch.stack(list(again.prompt.prompts.values())), prompts)  # seeded: reproducible
    other = model({"kind": "vpt_deep", "num_tokens": 5, "init": "patch_embed"}, seed=1)
    assert not torch.allclose(torch.stack(list(other.prompt.prompts.values())), prompts)
    torch.manual_seed(1)
    with torch.no_grad():
        h, _ = m.backbone.embed(torch.randn(8, 3, 32, 32))
    tokens = h[:, 1:].reshape(-1, 32)  # the backbone's own patch tokens of noise images
    uniform = torch.stack(list(model({"kind": "vpt_deep", "num_tokens": 5}).prompt.prompts.values()))
    assert abs(prompts.std() - tokens.std()) < 0.25 * tokens.std()  # their scale ...
    assert abs(uniform.std() - tokens.std()) > 0.25 * tokens.std()  # ... which VPT's uniform init does not have
    shallow = model({"kind": "vpt_shallow", "num_tokens": 3, "init": "patch_embed"})
    assert abs(shallow.prompt.prompts["0"].std() - tokens.std()) < 0.5 * tokens.std()


def test_sample_patch_tokens_are_rows_of_the_embedding_output():
    m = model(None)
    torch.manual_seed(3)
    got = sample_patch_tokens(m.backbone, m.data_config, 20)  # 20 of 3 images x 16 patches (one spare)
    torch.manual_seed(3)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h, _ = m.backbone.embed(x)
    rows = h[:, 1:].reshape(-1, 32)  # (48, 32)
    assert got.shape == (20, 32)
    dist = torch.cdist(got, rows)  # every sampled token is one of the embedding's patch tokens, none repeated
    assert torch.all(dist.min(dim=1).values < 1e-2) and len(set(dist.argmin(dim=1).tolist())) == 20


def test_patch_embed_init_is_refused_where_it_means_nothing():
    with pytest.raises(ConfigError, match=r"patch_embed copies patch tokens of the backbone's width.*drop project_dim"):
        model({"kind": "vpt_deep", "init": "patch_embed", "project_dim": 8})
    with pytest.raises(ConfigError, match=r"unknown.*|.*patch_embed.*"):
        model({"kind": "vpt_deep", "init": "patch-embed"})


# --- init "data" (SPT) ---------------------------------------------------------------------------------------------
def _block_inputs(backbone, x):
    """The patch tokens (B*N, D) entering each block of the frozen backbone, by hand."""
    with torch.no_grad():
        h, ctx = backbone.embed(x)
        out = []
        for i in range(backbone.layout.depth):
            out.append(h[:, 1:].reshape(-1, h.shape[-1]))
            h = backbone.block(i, h, ctx)
    return out


def _rows_of(got, rows):
    """Every row of ``got`` is a row of ``rows``, none twice."""
    dist = torch.cdist(got, rows, compute_mode="donot_use_mm_for_euclid_dist")  # exact: a copied row is at 0
    return bool(torch.all(dist.min(dim=1).values < 1e-5)) and len(set(dist.argmin(dim=1).tolist())) == len(got)


def test_data_init_draws_each_block_from_the_tokens_entering_it():
    m = model({"kind": "vpt_deep", "num_tokens": 4, "init": "data"})
    assert m.prompt.pending_data_init
    uniform = {k: p.detach().clone() for k, p in m.prompt.prompts.items()}
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    assert m.init_prompts_from_images(x, seed=7) and not m.prompt.pending_data_init
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: the global RNG is untouched
    inputs = _block_inputs(m.backbone, x)
    assert not torch.allclose(inputs[0], inputs[1])  # block 1's inputs are not the embedding's tokens
    for i in range(2):
        p = m.prompt.prompts[str(i)].detach()
        assert _rows_of(p, inputs[i]) and not _rows_of(p, inputs[1 - i]), f"block {i}"
        assert not torch.allclose(p, uniform[str(i)])
    again = model({"kind": "vpt_deep", "num_tokens": 4, "init": "data"}, seed=3)  # the model's own seed: no matter
    again.init_prompts_from_images(x, seed=7)
    other = model({"kind": "vpt_deep", "num_tokens": 4, "init": "data"})
    other.init_prompts_from_images(x, seed=8)
    for k, p in m.prompt.prompts.items():
        assert torch.equal(again.prompt.prompts[k], p) and not torch.equal(other.prompt.prompts[k], p)
    # the last k blocks only, and shallow (block 0)
    last = model({"kind": "vpt_deep", "num_tokens": 2, "last_k": 1, "init": "data"})
    last.init_prompts_from_images(x)
    assert list(last.prompt.prompts) == ["1"] and _rows_of(last.prompt.prompts["1"].detach(), inputs[1])
    shallow = model({"kind": "vpt_shallow", "num_tokens": 5, "init": "data"})
    shallow.init_prompts_from_images(x)
    assert _rows_of(shallow.prompt.prompts["0"].detach(), inputs[0])
    # other inits are left alone
    plain = model({"kind": "vpt_deep", "num_tokens": 4})
    before = {k: p.detach().clone() for k, p in plain.prompt.prompts.items()}
    assert not plain.init_prompts_from_images(x)
    assert all(torch.equal(plain.prompt.prompts[k], p) for k, p in before.items())
    assert not model(None).init_prompts_from_images(x)


def test_data_init_refusals():
    with pytest.raises(ConfigError, match=r"data copies patch tokens of the backbone's width.*drop project_dim"):
        model({"kind": "vpt_deep", "init": "data", "project_dim": 8})
    m = model({"kind": "vpt_deep", "num_tokens": 20, "init": "data"})
    with pytest.raises(ConfigError, match=r"needs 20 patch tokens per block and 1 image\(s\) give 16"):
        m.init_prompts_from_images(torch.randn(1, 3, 32, 32))
    assert m.prompt.pending_data_init


def test_packed_trials_draw_the_lone_runs_prompts():
    section = ModelSection(backbone={"name": TINY_VIT_NAME, "pretrained": False, "model_kwargs": dict(TINY_VIT)},
                           prompt={"kind": "vpt_deep", "num_tokens": 3, "init": "data"}, head={"kind": "linear"})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    packed = build_packed_model(section, ["a", "b"], 3)
    assert init_prompts_from_images(packed, x, seed=5) == 3
    assert init_prompts_from_images(packed, x, seed=6) == 0  # drawn once: nothing waits any more
    torch.manual_seed(0)
    alone = model({"kind": "vpt_deep", "num_tokens": 3, "init": "data"})
    alone.init_prompts_from_images(x, seed=5)
    for k in range(3):
        assert not packed.trials[k].prompt.pending_data_init
        for name, p in alone.prompt.prompts.items():
            assert torch.equal(packed.trials[k].prompt.prompts[name], p)


class _Start(Callback):
    """Keeps the prompts a run starts from, then stops it after its first epoch."""

    def on_train_start(self, run):
        self.prompts = {k: p.detach().clone() for k, p in run.model.prompt.prompts.items()}
        self.model = run.model

    def on_epoch_end(self, run, epoch, row):
        run.request_stop("test: one epoch is enough")


def test_vpt_train_draws_the_prompts_from_the_training_images(tmp_path):
    from vpt.commands._common import resolve_config
    from vpt.data import build_transforms
    from vpt.data.dataset import load_image
    from vpt.tasks import task_class

    data = make_image_folder(tmp_path / "data", per_class=4)  # 12 images: fewer than 64, so every one is read
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=2)
    task_cls = task_class("classification")

    def cfg(out, init):
        return resolve_config(task_cls.config_cls, recipe, {
            "data.root": data, "data.val_fraction": 0.0, "output.dir": str(tmp_path / out), "train.seed": 3,
            "model.prompt": {"kind": "vpt_deep", "num_tokens": 2, "init": init}}, [])

    start = _Start()
    res = train(task_cls(cfg("run", "data")), callbacks=[start])
    assert res["stopped"]
    log = open(tmp_path / "run" / "train.log").read()
    assert "prompt init data: prompts drawn from the patch tokens of 12 training images" in log
    m = start.model
    _, eval_tf = build_transforms(m.data_config, cfg("x", "data").augment)
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(data) for f in fs)
    x = torch.stack([eval_tf(load_image(f), 0) for f in files])
    inputs = _block_inputs(m.backbone, x)
    for i in range(2):
        assert _rows_of(start.prompts[str(i)], inputs[i]), f"block {i}"
    # the same seed draws the same prompts; resuming keeps the trained ones
    again = _Start()
    train(task_cls(cfg("again", "data")), callbacks=[again])
    assert all(torch.equal(again.prompts[k], p) for k, p in start.prompts.items())
    train(task_cls(cfg("run", "data")), resume=True)
    saved = load_file(os.path.join(tmp_path, "run", "last", "adapter_model.safetensors"))
    assert not torch.equal(saved["prompt.prompts.0"], start.prompts["0"])
    log = open(tmp_path / "run" / "train.log").read()
    assert "resumed" in log and log.count("prompt init data:") == 1  # a resumed run draws nothing


def test_a_clip_image_tower_draws_its_prompts_from_the_training_images(tmp_path):
    """CLIP tasks build their model through the classification task: the image tower's prompts are drawn too."""
    pytest.importorskip("open_clip")
    from vpt.cli import main
    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vpt", "recipes",
                          "clip_tiny_offline.yaml")
    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    assert main(["train", "-c", recipe, "--data", data, "--output", str(out), "--epochs", "1",
                 "--set", "model.prompt={kind: vpt_deep, num_tokens: 2, init: data}"]) == 0
    assert "prompt init data: prompts drawn from the patch tokens of" in open(out / "train.log").read()
