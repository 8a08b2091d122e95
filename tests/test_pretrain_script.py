"""benchmarks/pretrain_vit_cifar10.py on a synthetic CIFAR-shaped tarball: trains, resumes bit-exactly,
exports weights that ``--eval-only`` reproduces (MATCH), and runs the mixup / bf16 options."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture
def script(monkeypatch):
    import pretrain_vit_cifar10 as mod  # benchmarks/ is on the test path (pyproject: tool.pytest.ini_options)
    monkeypatch.setattr(mod, "SPLITS", {"train": 4, "test": 2})  # images per class in the fake tarball
    # the shipped architecture shrunk (width 32, 2 blocks): the script's logic is what is under test here
    monkeypatch.setattr(mod, "MODEL_KWARGS", {**mod.MODEL_KWARGS, "embed_dim": 32, "depth": 2, "num_heads": 2})
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_init_from_previous_run(script, tmp_path):
    """A second stage starts from the first one's exported weights, and records where it came from."""
    from safetensors.torch import load_file, save_file

    fake_tar(tmp_path / "c10.tar.gz")
    assert script.main(args(tmp_path, tmp_path / "s1", "--epochs", "1")) == 0
    w1 = tmp_path / "s1" / script.WEIGHTS_NAME
    r1 = json.loads((tmp_path / "s1" / "results.json").read_text())
    # lr ~0: the second stage's weights stay the first stage's, so the init really was loaded
    assert script.main(args(tmp_path, tmp_path / "s2", "--epochs", "1", "--init-from", str(w1),
                            "--lr", "1e-12", "--min-lr", "1e-12")) == 0
    r2 = json.loads((tmp_path / "s2" / "results.json").read_text())
    a, b = load_file(str(w1)), load_file(str(tmp_path / "s2" / script.WEIGHTS_NAME))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert r2["test_correct"] == r1["test_correct"]
    assert r2["init"]["sha256"] == r1["weights_sha256"] and r2["init"]["test_top1"] == r1["test_top1"]
    assert r2["init"]["epochs"] == 1 and r2["init"]["command"] == r1["command"]
    assert r2["total_train_wall_time_s"] == pytest.approx(r1["train_wall_time_s"] + r2["train_wall_time_s"])
    # resuming with another init file is another recipe
    assert script.main(args(tmp_path, tmp_path / "s3", "--epochs", "2", "--init-from", str(w1),
                            "--max-epochs-this-run", "1")) == 0
    w_other = tmp_path / "s2" / script.WEIGHTS_NAME
    with pytest.raises(SystemExit, match="hyper-parameters differ"):
        script.main(args(tmp_path, tmp_path / "s3", "--epochs", "2", "--init-from", str(w_other), "--resume"))
    # files that are not this script's export are refused with the reason
    with pytest.raises(SystemExit, match="no such file"):
        script.main(args(tmp_path, tmp_path / "s4", "--init-from", str(tmp_path / "nope.safetensors")))
    foreign = tmp_path / "foreign.safetensors"
    save_file(a, str(foreign), metadata={"vpt": json.dumps({"model_name": "resnet18", "model_kwargs": {}})})
    with pytest.raises(SystemExit, match="made for resnet18"):
        script.main(args(tmp_path, tmp_path / "s5", "--init-from", str(foreign)))
