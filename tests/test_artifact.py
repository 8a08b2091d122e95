"""`vpt.Artifact`: an artifact folder read and validated once; what it holds (model type, task, classes,
backbone) without building it; `inspect()` and `load()`. And the commands on it as a user meets them:
`vpt predict` reads the config once and imports no detection code for a classifier, an unreadable image
is a counted error row with documented exit codes (0 / 1 / 2), `vpt eval` and `vpt inspect` refuse
before building anything they can't use."""
import builtins
import json
import os
import subprocess
import sys

import pytest
import torch

import vpt
from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder
from vpt.artifact import Artifact, from_pretrained, inspect_artifact
from vpt.cli import main
from vpt.errors import ArtifactError

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = vpt.create_model(TINY_VIT_NAME, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3,
                         class_names=CLASSES, pretrained=False, model_kwargs=dict(TINY_VIT))
    with torch.no_grad():  # off the init, so that a wrong tensor would show in the outputs
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def art(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("artifact") / "best"
    model.save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "data", classes=tuple(CLASSES), per_class=2)


def count_config_reads(monkeypatch):
    """A list that grows by one each time a file named adapter_config.json is opened (any mode)."""
    real_open, reads = builtins.open, []

    def spy(file, *a, **k):
        if os.path.basename(str(file)) == "adapter_config.json":
            reads.append(str(file))
        return real_open(file, *a, **k)
    monkeypatch.setattr(builtins, "open", spy)
    return reads


# --- the object --------------------------------------------------------------------------------------
def test_open_answers_without_building(art, monkeypatch):
    import vpt.artifact
    monkeypatch.setattr(vpt.artifact, "create_backbone", lambda *a, **k: pytest.fail("open() built a backbone"))
    a = vpt.Artifact.open(art)
    assert vpt.Artifact is Artifact
    assert (a.model_type, a.task, a.class_names, a.num_classes) == ("classifier", "classification", CLASSES, 3)
    assert a.backbone["name"] == TINY_VIT_NAME and a.backbone["weights_id"].startswith("random:")
    assert a.config["format_version"] == 1 and a.config["prompt"]["kind"] == "vpt_deep"
    assert a.preprocessing["input_size"] == [3, 32, 32]
    a.config["prompt"]["num_tokens"] = 99  # a copy: the artifact is unchanged
    assert a.config["prompt"]["num_tokens"] == 2
    assert "classifier" in repr(a) and TINY_VIT_NAME in repr(a)


def test_load_and_inspect_read_the_config_once(art, model, monkeypatch):
    reads = count_config_reads(monkeypatch)
    a = Artifact.open(art)
    report = a.inspect()
    loaded = a.load(device="cpu")
    assert len(reads) == 1, reads
    monkeypatch.undo()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    torch.testing.assert_close(from_pretrained(art)(x), model(x))  # the thin call gives the same model
    assert report == inspect_artifact(art) and report["task"] == "classification"
    assert report["parameters"]["trainable"] == sum(t.numel() for t in model.trainable_state_dict().values())


def test_open_refuses_what_is_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="artifact folder not found"):
        Artifact.open(str(tmp_path / "nope"))
    with pytest.raises(ArtifactError, match="has no adapter_config.json"):
        Artifact.open(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text('{"format": "vpt-adapter", "format_version": 1, "model_type": "x"}')
    with pytest.raises(ArtifactError, match="model type 'x'"):
        Artifact.open(str(tmp_path))


def test_an_artifact_saved_in_an_older_layout_still_loads(art, model, tmp_path):
    """format_version 1 as older vpt wrote it: deep prompts stacked as one (L, P, D) tensor."""
    import shutil

    from safetensors.torch import load_file, save_file
    d = tmp_path / "old"
    shutil.copytree(art, d)
    tensors = load_file(str(d / "adapter_model.safetensors"))
    keys = sorted(k for k in tensors if k.startswith("prompt.prompts."))
    assert len(keys) == TINY_VIT["depth"]
    stacked = {k: v for k, v in tensors.items() if k not in keys}
    stacked["prompt.prompts"] = torch.stack([tensors[k] for k in keys])  # (L, P, D)
    save_file(stacked, str(d / "adapter_model.safetensors"))
    a = Artifact.open(str(d))
    assert [t["name"] for t in a.inspect()["tensors"]] == sorted(stacked)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a.load()(x), model(x))


def test_every_model_type_names_a_registered_task():
    from vpt.registry import MODEL_TYPES, TASKS
    entries = list(MODEL_TYPES)  # loads every type whose dependencies are installed
    assert {"classifier", "detection"} <= {e.name for e in entries}
    for e in entries:
        assert e.factory.task in TASKS.names(), f"{e.name}: {e.factory.task!r}"
    want = {"classifier": "classification", "lora": "classification", "peft": "classification", "clip": "clip",
            "detection": "detection"}
    assert {e.name: e.factory.task for e in entries} == {k: v for k, v in want.items() if k in {e.name for e in entries}}


def test_task_for_artifact_follows_the_model_class(art):
    from vpt.errors import ConfigError
    from vpt.tasks import task_class, task_for_artifact
    a = Artifact.open(art)
    assert task_for_artifact(a) is task_class("classification")
    assert task_for_artifact(a, "classification") is task_class("classification")
    with pytest.raises(ConfigError, match="which task 'clip' does not evaluate; drop --task"):
        task_for_artifact(a, "clip")  # clip derives from classification, not the other way round


# --- vpt predict --------------------------------------------------------------------------------------
def test_predict_reads_the_config_once(art, imgs, monkeypatch, capsys, tmp_path):
    reads = count_config_reads(monkeypatch)
    assert main(["predict", art, os.path.join(imgs, "cat")]) == 0
    assert reads == [os.path.join(art, "adapter_config.json")]
    reads.clear()
    assert main(["predict", "--tasks", f"a={art}", f"b={art}", os.path.join(imgs, "dog")]) == 0
    assert len(reads) == 2, reads  # once per artifact
    reads.clear()
    assert main(["eval", art, "--data", imgs, "--split", "all"]) == 0
    assert len(reads) == 1, reads


def test_predict_on_a_classifier_imports_no_detection_code(art, imgs, tmp_path):
    """In a fresh process. (torchvision.models.detection itself is imported by timm, through
    torchvision.models.feature_extraction, whatever vpt does: it is not asserted here.)"""
    probe = tmp_path / "modules.json"
    code = ("import json, sys\nfrom vpt.cli import main\n"
            f"rc = main(['predict', {art!r}, {os.path.join(imgs, 'cat')!r}, '--output', {str(tmp_path / 'p.json')!r}])\n"
            "mods = sorted(m for m in sys.modules if m.startswith(('vpt.detection', 'vpt.tasks')))\n"
            f"json.dump({{'rc': rc, 'modules': mods}}, open({str(probe)!r}, 'w'))\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(tmp_path), timeout=300,
                   capture_output=True)
    out = json.load(open(probe))
    assert out["rc"] == 0 and len(json.load(open(tmp_path / "p.json"))) == 2
    assert not [m for m in out["modules"] if "detection" in m], out["modules"]
    assert "vpt.tasks.classification" not in out["modules"]  # predict needs the evaluation helpers only


def test_predict_counts_an_unreadable_image_as_failed(art, imgs, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    good = os.path.join(imgs, "cat", "000.png")
    out = tmp_path / "p.json"
    capsys.readouterr()
    assert main(["predict", art, good, str(folder), "--output", str(out)]) == 1  # some predicted, some failed
    err = capsys.readouterr().err
    assert "broken.png: not a readable image" in err
    assert "1 image(s) predicted, 1 failed" in err and "2 predictions" not in err
    recs = json.load(open(out))
    assert [("predictions" in r, "error" in r) for r in recs] == [(True, False), (False, True)]
    # CSV: the failed image is one row marked as an error, never a ranked prediction
    csv_out = tmp_path / "p.csv"
    assert main(["predict", art, good, str(folder), "--format", "csv", "--output", str(csv_out), "--topk", "2"]) == 1
    rows = open(csv_out).read().splitlines()
    assert len(rows) == 1 + 2 + 1 and rows[-1].endswith(",,ERROR: unreadable,,")
    # everything readable: 0, and a summary only when writing a file
    assert main(["predict", art, good, "--output", str(out)]) == 0
    assert "1 image(s) predicted, 0 failed" in capsys.readouterr().err


@pytest.mark.parametrize("case,message", [
    ("missing_path", "no such file or folder"),
    ("no_images", "no images found"),
    ("only_broken", "none of the 1 input(s) could be read as an image"),
    ("bad_topk", "--topk must be >= 1"),
    ("bad_max_params", "--max-params must be a positive number"),
    ("bad_amp", "amp_dtype"),
    ("wrong_task", "drop --task"),
    ("not_an_artifact", "has no adapter_config.json"),
])
def test_predict_user_errors_exit_2_before_loading(art, tmp_path, capsys, monkeypatch, case, message):
    monkeypatch.setattr(Artifact, "load", lambda *a, **k: pytest.fail("a model was built for a refused command"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    if case == "only_broken":  # found only once the model ran: still exit 2 and nothing written
        monkeypatch.undo()
    argv = {"missing_path": [art, str(tmp_path / "gone.png")], "no_images": [art, str(empty)],
            "only_broken": [art, str(broken), "--output", str(tmp_path / "p.json")],
            "bad_topk": [art, str(broken), "--topk", "0"],
            "bad_amp": [art, str(broken), "--amp-dtype", "fp8"], "bad_max_params": [art, str(broken), "--max-params", "0"],
            "wrong_task": [art, str(broken), "--task", "detection"], "not_an_artifact": [str(empty), str(broken)]}[case]
    capsys.readouterr()
    assert main(["predict", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vpt predict: error: ") and message in err, err
    assert not (tmp_path / "p.json").exists()


def test_predict_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out and "0  every input image was predicted" in out and "2  nothing was predicted" in out


# --- vpt eval / vpt inspect ---------------------------------------------------------------------------
@pytest.mark.parametrize("case,message", [
    ("no_data", "no data given: pass --data DIR"),
    ("missing_data", "data folder not found"),
    ("protocol_on_classifier", "--base-to-novel / --transfer need a CLIP artifact"),
    ("wrong_task", "which task 'detection' does not evaluate; drop --task"),
])
def test_eval_refuses_before_building(art, imgs, tmp_path, capsys, monkeypatch, case, message):
    monkeypatch.setattr(Artifact, "load", lambda *a, **k: pytest.fail("a model was built for a refused command"))
    argv = {"no_data": [art], "missing_data": [art, "--data", str(tmp_path / "gone")],
            "protocol_on_classifier": [art, "--data", imgs, "--base-to-novel"],
            "wrong_task": [art, "--data", imgs, "--task", "detection"]}[case]
    capsys.readouterr()
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vpt eval: error: ") and message in err, err


def test_inspect_exit_status_when_the_backbone_weights_file_is_missing(tmp_path, capsys):
    from safetensors.torch import save_file
    bb = vpt.create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=3, model_kwargs=dict(TINY_VIT))
    wfile = tmp_path / "bb.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(wfile))
    d = str(tmp_path / "run" / "best")
    vpt.create_model(TINY_VIT_NAME, weights=str(wfile), model_kwargs=dict(TINY_VIT), prompt="vpt_shallow",
                     num_classes=2).save_pretrained(d)
    capsys.readouterr()
    assert main(["inspect", d]) == 0
    moved = tmp_path / "elsewhere.safetensors"
    os.rename(wfile, moved)
    assert main(["inspect", d]) == 1  # valid, but not loadable as it is
    out, err = capsys.readouterr()
    assert "valid" in out and "MISSING" in out and "pass --weights FILE" in err
    assert main(["inspect", d, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["backbone_weights"].startswith("MISSING")
    assert main(["inspect", d, "--weights", str(moved)]) == 0
    assert main(["inspect", str(tmp_path / "gone")]) == 2
    assert "artifact folder not found" in capsys.readouterr().err


# --- import cycles this package owned ------------------------------------------------------------------
def test_no_import_cycle_among_the_commands_and_the_tasks():
    """commands/eval <-> commands/predict and tasks/classification <-> tasks/protocols imported each other."""
    from test_layering import _imports
    graph = {}
    for m, t, _ in _imports():
        if m.startswith(("vpt.commands", "vpt.tasks")) and t.startswith(("vpt.commands", "vpt.tasks")) and m != t:
            graph.setdefault(m, set()).add(t)

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for n in graph.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen
    cycles = sorted(m for m in graph if m in reach(m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_a_clip_artifact_names_its_task_and_is_refused_by_multitask(art, tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    from vpt.clip import create_clip_model
    from vpt.multitask import MultiTaskModel
    from vpt.tasks import task_class, task_for_artifact
    tiny = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    bb = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, model_kwargs=tiny)
    d = str(tmp_path / "clip")
    create_clip_model(bb, ["cat", "dog"], prompt="vpt_shallow", head="linear").save_pretrained(d)
    a = Artifact.open(d)
    assert (a.model_type, a.task) == ("clip", "clip")
    assert task_for_artifact(a) is task_class("clip")
    assert task_for_artifact(a, "classification") is task_class("classification")  # clip derives from it
    loads = []
    real = Artifact.load
    monkeypatch.setattr(Artifact, "load", lambda self, **kw: loads.append(self.directory) or real(self, **kw))
    with pytest.raises(ArtifactError, match=r"c=.*clip: holds a clip model; a MultiTaskModel combines classifiers"):
        MultiTaskModel.from_pretrained({"a": art, "c": d})
    assert loads == []  # refused from the config alone, before any model was built
