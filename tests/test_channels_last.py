"""``train.channels_last``: NHWC weights and inputs train a CNN with pixel prompts to the same result."""
import json
import os

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import make_image_folder
from vpt.cli import main
from vpt.engine.build import memory_format


def cnn_recipe(path, **train):
    cfg = {
        "model": {"backbone": {"name": "timm:resnet10t", "pretrained": False,
                               "model_kwargs": {"zero_init_last": False,
                                                "pretrained_cfg_overlay": {"input_size": [3, 32, 32]}}},
                  "prompt": {"kind": "pixel_pad", "width": 4}, "train_backbone": True},
        "augment": {"enabled": False},
        "optim": {"opt": "sgd", "lr": 0.05},  # SGD: Adam would amplify rounding in near-zero gradients
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "workers": 0, "log_interval": 0, **train},
    }
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


@pytest.mark.slow
def test_channels_last_trains_like_default(tmp_path, one_thread, monkeypatch):
    from vpt.model import PromptedModel
    seen, forward = [], PromptedModel.forward

    def spy(self, x):  # the layout the model really gets: inputs and the stem's weights
        w = self.backbone.model.conv1[0].weight
        seen.append((x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1,
                     w.is_contiguous(memory_format=torch.channels_last)))
        return forward(self, x)
    monkeypatch.setattr(PromptedModel, "forward", spy)
    data = make_image_folder(tmp_path / "data", per_class=6)
    runs, layouts = {}, {}
    for cl in (False, True):
        seen.clear()
        out = str(tmp_path / f"cl{cl}")
        recipe = cnn_recipe(tmp_path / f"r{cl}.yaml", channels_last=cl)
        assert main(["train", "-c", recipe, "--data", data, "--output", out, "--set", "data.val_fraction=0.25"]) == 0
        runs[cl] = (json.load(open(os.path.join(out, "results.json"))),
                    load_file(os.path.join(out, "last", "adapter_model.safetensors")))
        layouts[cl] = set(seen)
        # the saved artifact evaluates the same way from a fresh process view (NCHW model)
        assert main(["eval", os.path.join(out, "last"), "--data", data, "--split", "val"]) == 0
    assert layouts == {False: {(False, False)}, True: {(True, True)}}  # train and eval steps alike
    assert runs[True][0]["config"]["train"]["channels_last"] is True
    assert set(runs[True][1]) == set(runs[False][1])
    for k, v in runs[False][1].items():
        assert runs[True][1][k].is_contiguous()  # safetensors needs plain layout: the artifact stores NCHW
        torch.testing.assert_close(runs[True][1][k], v, rtol=1e-3, atol=1e-4)


def test_channels_last_eval_matches(one_thread):
    import vpt
    from vpt.backbones import create_backbone
    bb = create_backbone("timm:resnet10t", pretrained=False, init_seed=0,
                         model_kwargs={"zero_init_last": False, "pretrained_cfg_overlay": {"input_size": (3, 32, 32)}})
    model = vpt.create_model(bb, prompt={"kind": "pixel_pad", "width": 4}, num_classes=3).eval()
    assert memory_format(True) is torch.channels_last and memory_format(False) is torch.contiguous_format
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model.to(memory_format=torch.channels_last)
    assert model.backbone.model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)
