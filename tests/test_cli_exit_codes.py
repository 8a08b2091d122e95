"""Exit codes as `vpt --help` documents them: a user's mistake in `vpt zeroshot` / `vpt summarize` is a
one-line message and exit 2 (never a traceback, never 1), found before any work is done."""
import json
import os
import sys

import pytest
from helpers import make_image_folder

from vpt.cli import main

pytest.importorskip("open_clip")

TINY_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("codes") / "data", per_class=2)


def zeroshot(data, *extra):
    return ["zeroshot", "--model", "open_clip:ViT-B-32", "--random-init", "--model-kwargs", json.dumps(TINY_CLIP),
            "--data", data, "--no-cache", *extra]


@pytest.mark.parametrize("extra,expect", [
    (["--device", "gpu"], "unknown device 'gpu'; use cpu, cuda or cuda:N"),
    (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--classes-per-batch", "0"], "classes_per_batch must be in [1, 100000], got 0"),
    (["--workers", "-1"], "workers must be >= 0"),
    (["--weights", "/no/such/clip.safetensors"], "weights file not found: '/no/such/clip.safetensors'"),
    (["--split", "test"], "has no test split"),
    (["--data", "/no/such/folder"], "is neither an image folder nor a CSV file"),
])
def test_zeroshot_user_errors_exit_2(data, capsys, extra, expect):
    assert main(zeroshot(data, "--device", "cpu", *extra)) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and err.startswith("vpt zeroshot: error: ")


def test_zeroshot_cuda_without_a_gpu_exits_2(data, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(zeroshot(data, "--device", "cuda")) == 2
    assert "CUDA is not available on this machine; use --device cpu" in capsys.readouterr().err


def test_output_paths_are_checked_before_the_work(data, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert main(zeroshot(data, "--device", "cpu", "--output", str(tmp_path))) == 2
    assert "is a folder; give the file to write, e.g. " in capsys.readouterr().err
    assert main(zeroshot(data, "--device", "cpu", "--output", str(a_file / "r.json"))) == 2
    out, err = capsys.readouterr()
    assert "is a file, not a folder" in err and out == ""  # nothing evaluated, nothing printed
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"config": {"model": {"prompt": {"kind": "vpt_deep"}}},
                                                  "test": {"top1": 50.0}}))
    assert main(["summarize", str(run), "--csv", str(tmp_path)]) == 2
    assert "--csv" in capsys.readouterr().err


def test_missing_optional_dependency_exits_2_with_the_pip_command(data, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` now fails as if not installed
    assert main(zeroshot(data, "--device", "cpu")) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "Traceback" not in err


def test_path_errors_name_the_target_not_the_temporary_file(tmp_path):
    from vpt.cli import path_error_hint
    src, target = tmp_path / ".tmp.x", tmp_path / "out.json"
    src.write_text("x")
    target.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        os.replace(src, target)  # what an atomic write onto a folder does
    hint = path_error_hint(e.value)
    assert hint and str(target) in hint and ".tmp.x" not in hint and "is a folder" in hint
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for make in (lambda: os.makedirs(a_file), lambda: open(a_file / "sub" / "out.json", "w")):
        with pytest.raises(OSError) as e:
            make()
        assert f"{str(a_file)!r} is a file, but the path" in path_error_hint(e.value)
    with pytest.raises(FileExistsError) as e:
        os.mkdir(tmp_path)  # an existing folder: not a path of the wrong kind (keep the traceback: a bug)
    assert path_error_hint(e.value) is None
