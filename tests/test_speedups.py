"""train.fp8 is refused where it cannot run; train.compile keeps the compiled step only where it is faster and
says so in results.json."""
import json
import os
import time

import pytest
import torch

from helpers import make_image_folder, tiny_recipe
from vpt.cli import main
from vpt.engine.speedups import choose_compiled, fp8_refusal


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_fp8_refused_without_a_gpu(tmp_path, capsys):
    data = make_image_folder(str(tmp_path / "data"), per_class=4)
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    out = tmp_path / "run"
    rc = main(["train", "-c", recipe, "--data", data, "--output", str(out), "--set", "train.fp8=true"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "train.fp8 needs a CUDA GPU with FP8 matmuls" in err and "set train.fp8: false" in err
    assert not (out / "results.json").exists()


def test_fp8_refusal_names_the_device():
    assert "this run is on cpu" in fp8_refusal(torch.device("cpu"))


def test_choose_compiled_keeps_the_faster_and_restores_state():
    model = torch.nn.BatchNorm1d(3)
    before = model.running_mean.clone()

    def step(delay):
        def run():
            model(torch.randn(4, 3) + 5)  # updates running stats, draws random numbers
            time.sleep(delay)
        return run
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    slow_compiled = choose_compiled(step(0.0), step(0.05), model, torch.device("cpu"), repeats=2)
    assert torch.equal(torch.rand(1), expected)  # the run draws what it would have drawn
    assert torch.equal(model.running_mean, before)
    assert not slow_compiled["used"] and "trained eager" in slow_compiled["reason"]
    fast_compiled = choose_compiled(step(0.05), step(0.0), model, torch.device("cpu"), repeats=2)
    assert fast_compiled["used"] and fast_compiled["compiled_step_ms"] < fast_compiled["eager_step_ms"]


@pytest.mark.slow
def test_train_compile_choice_in_results(tmp_path, monkeypatch):
    """A compiled forward slower than eager (here: a wrapper that sleeps) is dropped, and results.json says why."""
    class SlowCompiled(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, *a, **k):
            time.sleep(0.2)
            return self.net(*a, **k)
    monkeypatch.setattr(torch, "compile", lambda net, **kw: SlowCompiled(net))
    data = make_image_folder(str(tmp_path / "data"), per_class=4)
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1, compile=True)
    out = tmp_path / "run"
    assert main(["train", "-c", recipe, "--data", data, "--output", str(out)]) == 0
    r = json.load(open(os.path.join(out, "results.json")))
    assert r["compile"]["requested"] and not r["compile"]["used"]
    assert r["compile"]["compiled_step_ms"] > r["compile"]["eager_step_ms"]
    assert "trained eager" in r["compile"]["reason"]
