"""benchmarks/scale_study.py --cpu-smoke: two toy sizes pretrained through pretrain_vit_cifar10.py (a synthetic
CIFAR-shaped tarball), then linear / VPT-deep / LoRA / full sweeps for one of them on a toy transfer task through transfer_sweep.py
with each size's own architecture and weights file, then the table and the gap-vs-parameters PNG from the records."""
import hashlib
import io
import json
import tarfile

import pytest

import scale_study as ss  # benchmarks/ is on the test path (pyproject: tool.pytest.ini_options.pythonpath)

from helpers import make_image_folder
from test_pretrain_script import fake_tar

pytestmark = [pytest.mark.sweep, pytest.mark.subprocess, pytest.mark.slow]


def test_cpu_smoke_pretrains_tunes_and_plots(tmp_path, monkeypatch, capsys):
    import pretrain_vit_cifar10 as pv
    monkeypatch.setattr(pv, "SPLITS", {"train": 4, "test": 2})  # images per class in the fake tarball
    fake_tar(tmp_path / "c10.tar.gz")
    root = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        make_image_folder(str(root / "mnist" / split), classes=("a", "b"), per_class=n, size=32, seed=len(split))
    (root / "mnist" / "manifest.json").write_text(json.dumps({"source_sha256": "0" * 64, "licence": "toy"}))
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    for name in ("head.yaml", "lora.yaml", "full.yaml"):
        (spaces / name).write_text("optim.lr: [0.001]\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"{ss.START}\n{ss.END}\n")
    argv = ["pretrain", "--cpu-smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
            "--data-tar", str(tmp_path / "c10.tar.gz"), "--cache-dir", str(tmp_path / "cache"),
            "--data-root", str(root), "--tasks", "mnist", "--spaces-dir", str(spaces), "--pruner", "none",
            "--extend-edges", "0", "--jobs", "2", "--write", "--readme", str(readme), "--plot", str(tmp_path / "s.png")]
    assert ss.main(argv) == 0  # both sizes
    assert ss.main(["transfer", *argv[1:], "--sizes", "toy64"]) == 0  # one size's sweeps (4 arms) keep this short
    assert ss.main(["table", *argv[1:]]) == 0
    pre = {s: json.load(open(tmp_path / "out" / f"pretrain_{s}.json")) for s in ("toy32", "toy64")}
    assert pre["toy32"]["model_kwargs"]["embed_dim"] == 32 and pre["toy64"]["model_kwargs"]["embed_dim"] == 64
    assert pre["toy64"]["n_params"] > pre["toy32"]["n_params"] and pre["toy32"]["weights_sha256"]
    for size in ("toy64",):
        for arm in ss.ARMS:
            rec = json.load(open(tmp_path / "out" / "e10" / f"scale_{size}" / "mnist" / f"{arm}.json"))
            assert rec["backbone_weights_sha256"] == pre[size]["weights_sha256"]  # its own pretrained file
            assert rec["config"]["model"]["backbone"]["model_kwargs"]["embed_dim"] == pre[size]["model_kwargs"]["embed_dim"]
            assert rec["epochs"] == 1 and rec["test_n"] == 1
    text = readme.read_text()
    full = json.load(open(tmp_path / "out" / "e10" / "scale_toy64" / "mnist" / "full.json"))["test_top1_mean"]
    vpt = json.load(open(tmp_path / "out" / "e10" / "scale_toy64" / "mnist" / "vpt_deep.json"))["test_top1_mean"]
    assert f"| toy64 | {pre['toy64']['n_params'] / 1e6:.2f} M | {pre['toy64']['test_top1']:.2f} | 1 |" in text
    assert f"{vpt:.1f} ({full - vpt:+.1f})" in text
    assert "| toy32 | " in text and (tmp_path / "s.png").stat().st_size > 5000
    capsys.readouterr()
    assert ss.main(["transfer", *argv[1:], "--sizes", "toy64", "--dry-run"]) == 0  # finished sweeps are skipped
    assert "4 sweeps: 4 done, 0 to run" in capsys.readouterr().out

    # the way back from a lent machine: one bundle, extracted elsewhere, gives the same table
    bundle = tmp_path / "scale.tar.gz"
    assert ss.main(["bundle", *argv[1:], "--bundle", str(bundle)]) == 0
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
    assert "records/e10/scale_toy64/mnist/vpt_deep.json" in names and "records/pretrain_toy32.json" in names
    assert "pretrain/toy64/vit_toy64_cifar10.safetensors" in names and "pretrain/toy64/results.json" in names
    there = ["--cpu-smoke", "--work", str(tmp_path / "work2"), "--out", str(tmp_path / "out2")]
    assert ss.main(["unbundle", "--bundle", str(bundle), *there]) == 0
    assert (tmp_path / "work2" / "pretrain" / "toy64" / "vit_toy64_cifar10.safetensors").read_bytes() == \
        (tmp_path / "work" / "pretrain" / "toy64" / "vit_toy64_cifar10.safetensors").read_bytes()
    readme2 = tmp_path / "README2.md"
    readme2.write_text(f"{ss.START}\n{ss.END}\n")
    assert ss.main(["table", *there, "--write", "--readme", str(readme2), "--plot", str(tmp_path / "s.png")]) == 0
    assert readme2.read_text() == text
    assert ss.main(["unbundle", "--bundle", str(bundle), *there]) == 0  # again: identical files are kept
    # a size limit that only the records fit: weights are left out and listed, not dropped silently
    small = tmp_path / "small.tar.gz"
    records_only = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*.json"))
    capsys.readouterr()
    limit = str(records_only / 2**20 + 0.01)
    assert ss.main(["bundle", *argv[1:], "--bundle", str(small), "--bundle-max-mib", limit]) == 0
    assert "left out pretrain/toy" in capsys.readouterr().out
    with tarfile.open(small) as tar:
        index = json.load(tar.extractfile("bundle.json"))
        assert not any(n.endswith(".safetensors") for n in tar.getnames())
    assert {w["file"] for w in index["weights_left_out"]} == {f"pretrain/{s}/vit_{s}_cifar10.safetensors"
                                                             for s in ("toy32", "toy64")}


def _bundle(path, members, index_files=None):
    with tarfile.open(path, "w:gz") as tar:
        files = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()} if index_files is None else index_files
        for name, data in {"bundle.json": json.dumps({"files": files}).encode(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("members, index, match", [
    ({"records/../../evil.json": b"{}"}, None, "unsafe path"),
    ({"pretrain/ti/evil.py": b"x"}, None, "unexpected member"),
    ({"pretrain/xl/results.json": b"{}"}, None, "unexpected member"),  # not a size this script knows
    ({"records/a b/.json": b"{}"}, None, "unsafe path"),
    ({"records/a.json": b"{}"}, {"records/a.json": "0" * 64}, "does not match its sha256"),
    ({"records/a.json": b"{}"}, {"records/a.json": hashlib.sha256(b"{}").hexdigest(), "records/b.json": "0" * 64},
     "lacks: records/b.json"),
])
def test_unbundle_refuses_damaged_or_hostile_bundles(tmp_path, members, index, match):
    _bundle(tmp_path / "b.tar.gz", members, index)
    with pytest.raises(SystemExit, match=match):
        ss.main(["unbundle", "--bundle", str(tmp_path / "b.tar.gz"), "--work", str(tmp_path / "w"),
                 "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()
    assert not (tmp_path.parent / "evil.json").exists()


def test_unbundle_keeps_a_differing_file(tmp_path):
    _bundle(tmp_path / "b.tar.gz", {"records/a.json": b'{"x": 1}'})
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "a.json").write_text('{"x": 2}')
    with pytest.raises(SystemExit, match="exists and differs"):
        ss.main(["unbundle", "--bundle", str(tmp_path / "b.tar.gz"), "--work", str(tmp_path / "w"),
                 "--out", str(tmp_path / "o")])
    assert (tmp_path / "o" / "a.json").read_text() == '{"x": 2}'
