"""`vpt predict --tasks NAME=ARTIFACT ... [--assign CSV]`: several artifacts on one backbone, mixed batches;
each record equals that artifact's own `vpt predict`; bad input is a one-line error."""
import csv
import json
import os

import pytest
import torch

import vpt
import vpt.artifact
from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder
from vpt.backbones import create_backbone
from vpt.cli import main
from vpt.multitask import MultiTaskModel

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = {
    "deep3": ({"kind": "vpt_deep", "num_tokens": 3}, ["cat", "dog", "frog"]),
    "deep5": ({"kind": "vpt_deep", "num_tokens": 5}, ["yes", "no"]),
    "linear": (None, ["a", "b", "c", "d"]),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mt")
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT))
    torch.manual_seed(0)
    dirs = {}
    for name, (prompt, classes) in TASKS.items():
        m = vpt.create_model(bb, prompt=prompt, num_classes=len(classes), class_names=classes)
        with torch.no_grad():  # move off the init so that a task mix-up would show
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        dirs[name] = str(tmp / name)
        m.save_pretrained(dirs[name])
    other = create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=3, model_kwargs=dict(TINY_VIT))
    dirs["other"] = str(tmp / "other")
    vpt.create_model(other, prompt="vpt_deep", num_classes=2).save_pretrained(dirs["other"])
    imgs = make_image_folder(tmp / "imgs", per_class=2)
    with open(os.path.join(imgs, "broken.png"), "wb") as f:
        f.write(b"not a png")
    return {"tmp": tmp, "dirs": dirs, "imgs": imgs}


def task_args(s, names=("deep3", "deep5", "linear")):
    return ["--tasks", *[f"{n}={s['dirs'][n]}" for n in names]]


def probs(rec):
    """The full probability vector of a record (asked with --topk >= the class count)."""
    preds = sorted(rec["predictions"], key=lambda p: p["index"])
    assert [p["index"] for p in preds] == list(range(len(preds)))
    return torch.tensor([p["prob"] for p in preds])


def run_json(argv, capsys, code=0):
    """The records; ``code`` 1 where the inputs hold broken.png (some predicted, one failed)."""
    capsys.readouterr()
    assert main(argv) == code
    return json.loads(capsys.readouterr().out)


def write_csv(path, rows, header=("path", "task")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_assign_matches_each_artifact_alone(setup, capsys, monkeypatch):
    s = setup
    imgs = s["imgs"]
    rows = [("cat/000.png", "deep3"), ("cat/001.png", "deep5"), ("dog/000.png", "linear"), ("dog/001.png", "base"),
            (os.path.join(imgs, "frog", "000.png"), "deep5"), ("frog/001.png", "deep3"), ("cat/000.png", "linear"),
            ("broken.png", "deep3")]
    assign = write_csv(os.path.join(imgs, "assign.csv"), rows)
    calls = []
    forward = MultiTaskModel.forward

    def spy(self, x, tasks):
        calls.append(list(tasks))
        return forward(self, x, tasks)
    monkeypatch.setattr(MultiTaskModel, "forward", spy)
    recs = run_json(["predict", *task_args(s), "--assign", assign, "--topk", "10", "-b", "4"], capsys, code=1)
    monkeypatch.undo()
    assert [(os.path.relpath(r["path"], imgs), r["task"]) for r in recs] == [(os.path.normpath(p) if not os.path.isabs(p)
                                                                             else os.path.relpath(p, imgs), t)
                                                                            for p, t in rows]
    assert any(len(set(c)) >= 3 for c in calls), calls  # per-sample tasks mixed in one backbone pass
    assert all(len(c) <= 4 for c in calls) and sum(map(len, calls)) == len(rows) - 1  # broken.png is skipped
    assert recs[3] == {"path": recs[3]["path"], "task": "base", "features_dim": TINY_VIT["embed_dim"]}
    assert recs[-1]["error"].startswith("not a readable image (UnidentifiedImageError")
    alone = {}
    for name in TASKS:
        for r in run_json(["predict", s["dirs"][name], imgs, "--topk", "10"], capsys, code=1):
            if "predictions" in r:
                alone[name, os.path.realpath(r["path"])] = r
    for rec in recs:
        if "predictions" not in rec:
            continue
        ref = alone[rec["task"], os.path.realpath(rec["path"])]
        assert [p["label"] for p in rec["predictions"]][:1] == [p["label"] for p in ref["predictions"]][:1]
        assert len(rec["predictions"]) == len(TASKS[rec["task"]][1])
        torch.testing.assert_close(probs(rec), probs(ref), rtol=0, atol=1e-5, msg=f"{rec['path']} {rec['task']}")


def test_without_assign_every_image_under_every_task(setup, capsys, tmp_path):
    s = setup
    recs = run_json(["predict", *task_args(s), s["imgs"], "--topk", "2", "-b", "5"], capsys, code=1)
    images = sorted({r["path"] for r in recs})
    assert len(images) == 7 and len(recs) == 7 * 3
    assert sorted((r["path"], r["task"]) for r in recs) == sorted((p, t) for p in images for t in TASKS)
    assert [r["task"] for r in recs[:3]] == list(TASKS)  # image-major order
    for r in recs:
        if r["path"].endswith("broken.png"):
            assert r["error"].startswith("not a readable image (UnidentifiedImageError")
        else:
            assert len(r["predictions"]) == 2 and r["predictions"][0]["label"] in TASKS[r["task"]][1]
    # the images can also come before --tasks; CSV output to a file has a task column
    out = str(tmp_path / "p.csv")
    assert main(["predict", os.path.join(s["imgs"], "cat"), *task_args(s, ("deep5", "linear")), "--topk", "1",
                 "--format", "csv", "--output", out]) == 0
    lines = open(out).read().splitlines()
    assert lines[0] == "path,task,rank,label,index,prob" and len(lines) == 1 + 2 * 2
    assert [line.split(",")[1] for line in lines[1:]] == ["deep5", "linear", "deep5", "linear"]
    # options between --tasks and the images, images split around them
    cat = [os.path.join(s["imgs"], "cat", f) for f in ("000.png", "001.png")]
    recs = run_json(["predict", "--tasks", f"deep3={s['dirs']['deep3']}", "--topk", "1", *cat], capsys)
    assert [(r["path"], r["task"]) for r in recs] == [(p, "deep3") for p in cat]


def test_single_artifact_form_unchanged(setup, capsys):
    img = os.path.join(setup["imgs"], "cat", "000.png")
    recs = run_json(["predict", setup["dirs"]["deep5"], "--topk", "1", img], capsys)
    assert recs == [{"path": img, "predictions": [recs[0]["predictions"][0]]}]
    assert set(recs[0]["predictions"][0]) == {"rank", "label", "index", "prob"}


@pytest.mark.parametrize("case,message", [
    ("no_equals", "--tasks expects NAME=ARTIFACT pairs, got"),
    ("artifact_as_input", "is an artifact folder, not images"),
    ("duplicate", "duplicate task name 'deep3'"),
    ("base_name", "'base' is reserved"),
    ("other_backbone", "other="),
    ("missing_artifact", "artifact folder not found"),
    ("unknown_task", "unknown task 'nope' (line 3)"),
    ("missing_image", "1 listed image(s) not found"),
    ("bad_header", "the first line must be the header 'path,task'"),
    ("bad_row", "line 2: expected 'path,task'"),
    ("empty_csv", "lists no images"),
    ("assign_and_inputs", "lists the images itself"),
    ("assign_alone", "--assign names tasks loaded with --tasks"),
    ("nothing", "pass an ARTIFACT folder and at least one IMAGE_OR_DIR"),
])
def test_errors(setup, tmp_path, capsys, case, message):
    s = setup
    d, img = s["dirs"], os.path.join(s["imgs"], "cat", "000.png")
    good = str(tmp_path / "ok.csv")
    write_csv(good, [(img, "deep3")])
    argv = {
        "no_equals": ["--tasks", d["deep3"], img],
        "artifact_as_input": ["--tasks", f"deep3={d['deep3']}", d["deep5"], img],
        "duplicate": ["--tasks", f"deep3={d['deep3']}", f"deep3={d['deep5']}", img],
        "base_name": ["--tasks", f"base={d['deep3']}", img],
        "other_backbone": [*task_args(s, ("deep3", "other")), img],
        "missing_artifact": ["--tasks", f"deep3={tmp_path / 'nope'}", img],
        "unknown_task": [*task_args(s), "--assign", write_csv(tmp_path / "unknown_task.csv", [(img, "deep3"), (img, "nope")])],
        "missing_image": [*task_args(s), "--assign", write_csv(tmp_path / "missing_image.csv", [("gone.png", "deep3")])],
        "bad_header": [*task_args(s), "--assign", write_csv(tmp_path / "bad_header.csv", [(img, "deep3")], ("file", "task"))],
        "bad_row": [*task_args(s), "--assign", write_csv(tmp_path / "bad_row.csv", [(img, "deep3", "x")])],
        "empty_csv": [*task_args(s), "--assign", write_csv(tmp_path / "empty_csv.csv", [])],
        "assign_and_inputs": [*task_args(s), "--assign", good, img],
        "assign_alone": [d["deep3"], img, "--assign", good],
        "nothing": [d["deep3"]],
    }[case]
    capsys.readouterr()
    assert main(["predict", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vpt predict: error: ") and message in err, err
    if case == "other_backbone":
        assert "weights_id" in err and "trained on the backbone of 'deep3'" in err


def test_refuses_tasks_with_different_preprocessing(setup, capsys, monkeypatch):
    import dataclasses

    load = vpt.Artifact.load

    def shifted(self, **kw):  # as if 'linear' had been saved with other preprocessing
        m = load(self, **kw)
        if self.directory.endswith("linear"):
            m.data_config = dataclasses.replace(m.data_config, crop_pct=1.0)
        return m
    monkeypatch.setattr(vpt.Artifact, "load", shifted)
    capsys.readouterr()
    assert main(["predict", *task_args(setup), setup["imgs"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "preprocesses images differently from 'deep3'" in err and "them separately" in err
