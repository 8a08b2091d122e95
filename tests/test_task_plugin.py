"""A task registered from outside the package (tests/toy_task.py) trains through the engine with nothing
task-specific in it: one process, exact resume after an interruption, AMP with a GradScaler, gradient
accumulation and callbacks that stop the run; DDP over two CPU processes under torchrun is in test_torchrun.py."""
import os

import pytest
import torch
from safetensors.torch import load_file

import toy_task
from vpt.engine import Callback, train

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _cfg(out, **train_kw):
    cfg = toy_task.ToyConfig()
    cfg.output.dir = str(out)
    for k, v in train_kw.items():
        setattr(cfg.train, k, v)
    return cfg


def _weights(run, sub="last"):
    return load_file(os.path.join(run, sub, "model.safetensors"))


class Interrupt(Callback):
    """Stands in for a kill: raises after optimizer step ``at`` (after the previous epoch's checkpoint)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, run, step, loss):
        if step == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "straight"
    return str(out), train(toy_task.ToyRegression(_cfg(out)))


def test_toy_task_trains_and_selects_on_val(straight):
    out, res = straight
    assert res["task"] == "toy_regression" and res["world_size"] == 1 and res["selection"] == "best val neg_mse"
    rows = open(os.path.join(out, "metrics.csv")).read().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,lr,train_loss,")
    losses = [float(r.split(",")[2]) for r in rows[1:]]
    assert losses[-1] < losses[0] / 2  # it learns
    assert res["val"]["mse"] == pytest.approx(-res["val"]["neg_mse"]) and res["best_epoch"] >= 1
    assert torch.load(os.path.join(out, "run_state.pt"), weights_only=True)["epoch"] == 3


def test_toy_task_interrupted_run_resumes_to_the_same_tensors(straight, tmp_path):
    out, res = straight
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):  # 30 train samples, batch 8: 4 steps an epoch; stop inside epoch 2
        train(toy_task.ToyRegression(_cfg(cut)), callbacks=[Interrupt(6)])
    assert torch.load(cut / "run_state.pt", weights_only=True)["epoch"] == 1
    res2 = train(toy_task.ToyRegression(_cfg(cut)), resume=True)
    assert res2["best_epoch"] == res["best_epoch"] and res2["val"] == res["val"]
    for sub in ("best", "last"):
        a, b = _weights(out, sub), _weights(str(cut), sub)
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("error:Detected call of `lr_scheduler.step")  # the engine's documented choice
def test_toy_task_amp_float16_uses_a_grad_scaler_and_accumulates(tmp_path):
    out = tmp_path / "amp"
    res = train(toy_task.ToyRegression(_cfg(out, amp_dtype="float16", grad_accum_steps=2)))
    state = torch.load(out / "run_state.pt", weights_only=True)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    assert res["config"]["train"]["amp_dtype"] == "float16"
    rows = open(out / "metrics.csv").read().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0]


def test_callback_can_stop_the_run(tmp_path):
    class StopAfterFirst(Callback):
        def on_epoch_end(self, run, epoch, row):
            assert "val_neg_mse" in row  # val metrics reach the callback
            run.request_stop("enough")

    res = train(toy_task.ToyRegression(_cfg(tmp_path / "stop")), callbacks=[StopAfterFirst()])
    assert res["stopped"] == "enough" and res["best_epoch"] == 1
    assert len(open(tmp_path / "stop" / "metrics.csv").read().splitlines()) == 2
