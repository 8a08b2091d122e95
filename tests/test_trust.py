"""Issue 17: a shared artifact can never run code, bad input never passes silently, user errors are messages.

Each exploit carries a marker-file payload that would create a file if it ever ran; the tests assert the file
does not exist and that a clear vpt error was raised instead."""
import errno
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vpt
import vpt.data  # used as vpt.data.X: without it a test run alone fails (vpt imports submodules lazily)
from vpt.artifact import from_pretrained, inspect_artifact
from vpt.cli import main
from vpt.errors import ArtifactError, ConfigError, DataError, VptError

from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


class Payload:
    """Unpickling this creates ``marker``: proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path, marker):
    """A torch checkpoint (what torch.load / timm / open_clip read) whose unpickling creates ``marker``."""
    torch.save({"state_dict": Payload(marker)}, str(path))
    assert not os.path.exists(marker)  # writing it ran nothing
    return str(path)


def outcome(fn):
    """The exception ``fn`` raised (None if it returned), so a test can check side effects first."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (the caller asserts the type)
        return e
    return None


def test_payload_is_live(tmp_path):
    """The payload is a real exploit: unpickled, it creates the marker (so 'marker absent' below means inert)."""
    marker = tmp_path / "PWNED"
    torch.load(write_payload(tmp_path / "p.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A valid tiny classifier artifact (vpt_deep + linear head); tests copy it before editing."""
    d = tmp_path_factory.mktemp("art") / "a"
    m = vpt.create_model(TINY_VIT_NAME, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3,
                         class_names=["cat", "dog", "frog"], pretrained=False, model_kwargs=dict(TINY_VIT))
    m.save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="module")
def clip_art(tmp_path_factory):
    pytest.importorskip("open_clip")
    from vpt.clip import create_clip_model
    d = tmp_path_factory.mktemp("clipart") / "a"
    bb = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, model_kwargs=TINY_CLIP)
    create_clip_model(bb, ["cat", "dog"], prompt="vpt_shallow", head="linear").save_pretrained(str(d))
    return str(d)


def edited(src, dst, edit):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "adapter_config.json")
    with open(path) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return str(dst)


# --- 1. a crafted adapter_config.json runs no code and allocates nothing unbounded -----------------------
def test_open_clip_pretrained_image_path_payload_is_inert(clip_art, tmp_path):
    marker = tmp_path / "PWNED"
    payload = write_payload(tmp_path / "payload.pt", marker)

    def edit(cfg):
        cfg["backbone"]["model_kwargs"].update(pretrained_image_path=payload, weights_only=False)
    d = edited(clip_art, tmp_path / "evil", edit)
    err = outcome(lambda: from_pretrained(d))
    assert not marker.exists(), "the artifact's payload ran"
    assert isinstance(err, ArtifactError) and "pretrained_image_path is not allowed in an artifact" in str(err)
    # and through the CLI, with a clear message and exit status 2
    assert main(["inspect", d]) == 2
    assert not marker.exists()


def test_timm_checkpoint_path_is_refused(art, tmp_path):
    marker = tmp_path / "PWNED"
    payload = write_payload(tmp_path / "payload.pth", marker)
    d = edited(art, tmp_path / "evil", lambda c: c["backbone"]["model_kwargs"].update(checkpoint_path=payload))
    err = outcome(lambda: from_pretrained(d))
    assert not marker.exists(), "the artifact's payload ran"
    assert isinstance(err, ArtifactError) and "checkpoint_path is not allowed" in str(err)


@pytest.mark.parametrize("key,value,match", [
    ("pretrained_cfg_overlay", {"file": "/etc/passwd"}, "pretrained_cfg_overlay.file is not allowed"),
    ("pretrained_cfg", {"url": "http://example.invalid/w.pth"}, "pretrained_cfg is not allowed"),
    ("cache_dir", "/tmp/x", "cache_dir is not allowed"),
    ("embed_dim", 1048576, r"embed_dim = 1048576 is outside the allowed range"),
    ("depth", 10 ** 9, "depth = 1000000000 is outside"),
    ("mlp_ratio", float("nan"), "non-finite number NaN"),
    ("block_fn", "os.system", "block_fn is not allowed"),
    ("no_such_option", 1, "unknown key adapter_config.backbone.model_kwargs.no_such_option"),
])
def test_model_kwargs_allow_list(art, tmp_path, key, value, match):
    d = edited(art, tmp_path / "evil", lambda c: c["backbone"]["model_kwargs"].update({key: value}))
    with pytest.raises(ArtifactError, match=match):
        from_pretrained(d)


def test_model_type_never_imports_a_module(art, tmp_path, capsys):
    """An unregistered model_type named a module that was imported: '__main__' ran the CLI in the caller."""
    sys.modules.pop("vpt.__main__", None)
    d = edited(art, tmp_path / "evil", lambda c: c.update(model_type="__main__"))
    img = make_image_folder(tmp_path / "imgs", classes=("a",), per_class=1)
    assert main(["predict", d, os.path.join(img, "a", "000.png")]) == 2
    assert "vpt.__main__" not in sys.modules
    assert "unknown model type '__main__'" in capsys.readouterr().err
    from vpt.tasks.classification import ensure_model_type
    ensure_model_type("__main__")
    assert "vpt.__main__" not in sys.modules


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["prompt"].update(kind="os.system"), r"prompt.kind: unknown prompt kind 'os.system'"),
    (lambda c: c["prompt"].update(num_tokens=10 ** 8), "num_tokens = 100000000 is outside"),
    (lambda c: c["head"].update(hidden_dim="big"), "head.hidden_dim must be an integer"),
    (lambda c: c.update(num_classes=10 ** 12), "num_classes = 1000000000000 is outside"),
    (lambda c: c.update(format_version=99), "newer than this vpt reads"),
    (lambda c: c.update(surprise={"a": 1}), "unknown key adapter_config.surprise"),
    (lambda c: c["backbone"].update(name="timm:../../etc"), "is not 'library:architecture"),
    (lambda c: c["backbone"].update(name="pickle:x"), "unknown backbone library 'pickle'"),
    (lambda c: c["preprocessing"].update(std=[0, 0, 0]), r"preprocessing.std\[0\] = 0 is outside"),
])
def test_schema_refuses_before_building(art, tmp_path, edit, match):
    d = edited(art, tmp_path / "evil", edit)
    with pytest.raises(ArtifactError, match=match):
        inspect_artifact(d)


def test_clip_templates_never_name_a_file(clip_art, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("a photo of {c}\n")

    def edit(cfg):
        cfg["head"].update(kind="zeroshot", templates=str(secret))
    d = edited(clip_art, tmp_path / "evil", edit)
    with pytest.raises(ArtifactError, match="never a file name"):
        from_pretrained(d)


def test_size_bound_is_the_callers_not_the_files(art, tmp_path):
    total = inspect_artifact(art)["parameters"]["total"]
    with pytest.raises(ArtifactError, match=f"over the limit of 1,000.*max_params={total}"):
        from_pretrained(art, max_params=1000)
    assert from_pretrained(art, max_params=total) is not None  # raised explicitly by the caller: loads
    d = edited(art, tmp_path / "big", lambda c: c["prompt"].update(num_tokens=4000))  # in bounds, mismatched
    with pytest.raises(ArtifactError, match="does not match its config|shape"):
        from_pretrained(d)


def _rewrite_tensor(d, fn):
    from safetensors.torch import load_file, save_file
    p = os.path.join(d, "adapter_model.safetensors")
    t = load_file(p)
    fn(t)
    save_file(t, p)


@pytest.mark.parametrize("fn,match", [
    (lambda t: t.__setitem__("head.fc.bias", torch.tensor([float("nan"), 0.0, 0.0])), "NaN or inf"),
    (lambda t: t.__setitem__("head.fc.bias", torch.zeros(3, dtype=torch.int64)), "is I64, the model holds"),
    (lambda t: t.__setitem__("head.fc.bias", torch.zeros(4)), r"has shape \(4,\)"),
    (lambda t: t.__setitem__("backbone.model.cls_token", torch.zeros(1, 1, 32)), "unexpected"),
])
def test_tensors_checked_against_the_rebuilt_model(art, tmp_path, fn, match):
    d = str(tmp_path / "a")
    shutil.copytree(art, d)
    _rewrite_tensor(d, fn)
    with pytest.raises(ArtifactError, match=match):
        from_pretrained(d)


def test_save_refuses_non_finite_tensors(tmp_path):
    m = vpt.create_model(TINY_VIT_NAME, prompt="vpt_shallow", num_classes=2, pretrained=False,
                         model_kwargs=dict(TINY_VIT))
    with torch.no_grad():
        m.head.fc.weight[0, 0] = float("inf")
    with pytest.raises(ArtifactError, match="hold NaN or inf"):
        m.save_pretrained(str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a" / "adapter_model.safetensors")


def test_weights_file_relative_to_the_artifact(tmp_path, monkeypatch):
    """weights_file was stored relative to the cwd: the artifact broke when moved or loaded from elsewhere."""
    from safetensors.torch import save_file
    src = tmp_path / "project"
    src.mkdir()
    monkeypatch.chdir(src)
    bb = vpt.create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=3, model_kwargs=dict(TINY_VIT))
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, "bb.safetensors")
    m = vpt.create_model(TINY_VIT_NAME, weights="bb.safetensors", model_kwargs=dict(TINY_VIT), prompt="vpt_shallow",
                         num_classes=2)
    m.save_pretrained("runs/best")
    shutil.move(str(src), str(tmp_path / "moved"))
    monkeypatch.chdir(tmp_path)
    loaded = from_pretrained(str(tmp_path / "moved" / "runs" / "best"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), m(x))
    # a file with the same name but other content is never accepted
    other = vpt.create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=4, model_kwargs=dict(TINY_VIT))
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(tmp_path / "moved" / "bb.safetensors"))
    with pytest.raises(ArtifactError, match="sha256 differs.*pass weights=PATH"):
        from_pretrained(str(tmp_path / "moved" / "runs" / "best"))


def test_weights_file_never_reads_a_device_or_absolute_path(art, tmp_path):
    def edit(cfg):
        cfg["backbone"].update(weights_id="file:" + "0" * 64, weights_file="/dev/zero", pretrained=True)
    d = edited(art, tmp_path / "evil", edit)
    with pytest.raises(ArtifactError, match="is missing or another file"):
        from_pretrained(d)  # /dev/zero is never opened (hashing it would never end)


def test_inspect_describes_without_building(art, tmp_path, capsys):
    # names hub weights that can't be downloaded here: inspect never builds, so it still works
    d = edited(art, tmp_path / "hub", lambda c: c["backbone"].update(
        name="timm:vit_tiny_patch16_224.augreg_in21k", tag="augreg_in21k", weights_id="hub:augreg_in21k",
        pretrained=True))
    assert main(["inspect", d]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "timm:vit_tiny_patch16_224.augreg_in21k" in out and "prompt.prompts" in out
    assert main(["inspect", d, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["parameters"]["trainable"] == sum(int(np.prod(t["shape"])) for t in rep["tensors"])
    assert rep["parameters"]["total"] > rep["parameters"]["trainable"] > 0
    assert main(["inspect", d, "--max-params", "10"]) == 2
    assert "over the limit of 10" in capsys.readouterr().err


@pytest.mark.slow
def test_every_torch_load_is_weights_only():
    """Audit: no torch.load(weights_only=False), pickle, eval/exec or module import named by data in the repo
    (code tokens only: comments and strings don't count)."""
    import io
    import re
    import tokenize
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hits = []
    for folder in ("vpt", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                        if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]
                code = " ".join(t.string for t in toks if t.type != tokenize.STRING)
                for pat in (r"weights_only = False", r"\bpickle \. loads? \(", r"(?<![.\w] )\b(eval|exec) \(",
                            r"import_module \( f"):
                    hits += [f"{f}: {m.group(0)}" for m in re.finditer(pat, code)]
    allowed = {"cli.py: import_module ( f"}  # the CLI's own fixed list of command modules
    assert [h for h in hits if h not in allowed] == []


# --- 4. data hygiene ------------------------------------------------------------------------------------
def test_symlink_loop_counted_once(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=4)
    os.symlink(os.path.join(root, "a"), os.path.join(root, "a", "loop"))  # a/loop -> a
    os.symlink(os.path.join(root, "a", "000.png"), os.path.join(root, "b", "dup.png"))  # a file in two classes
    s = vpt.data.load_splits(root, val_fraction=0.25)
    paths = [p for p, _ in s.train + s.val + s.test]
    assert len(paths) == 8 and len({os.path.realpath(p) for p in paths}) == 8
    assert s.duplicates == 1


def test_link_across_splits_is_a_leak(tmp_path):
    root = tmp_path / "d"
    make_image_folder(root / "train", classes=("a", "b"), per_class=3)
    make_image_folder(root / "val", classes=("a", "b"), per_class=1, seed=1)
    os.symlink(root / "train" / "a" / "001.png", root / "val" / "a" / "leak.png")
    with pytest.raises(DataError, match=r"val image\(s\) are also in train"):
        vpt.data.load_splits(str(root))


def test_class_with_only_corrupt_images_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=3)
    for f in os.listdir(os.path.join(root, "b")):
        with open(os.path.join(root, "b", f), "wb") as fh:
            fh.write(b"not an image")
    with pytest.raises(DataError, match="class 'b' .* has no usable training image"):
        vpt.data.load_splits(root, val_fraction=0)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide, 10 high
    arr[:, :10] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = str(tmp_path / "phone.jpg")
    img.save(p, exif=exif)
    assert vpt.data.load_image(p).size == (10, 20)  # upright: 10 wide, 20 high
    from vpt.detection.data import _image_size
    from vpt.detection.transforms import load_rgb
    assert load_rgb(p).shape[:2] == (20, 10) and _image_size(p) == (10, 20)


def _csv(tmp_path, text, encoding="utf-8"):
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    p = tmp_path / "data.csv"
    p.write_bytes(text.encode(encoding))
    return str(p)


def test_csv_with_bom_is_read(tmp_path):
    p = _csv(tmp_path, "path,label\nimgs/a/000.png,a\nimgs/a/001.png,a\nimgs/b/000.png,b\nimgs/b/001.png,b\n",
             "utf-8-sig")
    s = vpt.data.load_splits(p, val_fraction=0)
    assert s.class_names == ["a", "b"] and len(s.train) == 4


def test_csv_paths_outside_root_refused_unless_asked(tmp_path):
    outside = make_image_folder(tmp_path / "elsewhere", classes=("x",), per_class=1)
    (tmp_path / "sub").mkdir()
    make_image_folder(tmp_path / "sub" / "imgs", classes=("a", "b"), per_class=2)
    rows = ["path,label", "imgs/a/000.png,a", "imgs/b/000.png,b", f"{os.path.join(outside, 'x', '000.png')},b",
            "../elsewhere/x/000.png,a"]
    p = tmp_path / "sub" / "data.csv"
    p.write_text("\n".join(rows[:4]) + "\n")
    with pytest.raises(DataError, match=r"data.csv:4: .* is outside the CSV's folder .*allow_outside_root"):
        vpt.data.load_splits(str(p), val_fraction=0)
    p.write_text("\n".join(rows[:3] + rows[4:]) + "\n")
    with pytest.raises(DataError, match="outside the CSV's folder"):
        vpt.data.load_splits(str(p), val_fraction=0)
    s = vpt.data.load_splits(str(p), val_fraction=0, allow_outside_root=True)
    assert len(s.train) == 3


def test_repeated_csv_rows_dropped(tmp_path):
    p = _csv(tmp_path, "path,label\nimgs/a/000.png,a\nimgs/a/000.png,a\nimgs/b/000.png,b\n")
    s = vpt.data.load_splits(p, val_fraction=0)
    assert len(s.train) == 2 and s.duplicates == 1


def test_shots_shortfall_is_never_silent(tmp_path):
    """--shots above what a class has silently gave fewer; now refused with the counts (the few-shot protocols
    need exactly k per class)."""
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=3)
    make_image_folder(tmp_path / "d", classes=("c",), per_class=8)
    with pytest.raises(DataError, match=r"--shots 5 is larger than what 2 class\(es\).*a \(3\), b \(3\)"):
        vpt.data.load_splits(root, val_fraction=0, shots=5)
    assert len(vpt.data.load_splits(root, val_fraction=0, shots=3).train) == 9


# --- 5. every user error a message and a non-zero exit --------------------------------------------------
def test_binary_yaml_is_a_message(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert main(["train", "-c", str(p), "--data", str(tmp_path)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_yaml_alias_bomb_is_a_message(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 10)}]" for i in range(1, 9)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    assert main(["train", "-c", str(p), "--data", str(tmp_path)]) == 2
    assert "expands to more than" in capsys.readouterr().err


def test_unreadable_yaml_is_a_message(tmp_path, capsys, monkeypatch):
    import builtins
    p = tmp_path / "locked.yaml"
    p.write_text("train: {epochs: 1}\n")
    real_open = builtins.open

    def locked(file, *a, **k):  # as root, chmod 000 would not stop us: simulate the permission error
        if str(file) == str(p):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *a, **k)
    monkeypatch.setattr(builtins, "open", locked)
    assert main(["train", "-c", str(p), "--data", str(tmp_path)]) == 2
    assert "cannot read config file" in capsys.readouterr().err


@pytest.mark.parametrize("err,code,text", [
    (errno.ENOSPC, 1, "no space left on the device"),
    (errno.EROFS, 1, "the file system is read-only"),
    (errno.EACCES, 1, "permission denied"),
])
def test_output_write_failures_are_messages(art, tmp_path, capsys, monkeypatch, err, code, text):
    import vpt.io
    img = make_image_folder(tmp_path / "imgs", classes=("a",), per_class=1)

    def fail(path, *_):
        raise OSError(err, os.strerror(err), path)
    monkeypatch.setattr(vpt.io, "atomic_write_text", fail)
    assert main(["predict", art, img, "--output", str(tmp_path / "out" / "p.json")]) == code
    assert text in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_message(art, tmp_path, capsys):
    img = make_image_folder(tmp_path / "imgs", classes=("a",), per_class=1)
    assert main(["predict", art, img, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_predict_on_a_non_image_is_a_user_error(art, tmp_path, capsys):
    # nothing readable: a user error (exit 2, like a missing path), nothing written; partial failures: tests/test_artifact.py
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    out = tmp_path / "p.json"
    assert main(["predict", art, str(p), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt: not a readable image" in err and "none of the 1 input(s)" in err and not out.exists()


def test_all_vpt_errors_share_a_base():
    from vpt.backbones import BackboneError
    from vpt.commands._common import UserError
    from vpt.data import CorruptImageError
    for cls in (ArtifactError, ConfigError, DataError, BackboneError, UserError, CorruptImageError):
        assert issubclass(cls, VptError)
