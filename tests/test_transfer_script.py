"""benchmarks/transfer.py: a sweep resumes by skipping result files, but never ones made with other backbone
weights (a re-shipped vpt:NAME keeps its name and changes its file) or other epochs."""
import argparse
import json

import pytest

import transfer  # benchmarks/ is on the test path (pyproject: tool.pytest.ini_options.pythonpath)
from vpt.weights import SHIPPED


def args(**kw):
    base = {"control": False, "weights": None, "backbone": None, "epochs": 10}
    return argparse.Namespace(**{**base, **kw})


def write(path, **rec):
    with open(path, "w") as f:
        json.dump({"epochs": 10, **rec}, f)
    return str(path)


def test_expected_weights():
    shipped = SHIPPED["vit_tiny_cifar10"]["sha256"]
    assert transfer.expected_weights_sha(args(backbone="vpt:vit_tiny_cifar10")) == shipped
    assert transfer.expected_weights_sha(args(backbone="vpt:vit_tiny_cifar10", control=True)) is None
    assert transfer.expected_weights_sha(args(backbone="timm:vit_tiny_patch16_224")) is None


def test_weights_file_sha(tmp_path):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"weights")
    import hashlib
    assert transfer.expected_weights_sha(args(weights=str(w))) == hashlib.sha256(b"weights").hexdigest()


def test_load_record_refuses_other_weights_or_epochs(tmp_path):
    shipped = SHIPPED["vit_tiny_cifar10"]["sha256"]
    a = args(backbone="vpt:vit_tiny_cifar10")
    assert transfer.load_record(str(tmp_path / "missing.json"), a) is None
    same = write(tmp_path / "same.json", backbone_weights_sha256=shipped, test_top1=50.0)
    assert transfer.load_record(same, a)["test_top1"] == 50.0
    for name, rec in (("old_weights", {"backbone_weights_sha256": "0" * 64}),
                      ("unknown_weights", {"backbone_weights_sha256": None}),
                      ("other_epochs", {"backbone_weights_sha256": shipped, "epochs": 30})):
        with pytest.raises(SystemExit, match="other epochs or backbone weights"):
            transfer.load_record(write(tmp_path / f"{name}.json", **rec), a)
    # the control has no weights file to compare; epochs still must match
    assert transfer.load_record(write(tmp_path / "control.json", backbone_weights_sha256=None), args(control=True))
