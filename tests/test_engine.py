"""Engine pieces: lr scaling and schedule, parameter groups, global-batch sampling, metrics, atomic writes."""
import os

import numpy as np
import pytest
import torch

from helpers import TINY_VIT, TINY_VIT_NAME
from vpt.engine import (GlobalBatchSampler, MetricsWriter, OptimSection, RunDirError, SchedSection,
                        build_optimizer_and_scheduler, load_run_state, param_groups, prepare_run_dir, resolve_lr,
                        save_artifact_atomic, save_run_state)
from vpt.engine.optim import lr_factor
from vpt.metrics import classification_metrics, draw_confusion_matrix


@pytest.fixture(scope="module")
def tiny_model():
    import vpt
    return vpt.create_model(TINY_VIT_NAME, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3,
                            pretrained=False, model_kwargs=TINY_VIT, class_names=["a", "b", "c"])


def test_vpt_lr_scaling():
    assert resolve_lr(OptimSection(lr_base=0.1), 128) == pytest.approx(0.05)
    assert resolve_lr(OptimSection(lr=0.3, lr_base=0.1), 128) == 0.3


def test_schedule_warmup_then_cosine():
    total, warm = 100, 10
    assert lr_factor(0, total, warm) == 0.0
    assert lr_factor(5, total, warm) == pytest.approx(0.5)
    assert lr_factor(10, total, warm) == pytest.approx(1.0)
    assert lr_factor(55, total, warm) == pytest.approx(0.5)
    assert lr_factor(100, total, warm, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(70, total, warm, sched="constant") == 1.0


def test_no_weight_decay_on_prompts_bias_norm(tiny_model):
    groups = param_groups(tiny_model, weight_decay=1e-4)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    decayed = [names[id(p)] for p in groups[0]["params"]]
    undecayed = [names[id(p)] for p in groups[1]["params"]]
    assert decayed == ["head.fc.weight"] and groups[0]["weight_decay"] == 1e-4
    assert "head.fc.bias" in undecayed and any(n.startswith("prompt") for n in undecayed)
    opt, sched, lr = build_optimizer_and_scheduler(tiny_model, OptimSection(opt="sgd", lr_base=0.1),
                                                   SchedSection(warmup_epochs=1), batch_size=64,
                                                   steps_per_epoch=4, epochs=3)
    assert lr == pytest.approx(0.025) and opt.param_groups[0]["lr"] == 0.0  # warmup starts at warmup_lr=0
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)


@pytest.mark.parametrize("world,accum,n,batch", [(2, 1, 23, 8), (2, 2, 30, 8), (3, 1, 10, 4)])
def test_global_batches_split_over_ranks_and_micro_steps(world, accum, n, batch):
    single = GlobalBatchSampler(n, batch, seed=5)
    single.set_epoch(2)
    plans = []
    for r in range(world):
        s = GlobalBatchSampler(n, batch, world, r, accum, seed=5)
        s.set_epoch(2)
        plans.append(s.plan())
    for step, gb in enumerate(single.global_batches()):
        parts = [plans[r][step][a] for a in range(accum) for r in range(world)]
        assert sorted(i for p in parts for i in p) == sorted(gb.tolist())
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
    other = GlobalBatchSampler(n, batch, seed=5)
    other.set_epoch(3)
    assert [b.tolist() for b in other.global_batches()] != [b.tolist() for b in single.global_batches()]


def test_classification_metrics_values():
    logits = torch.tensor([[3., 2, 1], [1, 3, 2], [3, 1, 2], [1, 2, 3], [2, 3, 1]])
    y = torch.tensor([0, 1, 1, 2, 2])
    m = classification_metrics(logits, y, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(60.0)
    assert m["per_class_accuracy"] == {"a": 100.0, "b": 50.0, "c": 50.0}
    assert m["mean_per_class_recall"] == pytest.approx(200 / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert m["top5"] == 100.0


def test_run_state_write_failure_keeps_the_good_file(tmp_path, monkeypatch):
    path = str(tmp_path / "run_state.pt")
    save_run_state(path, {"epoch": 1, "w": torch.ones(3)})

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_run_state(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_run_state(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["run_state.pt"]  # no temp file left behind


def test_artifact_write_failure_keeps_the_good_artifact(tmp_path, tiny_model, monkeypatch):
    import safetensors.torch
    import vpt
    d = str(tmp_path / "best")
    save_artifact_atomic(tiny_model, d)
    before = {n: t.clone() for n, t in tiny_model.trainable_state_dict().items()}

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with torch.no_grad():
        tiny_model.head.fc.bias.add_(1.0)
    try:
        with pytest.raises(OSError):
            save_artifact_atomic(tiny_model, d)
    finally:
        with torch.no_grad():
            tiny_model.head.fc.bias.sub_(1.0)
    monkeypatch.undo()
    back = vpt.from_pretrained(d)
    for n, t in back.trainable_state_dict().items():
        assert torch.equal(t, before[n])
    assert sorted(os.listdir(tmp_path)) == ["best"]


def test_metrics_writer_drops_rows_of_unfinished_epochs(tmp_path):
    p = str(tmp_path / "metrics.csv")
    w = MetricsWriter(p)
    for e in (1, 2, 3):
        w.write({"epoch": e, "loss": 1.0 / e})
    w = MetricsWriter(p, keep_before_epoch=3)  # resume after epoch 2
    w.write({"epoch": 3, "loss": 0.25})
    lines = open(p).read().splitlines()
    assert lines == ["epoch,loss", "1,1", "2,0.5", "3,0.25"]


def test_run_dir_guard(tmp_path):
    d = str(tmp_path / "run")
    prepare_run_dir(d).release()
    open(os.path.join(d, "config.yaml"), "w").write("x: 1\n")
    open(os.path.join(d, "metrics.csv"), "w").write("epoch,train_loss\n1,0.5\n")  # one finished epoch
    open(os.path.join(d, "mine.txt"), "w").write("keep me")
    with pytest.raises(RunDirError, match="1 epoch finished.*--resume.*--overwrite"):
        prepare_run_dir(d)
    prepare_run_dir(d, resume=True).release()
    prepare_run_dir(d, overwrite=True).release()
    assert sorted(os.listdir(d)) == [".vpt_run", ".vpt_run.lock", "mine.txt"]  # marker, lock, the user's file
    with pytest.raises(RunDirError, match="no run to resume"):
        prepare_run_dir(str(tmp_path / "fresh"), resume=True)


def test_confusion_png(tmp_path):
    from PIL import Image
    p = str(tmp_path / "cm.png")
    draw_confusion_matrix([[5, 1], [0, 4]], ["cat", "dog"], p)
    img = Image.open(p)
    assert img.format == "PNG" and img.size[0] > 50
    arr = np.asarray(img.convert("RGB"))
    assert (arr[..., 2] > arr[..., 0] + 100).any()  # shaded cells drawn


def test_constant_warmup_holds_warmup_lr_then_follows_the_schedule():
    from vpt.engine.optim import lr_factor
    f = [lr_factor(s, 100, 10, "cosine", 0.005, 0.0, "constant") for s in range(12)]
    assert f[:10] == [0.005] * 10 and f[10] == 1.0 and f[11] < 1.0
    ramp = [lr_factor(s, 100, 10, "cosine", 0.005, 0.0) for s in range(10)]
    assert ramp[0] == 0.005 and all(a < b for a, b in zip(ramp, ramp[1:]))


def _groups_by_name(model, **kw):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["weight_decay"], g.get("lr"), sorted(names[id(p)] for p in g["params"]))
            for g in param_groups(model, weight_decay=0.1, **kw)]


def test_prompts_anywhere_get_no_weight_decay_by_role_not_name():
    """Roles come from the model (its prompt modules, head, norms, biases): prompts deep inside a detector
    and CoOp's text context are found without looking at names, and a name never decides."""
    import vpt
    from vpt.clip import create_clip_model
    from vpt.detection import create_detector
    det = create_detector(vpt.create_backbone(TINY_VIT_NAME, pretrained=False,
                                              model_kwargs={**TINY_VIT, "dynamic_img_size": True}),
                          ["a", "b"], prompt={"kind": "vpt_deep", "num_tokens": 2},
                          detector={"kind": "fcos", "head_convs": 1, "pyramid": {"out_channels": 32, "scales": [1.0]}})
    roles = det.param_roles()
    assert roles["detector.backbone.vit.prompt.prompts.0"] == ("prompt",)
    (wd, _, decayed), (_, _, undecayed) = _groups_by_name(det)
    assert wd == 0.1 and "detector.backbone.vit.prompt.prompts.0" in undecayed
    assert all(roles[n][0] == "head" and len(roles[n]) == 1 for n in decayed)  # conv / linear weights of the head
    assert any(roles[n] == ("head", "norm") for n in undecayed) and any(roles[n] == ("head", "bias") for n in undecayed)

    tiny_clip = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
                     text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=1))
    clip = create_clip_model(vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, model_kwargs=tiny_clip),
                             ["cat", "dog"], text={"num_tokens": 2})
    assert clip.param_roles()["text_prompt.ctx"] == ("prompt",)
    assert [g[2] for g in _groups_by_name(clip)] == [["text_prompt.ctx"]] and _groups_by_name(clip)[0][0] == 0.0


def test_head_lr_follows_the_head_role(tiny_model):
    groups = _groups_by_name(tiny_model, head_lr=0.5)
    assert [(wd, lr) for wd, lr, _ in groups] == [(0.0, None), (0.1, 0.5), (0.0, 0.5)]
    assert groups[1][2] == ["head.fc.weight"] and groups[2][2] == ["head.fc.bias"]
    assert all(n.startswith("prompt") for n in groups[0][2])

    class Renamed(torch.nn.Module):  # a parameter called 'prompt' that the model declares as backbone
        def __init__(self):
            super().__init__()
            self.prompt = torch.nn.Parameter(torch.zeros(3, 3))

        def param_roles(self):
            return {"prompt": ("backbone",)}
    assert _groups_by_name(Renamed()) == [(0.1, None, ["prompt"])]
