"""benchmarks/pretrain_vit_cifar10.py on a synthetic CIFAR-shaped tarball: trains, resumes bit-exactly,
exports weights that ``--eval-only`` reproduces (MATCH), and runs the mixup / bf16 options."""
import importlib.util
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "pretrain_vit_cifar10.py")
CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture
def script(monkeypatch):
    spec = importlib.util.spec_from_file_location("pretrain_vit_cifar10", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "SPLITS", {"train": 4, "test": 2})  # images per class in the fake tarball
    n = torch.get_num_threads()
    yield mod
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(False)


def fake_tar(path):
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tf:
        for split, per_class in (("train", 4), ("test", 2)):
            for ci, c in enumerate(CLASSES):
                for k in range(per_class):
                    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    a[..., ci % 3] = 255 - 20 * ci  # a class signal
                    buf = io.BytesIO()
                    Image.fromarray(a).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"{split}/{c}/{k:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tf.addfile(info, buf)
    return str(path)


def args(tmp_path, out, *extra):
    return ["--data-tar", str(tmp_path / "c10.tar.gz"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
            "--epochs", "2", "--batch-size", "8", "--warmup-epochs", "1", "--threads", "1", "--log-every", "0",
            "--device", "cpu", *extra]


def test_train_resume_export_eval(script, tmp_path, capsys):
    fake_tar(tmp_path / "c10.tar.gz")
    assert script.main(args(tmp_path, tmp_path / "full")) == 0
    # the same run, interrupted after one epoch and resumed
    assert script.main(args(tmp_path, tmp_path / "split", "--max-epochs-this-run", "1")) == 0
    assert not (tmp_path / "split" / script.WEIGHTS_NAME).exists()
    assert script.main(args(tmp_path, tmp_path / "split")) == 2  # refuses to overwrite without --resume
    assert script.main(args(tmp_path, tmp_path / "split", "--resume")) == 0
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "split" / "results.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]  # resumed == uninterrupted, bit for bit
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["n_train"] == 40 and a["n_test"] == 20 and a["device"]["type"] == "cpu"
    capsys.readouterr()
    rc = script.main(["--eval-only", str(tmp_path / "full" / script.WEIGHTS_NAME), "--data-tar",
                      str(tmp_path / "c10.tar.gz"), "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "MATCH" in out and "MISMATCH" not in out
    assert f"({a['test_correct']}/20)" in out
    # a changed recipe cannot silently continue someone else's state
    with pytest.raises(SystemExit, match="hyper-parameters differ"):
        script.main(args(tmp_path, tmp_path / "split", "--resume", "--mixup", "0.8"))


def test_mixup_bf16_options(script, tmp_path):
    fake_tar(tmp_path / "c10.tar.gz")
    out = tmp_path / "mix"
    assert script.main(args(tmp_path, out, "--mixup", "0.8", "--cutmix", "1.0", "--amp", "bf16", "--epochs", "1")) == 0
    r = json.loads((out / "results.json").read_text())
    assert "Mixup(mixup_alpha=0.8, cutmix_alpha=1.0)" in r["augmentation"] and r["device"]["amp"] == "bf16"
    assert np.isfinite(r["history"][0]["train_loss"]) and 0 <= r["test_top1"] <= 100
    with pytest.raises(SystemExit):
        script.parse_args(args(tmp_path, out, "--mixup", "0.8", "--batch-size", "7"))
