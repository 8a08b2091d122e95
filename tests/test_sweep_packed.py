"""Packed trials: K settings trained in one pass end with the weights of K separate runs."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vpt.engine.config import OptimSection, SchedSection
from vpt.errors import ConfigError
from vpt.tasks.classification import ModelSection, build_model
from vpt.engine.optim import build_optimizer_and_scheduler
from vpt.sweep.packed import (PackedClassifier, build_packed_model, build_packed_optimizer, check_packable,
                              clip_per_trial, packed_loss)

from helpers import TINY_VIT, TINY_VIT_NAME

pytestmark = [pytest.mark.sweep, pytest.mark.usefixtures("one_thread")]

CLASSES = ["a", "b", "c"]
PROMPTS = {
    "deep": {"kind": "vpt_deep", "num_tokens": 3},
    "deep_last1": {"kind": "vpt_deep", "num_tokens": 2, "last_k": 1},  # block 0 runs once for all trials
    "shallow": {"kind": "vpt_shallow", "num_tokens": 2},
    "prefix": {"kind": "vpt_prefix", "num_tokens": 2},
    "pad": {"kind": "pixel_pad", "width": 4},
    "linear": None,
}
SETTINGS = {  # per trial: (optim fields, sched fields, clip)
    "sgd": [({"opt": "sgd", "lr": 0.5, "weight_decay": 0.0}, {"warmup_epochs": 1}),
            ({"opt": "sgd", "lr": 0.05, "weight_decay": 0.01, "momentum": 0.5}, {"sched": "constant"}),
            ({"opt": "sgd", "lr": 0.2, "weight_decay": 0.001, "clip_grad": 0.1, "head_lr": 0.01}, {})],
    "adamw": [({"opt": "adamw", "lr": 1e-2, "weight_decay": 0.05}, {}),
              ({"opt": "adamw", "lr": 1e-3, "weight_decay": 0.0, "betas": [0.8, 0.99]}, {"min_lr": 1e-4})],
}
STEPS, EPOCHS, B = 3, 2, 4


def _data():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(B, 3, 32, 32, generator=g), torch.randint(0, 3, (B,), generator=g)) for _ in range(STEPS)]


def _section(prompt):
    return ModelSection(backbone={"name": TINY_VIT_NAME, "pretrained": False, "model_kwargs": dict(TINY_VIT)},
                        prompt=prompt, head={"kind": "linear"})


def _cfgs(setting):
    return [(OptimSection(**o), SchedSection(**s)) for o, s in SETTINGS[setting]]


def _separate(section, optim, sched, data, fast):
    """One lone run, as the engine trains it: seeded build, summed loss / batch, clip, step, schedule."""
    torch.manual_seed(0)
    model = build_model(section, CLASSES)
    model.fast = fast
    opt, sch, _ = build_optimizer_and_scheduler(model, optim, sched, B, STEPS, EPOCHS)
    model.train()
    for _ in range(EPOCHS):
        for x, y in data:
            loss = F.cross_entropy(model(x), y, reduction="sum") / B
            loss.backward()
            if optim.clip_grad:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], optim.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sch.step()
    return model.trainable_state_dict()


def _packed(section, cfgs, data, fast):
    torch.manual_seed(0)
    model = build_packed_model(section, CLASSES, len(cfgs))
    for m in model.trials:
        m.fast = fast
    opt, sch, _ = build_packed_optimizer(model, [o for o, _ in cfgs], [s for _, s in cfgs], B, STEPS, EPOCHS)
    model.train()
    for _ in range(EPOCHS):
        for x, y in data:
            loss, _ = packed_loss(model(x), y, [0.0] * len(cfgs))
            (loss / B).backward()
            clip_per_trial(model, [o.clip_grad for o, _ in cfgs])
            opt.step()
            opt.zero_grad(set_to_none=True)
            sch.step()
    return [model.trial_tensors(k) for k in range(len(cfgs))]


# every prompt kind with SGD; AdamW on two kinds (the optimizer does not depend on the prompt kind)
CASES = [(p, "sgd") for p in PROMPTS] + [("deep", "adamw"), ("linear", "adamw")]


@pytest.mark.sweep
@pytest.mark.parametrize("prompt,setting", CASES)
def test_packed_trials_equal_separate_runs(prompt, setting):
    """Bit for bit on the reference block path. The fast path's kernels (a query subset, prompt keys
    projected apart) round differently for different batch sizes even in ONE model (x vs x repeated), so
    there packed and lone runs agree to float rounding, not bit for bit."""
    section, cfgs, data = _section(PROMPTS[prompt]), _cfgs(setting), _data()
    for fast in (False, True):
        packed = _packed(section, cfgs, data, fast)
        for k, (optim, sched) in enumerate(cfgs):
            alone = _separate(section, optim, sched, data, fast)
            assert alone.keys() == packed[k].keys()
            for name, t in alone.items():
                if fast:
                    torch.testing.assert_close(packed[k][name], t, rtol=1e-5, atol=1e-6, msg=f"trial {k} {name}")
                else:
                    assert torch.equal(packed[k][name], t), (
                        f"trial {k} {name}: max diff {(packed[k][name] - t).abs().max().item():.3g}")
    # the trials really differ (a mix-up of trials would not show otherwise)
    name = next(iter(packed[0]))
    assert not torch.equal(packed[0][name], packed[1][name])


@pytest.mark.sweep
def test_head_only_trials_share_one_backbone_pass():
    model = build_packed_model(_section(None), CLASSES, 4)
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        feats, logits = model.features(x), model(x)
    assert feats.shape[0] == 2  # one set of features for all 4 trials
    assert logits.shape == (4, 2, 3)
    for k, m in enumerate(model.trials):
        torch.testing.assert_close(logits[k], m(x))


@pytest.mark.sweep
def test_packable_fields_and_refusals():
    check_packable(["optim.lr", "optim.weight_decay", "sched.warmup_epochs", "train.label_smoothing"])
    with pytest.raises(ConfigError, match="model.prompt.num_tokens"):
        check_packable(["optim.lr", "model.prompt.num_tokens"])
    with pytest.raises(ConfigError, match="optim.opt"):
        check_packable(["optim.opt"])
    full = dataclasses.replace(_section(None), train_backbone=True)
    with pytest.raises(ConfigError, match="fine-tuning"):
        build_packed_model(full, CLASSES, 2)
    model = build_packed_model(_section(None), CLASSES, 2)
    with pytest.raises(ConfigError, match="one optimizer class"):
        build_packed_optimizer(model, [OptimSection(opt="sgd"), OptimSection(opt="adamw")],
                               [SchedSection()] * 2, B, STEPS, EPOCHS)
    assert isinstance(model, PackedClassifier) and len(model) == 2
