"""The ViT that ships with vpt: loads by name, is the file its card names, and has the stated accuracy."""
import json
import os
import tarfile

import numpy as np
import pytest
import torch

import vpt
from vpt.backbones.base import sha256_file
from vpt.weights import SHIPPED, _HERE

TAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg.tar.gz")


def test_shipped_file_matches_its_card():
    entry = SHIPPED["vit_tiny_cifar10"]
    path = os.path.join(_HERE, entry["file"])
    assert sha256_file(path) == entry["sha256"]
    card = open(os.path.join(_HERE, entry["card"]), encoding="utf-8").read()
    assert entry["sha256"] in card and f"{entry['cifar10_test_top1']:.2f}" in card


def test_loads_by_name_as_a_frozen_token_backbone():
    bb = vpt.create_backbone("vpt:vit_tiny_cifar10")
    assert bb.layout.grid == (8, 8) and bb.layout.embed_dim == 192
    dc = bb.data_config()
    assert dc.input_size == (3, 32, 32) and dc.mean == (0.5, 0.5, 0.5) and dc.crop_pct == 1.0
    assert bb.identity()["weights_id"] == "file:" + SHIPPED["vit_tiny_cifar10"]["sha256"]
    m = vpt.create_model("vpt:vit_tiny_cifar10", prompt="vpt_deep", num_classes=3)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.skipif(not os.path.isfile(TAR), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_pretrained_features_are_real_on_cifar10_test():
    """A nearest-class-mean probe built on 25 test images per class scores far above chance on 25 other
    test images per class: the shipped weights carry CIFAR-10 features (random init scores near 10-25 %).
    The archive lists test/ before train/, so reading stops after the first 10k of its 60k entries."""
    from PIL import Image
    per = 50  # per class: the first 25 build the class means ("train"), the next 25 are scored ("test")
    data = {"train": ([], []), "test": ([], [])}
    counts = {}
    with tarfile.open(TAR) as tar:
        for m in tar:
            if not (m.isfile() and m.name.endswith(".jpg")):
                continue
            split, cls = m.name.split("/")[-3:-1]
            if split != "test":
                break
            n = counts.get(cls, 0)
            if n < per:
                counts[cls] = n + 1
                img = np.asarray(Image.open(tar.extractfile(m)).convert("RGB"), dtype=np.float32) / 255.0
                part = "train" if n < per // 2 else "test"
                data[part][0].append(img)
                data[part][1].append(cls)
    assert len(counts) == 10 and set(counts.values()) == {per}, counts
    classes = sorted(set(data["train"][1]))
    model = vpt.create_model("vpt:vit_tiny_cifar10")

    def feats(split):
        x = torch.from_numpy(np.stack(data[split][0])).permute(0, 3, 1, 2)
        x = (x - 0.5) / 0.5
        with torch.no_grad():
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        return torch.nn.functional.normalize(f, dim=1), torch.tensor([classes.index(c) for c in data[split][1]])

    ftr, ytr = feats("train")
    fte, yte = feats("test")
    means = torch.nn.functional.normalize(torch.stack([ftr[ytr == c].mean(0) for c in range(10)]), dim=1)
    acc = ((fte @ means.T).argmax(1) == yte).float().mean().item()
    print(f"nearest-class-mean top-1 {acc:.3f}")
    assert acc > 0.5, acc
