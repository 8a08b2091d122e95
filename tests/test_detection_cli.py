"""Detection end to end on tiny VOC / COCO folders: `vpt train / eval / predict --task detection`,
in-process, through vpt.cli.main."""
import json
import os

import pytest
import torch
import yaml

from vpt.cli import main

from helpers import TINY_VIT, make_coco, make_voc


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


pytest.importorskip("faster_coco_eval", reason="pip install 'vpt[detection]'")

RECIPE = {
    "task": "detection",
    "model": {"backbone": {"name": "timm:vit_tiny_patch16_224", "pretrained": False,
                           "model_kwargs": {**TINY_VIT, "dynamic_img_size": True}},
              "prompt": {"kind": "vpt_deep", "num_tokens": 2}},
    "detector": {"kind": "fcos", "min_size": 64, "max_size": 64, "head_convs": 1,
                 "pyramid": {"out_channels": 32, "scales": [2.0, 1.0]}},
    "train": {"epochs": 1, "batch_size": 2, "device": "cpu", "log_interval": 1},
}


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return str(path)


def _check_metrics(m):
    assert 0.0 <= m["mAP"] <= m["mAP50"] <= 1.0
    assert set(m["per_class_AP"]) == {"blue", "red"}
    assert m["evaluator"] in ("faster_coco_eval", "pycocotools")


def test_cli_train_eval_predict_voc(tmp_path, recipe, capsys):
    data, _ = make_voc(tmp_path / "voc")
    run = tmp_path / "run"
    assert main(["train", "--task", "detection", "-c", recipe, "--data", data, "--output", str(run)]) == 0
    res = json.load(open(run / "results.json"))
    assert res["task"] == "detection" and res["classes"] == ["blue", "red"] and res["label_map"] == {"blue": 0, "red": 1}
    assert res["data"]["train"] == 4 and res["data"]["val"] == 2 and res["data"]["test"] == 2
    _check_metrics(res["val"])
    _check_metrics(res["test"])
    assert res["command"].startswith("vpt train --task detection -c ") and res["config"]["detector"]["kind"] == "fcos"
    for f in ("config.yaml", "metrics.csv", "train.log", "run_state.pt", "best/adapter_config.json",
              "last/adapter_model.safetensors"):
        assert (run / f).exists(), f
    # the run-folder guard
    assert main(["train", "--task", "detection", "-c", recipe, "--data", data, "--output", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err

    out_json = tmp_path / "eval.json"
    # no --task: the artifact says it is a detector
    assert main(["eval", str(run / "best"), "--data", data, "--json", str(out_json)]) == 0
    ev = json.load(open(out_json))
    _check_metrics(ev)
    assert ev["split"] == "test" and ev["num_images"] == 2
    assert ev["mAP"] == pytest.approx(res["test"]["mAP"], abs=1e-9)  # same tensors, same data: same number

    pred = tmp_path / "pred"
    img = os.path.join(data, "JPEGImages", "img000.png")
    assert main(["predict", str(run / "best"), img, os.path.join(data, "JPEGImages"), "--score-thresh", "0.3",
                 "--output", str(pred)]) == 0
    det = json.load(open(pred / "detections.json"))
    assert det["class_names"] == ["blue", "red"] and len(det["images"]) == 9
    from PIL import Image
    first = det["images"][0]
    assert Image.open(pred / first["output"]).size == (64, 64)
    assert {"img000.png", "img000_1.png"} <= set(os.listdir(pred))
    for d in first["detections"]:
        assert d["class_name"] in ("blue", "red") and d["score"] >= det["score_thresh"] and len(d["box_xyxy"]) == 4
    # an unreadable file is a counted error (exit 1, listed in detections.json), never a prediction; only
    # unreadable files: exit 2 and nothing written
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    capsys.readouterr()
    assert main(["predict", str(run / "best"), img, str(broken), "--output", str(tmp_path / "pred2")]) == 1
    det2 = json.load(open(tmp_path / "pred2" / "detections.json"))
    assert [im["file"] for im in det2["images"]] == [img] and [e["file"] for e in det2["errors"]] == [str(broken)]
    assert "1 image(s) predicted, 1 failed" in capsys.readouterr().err
    assert main(["predict", str(run / "best"), str(broken), "--output", str(tmp_path / "pred3")]) == 2
    assert "none of the 1 input(s)" in capsys.readouterr().err and not (tmp_path / "pred3").exists()


def test_train_on_coco_and_resume(tmp_path, recipe):
    data = make_coco(tmp_path / "coco", n=4, splits=("train", "val"))
    base = ["train", "--task", "detection", "-c", recipe, "--data", data, "--set", "data.test_split=",
            "--set", "detector.kind=retinanet"]
    run = str(tmp_path / "run")
    assert main(base + ["--output", run]) == 0
    res = json.load(open(tmp_path / "run" / "results.json"))
    assert res["classes"] == ["red", "blue"] and res["test"] is None and res["data"]["val"] == 4
    _check_metrics(res["val"])
    # resume with one more epoch continues from the saved state
    assert main(base + ["--output", run, "--epochs", "2", "--resume"]) == 0
    res2 = json.load(open(tmp_path / "run" / "results.json"))
    rows = open(tmp_path / "run" / "metrics.csv").read().strip().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,") and rows[2].startswith("2,")
    assert res2["config"]["detector"]["kind"] == "retinanet" and res2["config"]["train"]["epochs"] == 2
    # ... exactly as an uninterrupted 2-epoch run (seeded order, seeded augmentation, saved RNG state)
    assert main(base + ["--output", str(tmp_path / "straight"), "--epochs", "2"]) == 0
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "run" / "last" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "last" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_reports_bad_data_clearly(tmp_path, recipe, capsys):
    data, _ = make_voc(tmp_path / "voc")
    os.unlink(os.path.join(data, "JPEGImages", "img002.png"))
    assert main(["train", "--task", "detection", "-c", recipe, "--data", data, "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "img002.png listed in train.txt" in err and "is missing" in err
    assert main(["train", "--task", "detection", "-c", recipe, "--data", data, "--output", str(tmp_path / "r2"),
                 "--shots", "2"]) == 2
    assert "--shots do(es) not apply to detection" in capsys.readouterr().err


@pytest.mark.subprocess
def test_killed_detection_run_resumes_to_the_same_result(tmp_path, recipe):
    import signal
    data, _ = make_voc(tmp_path / "voc")  # 4 train images, batch 2: 2 steps an epoch
    common = ["train", "--task", "detection", "-c", recipe, "--data", data, "--epochs", "2"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert main(common + ["--output", full]) == 0
    pid = os.fork()
    if pid == 0:  # child: SIGKILLed by the CLI's test hook after optimizer step 3 (inside epoch 2)
        try:
            os.environ["VPT_TEST_KILL_AT_STEP"] = "3"
            main(common + ["--output", cut])
        finally:
            os._exit(3)  # only reached if the hook did not fire
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert torch.load(os.path.join(cut, "run_state.pt"), weights_only=True)["epoch"] == 1
    assert main(["train", "--resume", "--output", cut]) == 0  # the saved config says task: detection
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (full, cut))
    assert a["best_epoch"] == b["best_epoch"] and a["val"]["mAP"] == b["val"]["mAP"]
    assert a["test"]["coco_stats"] == b["test"]["coco_stats"]
    from safetensors.torch import load_file
    for sub in ("best", "last"):
        ta, tb = (load_file(os.path.join(d, sub, "adapter_model.safetensors")) for d in (full, cut))
        assert sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_prompt_init_data_is_refused_where_the_task_draws_no_prompts(tmp_path, capsys):
    """Prompt init ``data`` is drawn by the classification task; the detection task would start from VPT's uniform
    init without saying so, so the engine refuses the run before it writes anything."""
    data, _ = make_voc(tmp_path / "voc")
    recipe = tmp_path / "det.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "model": {**RECIPE["model"], "prompt": {
        "kind": "vpt_deep", "num_tokens": 2, "init": "data"}}}))
    run = tmp_path / "run"
    assert main(["train", "--task", "detection", "-c", str(recipe), "--data", data, "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert "prompt init 'data' draws the prompts from training images, and task 'detection' does not draw them" in err
    assert "use init xavier_uniform or patch_embed" in err and not run.exists()
