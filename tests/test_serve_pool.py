"""The model side of `vpt serve` (``vpt.serve.pool.TaskPool``), in-process: one backbone object per (backbone
id, weights), classifiers batched across tasks, CLIP and detection artifacts answered as `vpt predict`
answers them, bad images and removed tasks answered per request without failing the batch."""
import io
import json
import os

import pytest
import torch

import vpt
from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder
from vpt.backbones import create_backbone
from vpt.cli import main
from vpt.serve.pool import TaskPool, handle_batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT))
    torch.manual_seed(0)
    dirs = {}
    for name, prompt, k in [("a", {"kind": "vpt_deep", "num_tokens": 3}, 3), ("b", "vpt_shallow", 2), ("c", None, 4)]:
        m = vpt.create_model(bb, prompt=prompt, num_classes=k, class_names=[f"{name}{i}" for i in range(k)])
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        dirs[name] = str(tmp / name)
        m.save_pretrained(dirs[name])
    other = create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=3, model_kwargs=dict(TINY_VIT))
    dirs["other"] = str(tmp / "other")
    vpt.create_model(other, prompt="vpt_deep", num_classes=2).save_pretrained(dirs["other"])
    imgs = make_image_folder(tmp / "imgs", per_class=1)
    paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(imgs) for f in fs)
    return {"tmp": tmp, "dirs": dirs, "paths": paths}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def cli_records(argv, capsys):
    capsys.readouterr()
    assert main(["predict", *argv]) == 0
    return {r["path"]: r["predictions"] for r in json.loads(capsys.readouterr().out)}


def test_shared_backbone_mixed_batch_equals_vpt_predict(arts, capsys):
    d, paths = arts["dirs"], arts["paths"]
    pool = TaskPool()
    for name in ("a", "b", "c", "other"):
        pool.load(name, d[name])
    assert len(pool.backbones) == 2  # a, b, c share one; other's weights differ
    assert pool.tasks["a"].model.backbone is pool.tasks["c"].model.backbone
    assert pool.tasks["other"].model.backbone is not pool.tasks["a"].model.backbone
    reqs = [{"task": t, "image": read(p), "top_k": 10} for p in paths for t in ("a", "b", "c", "other")]
    reqs.insert(2, {"task": "a", "image": b"garbage"})
    reqs.insert(5, {"task": "gone", "image": read(paths[0])})
    out = handle_batch(pool, reqs)
    assert out[2]["status"] == 400 and "not a readable image" in out[2]["error"]
    assert out[5]["status"] == 404 and "a, b, c, other" in out[5]["error"]
    assert all(o["batch_size"] == len(reqs) for o in out)
    cli = {t: cli_records([d[t], *paths, "--topk", "10"], capsys) for t in ("a", "b", "c", "other")}
    for r, o in zip(reqs, out):
        if r["task"] == "gone" or r["image"] == b"garbage":
            continue
        path = paths[[read(p) for p in paths].index(r["image"])]
        want = cli[r["task"]][path]
        assert [p["label"] for p in o["predictions"]] == [w["label"] for w in want]
        assert [p["score"] for p in o["predictions"]] == pytest.approx([w["prob"] for w in want], abs=2e-6)
    # dropping tasks frees their backbone once the last user is gone
    assert pool.unload("other") and len(pool.backbones) == 1
    assert pool.unload("a") and pool.unload("b") and pool.unload("c") and not pool.backbones and not pool.groups
    assert not pool.unload("a")


def test_load_and_unload_through_the_queue(arts):
    d, paths = arts["dirs"], arts["paths"]
    pool = TaskPool()
    out = handle_batch(pool, [{"op": "load", "task": "x", "path": d["a"]},
                              {"op": "predict", "task": "x", "image": read(paths[0])},
                              {"op": "load", "task": "y", "path": str(arts["tmp"])},
                              {"op": "unload", "task": "nope"}])
    assert out[0]["status"] == 200 and out[0]["info"]["classes"] == ["a0", "a1", "a2"]
    assert out[1]["status"] == 200 and out[1]["task"] == "x"
    assert out[2]["status"] == 422 and "adapter_config.json" in out[2]["error"]
    assert out[3]["status"] == 404


def test_decompression_bomb_is_refused_before_decoding():
    from PIL import Image

    from vpt.serve.images import ImageInputError, decode_image
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")
    with pytest.raises(ImageInputError) as e:
        decode_image(buf.getvalue(), max_pixels=1_000_000)
    assert e.value.status == 413 and "81000000 pixels" in str(e.value)


@pytest.mark.slow
def test_detection_artifact_answers_as_vpt_predict(arts, tmp_path, capsys):
    from vpt.detection import create_detector
    torch.manual_seed(0)
    det = create_detector(TINY_VIT_NAME, ["blue", "red"], prompt="vpt_deep",
                          detector={"kind": "fcos", "min_size": 64, "max_size": 64, "head_convs": 1,
                                    "box_head_dim": 32, "pyramid": {"out_channels": 32, "scales": [2.0, 1.0, 0.5]}},
                          pretrained=False, model_kwargs={**TINY_VIT, "dynamic_img_size": True})
    det.save_pretrained(str(tmp_path / "det"))
    pool = TaskPool()
    pool.load("det", str(tmp_path / "det"))
    pool.load("a", arts["dirs"]["a"])
    paths = arts["paths"][:2]
    out = handle_batch(pool, [{"task": "det", "image": read(p), "score_thresh": 0.0} for p in paths]
                       + [{"task": "a", "image": read(paths[0])}])
    assert out[2]["status"] == 200 and out[2]["predictions"]
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "det"), *paths, "--score-thresh", "0", "--output",
                 str(tmp_path / "pred")]) == 0
    ref = json.load(open(tmp_path / "pred" / "detections.json"))["images"]
    assert any(r["detections"] for r in ref)  # boxes to compare, not two empty lists
    for o, r in zip(out, ref):
        assert o["status"] == 200
        assert [x["xyxy"] for x in o["detections"]] == [x["box_xyxy"] for x in r["detections"]]
        assert [x["label"] for x in o["detections"]] == [x["class_name"] for x in r["detections"]]
        assert [x["score"] for x in o["detections"]] == pytest.approx([x["score"] for x in r["detections"]], abs=1e-6)


@pytest.mark.slow
def test_clip_artifact_answers_as_vpt_predict(arts, tmp_path, capsys):
    pytest.importorskip("open_clip")
    from vpt.clip import create_clip_model
    tiny = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
                text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    adapter = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=5, model_kwargs=tiny)
    model = create_clip_model(adapter, ["cat", "dog", "frog"], text={"num_tokens": 4})
    model.save_pretrained(str(tmp_path / "clip"))
    pool = TaskPool()
    pool.load("clip", str(tmp_path / "clip"))
    pool.load("a", arts["dirs"]["a"])
    paths = arts["paths"]
    out = handle_batch(pool, [{"task": "clip", "image": read(p), "top_k": 3} for p in paths])
    cli = cli_records([str(tmp_path / "clip"), *paths, "--topk", "3"], capsys)
    for p, o in zip(paths, out):
        assert [x["label"] for x in o["predictions"]] == [w["label"] for w in cli[p]]
        assert [x["score"] for x in o["predictions"]] == pytest.approx([w["prob"] for w in cli[p]], abs=2e-6)


def test_replacing_the_only_task_on_a_backbone_keeps_the_backbone(arts):
    pool = TaskPool()
    pool.load("x", arts["dirs"]["other"])
    pool.load("x", arts["dirs"]["other"])  # replaced in place
    assert len(pool.backbones) == 1 and pool.tasks["x"].model.backbone is next(iter(pool.backbones.values()))
    pool.load("y", arts["dirs"]["other"])
    assert pool.tasks["y"].model.backbone is pool.tasks["x"].model.backbone
