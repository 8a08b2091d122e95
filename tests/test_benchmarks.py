"""The published benchmark formats (VTAB-1k lists, FGVC json, CoOp split files) read as they are, Dassl's
few-shot draw and CoOp's base/new split reproduced exactly (goldens from their own code), and the bad input
of each format refused before training."""
import json
import os

import pytest

from helpers import make_coop, make_fgvc, make_vtab_task, _tiny_image
from vpt.data import load_splits
from vpt.data.benchmarks import VTAB_GROUPS, VTAB_TASKS, detect_format
from vpt.errors import DataError

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "dassl_fewshot.json")


def rel(samples, root):
    return [(os.path.relpath(p, root), y) for p, y in samples]


def test_vtab_nineteen_tasks_known():
    assert len(VTAB_TASKS) == 19
    assert {g for g, _ in VTAB_TASKS.values()} == set(VTAB_GROUPS)
    assert [n for g, n in VTAB_TASKS.values() if g == "natural"] == [100, 102, 47, 102, 37, 10, 397]
    assert sum(1 for g, _ in VTAB_TASKS.values() if g == "structured") == 8


def test_vtab_final_and_tune(tmp_path):
    task = make_vtab_task(tmp_path, "kitti", labels=(0, 1, 3))
    assert detect_format(task) == "vtab1k"
    final = load_splits(task)
    assert final.class_names == ["0", "1", "2", "3"]  # the task's 4 classes, even those absent from the lists
    assert len(final.train) == 3 * 5 and final.val == [] and len(final.test) == 6
    assert final.source["train"] == "train800val200.txt"
    tune = load_splits(task, benchmark_split="tune")
    assert len(tune.train) == 9 and len(tune.val) == 6
    assert ("images/val200/3_1.jpg", 3) in rel(tune.val, task)


def test_vtab_path_with_spaces_splits_on_last_space(tmp_path):
    import numpy as np
    task = make_vtab_task(tmp_path, "eurosat")
    _tiny_image(os.path.join(task, "images/test/a b.jpg"), 1, np.random.default_rng(0))
    with open(os.path.join(task, "test.txt"), "a") as f:
        f.write("images/test/a b.jpg 1\n")
    assert ("images/test/a b.jpg", 1) in rel(load_splits(task).test, task)


@pytest.mark.parametrize("breakage,fragments", [
    ("missing_list", ["has no test.txt", "preparation script"]),
    ("missing_image", ["does not exist", "train800val200.txt:1"]),
    ("label_range", ["label 2 is outside the task's 2 classes"]),
    ("duplicate", ["twice"]),
    ("wrong_name", ["not one of the 19 tasks", "did you mean 'patch_camelyon'"]),
])
def test_vtab_bad_input(tmp_path, breakage, fragments):
    task = make_vtab_task(tmp_path, "patch_camelyon")
    lists = os.path.join(task, "train800val200.txt")
    if breakage == "missing_list":
        os.remove(os.path.join(task, "test.txt"))
    elif breakage == "missing_image":
        os.remove(os.path.join(task, "images/train800/0_0.jpg"))
    elif breakage == "label_range":
        with open(lists, "a") as f:
            f.write("images/train800/0_0.jpg 2\n")
    elif breakage == "duplicate":
        with open(lists, "a") as f:
            f.write("images/train800/0_0.jpg 0\n")
    elif breakage == "wrong_name":
        os.rename(task, os.path.join(tmp_path, "patch_camelyn"))
        task = os.path.join(tmp_path, "patch_camelyn")
    with pytest.raises(DataError) as e:
        load_splits(task)
    for frag in fragments:
        assert frag in str(e.value)


def test_fgvc_ids_remapped(tmp_path):
    root = make_fgvc(tmp_path / "CUB_200_2011", class_ids=(11, 3, 7))
    assert detect_format(root) == "fgvc"
    s = load_splits(root, benchmark_split="tune")
    assert s.class_names == ["3", "7", "11"]
    assert ("011.class/train_0.jpg", 2) in rel(s.train, os.path.join(root, "images"))
    assert len(s.train) == 9 and len(s.val) == 6 and len(s.test) == 6
    assert len(load_splits(root).train) == 15  # final: train + val


def test_fgvc_missing_file_and_unknown_test_id(tmp_path):
    root = make_fgvc(tmp_path / "nabirds")
    os.remove(os.path.join(root, "images", "003.class", "test_1.jpg"))
    with pytest.raises(DataError, match="test.json names .* which does not exist"):
        load_splits(root)
    root = make_fgvc(tmp_path / "dogs")
    with open(os.path.join(root, "test.json")) as f:
        d = json.load(f)
    d[next(iter(d))] = 99
    with open(os.path.join(root, "test.json"), "w") as f:
        json.dump(d, f)
    with pytest.raises(DataError, match=r"class ids that train.json and val.json lack: \[99\]"):
        load_splits(root)


def test_coop_split_file(tmp_path):
    root = make_coop(tmp_path / "oxford_pets")
    assert detect_format(root) == "coop"
    s = load_splits(root, benchmark_split="tune")
    assert s.class_names == ["abyssinian", "beagle", "chihuahua", "dachshund"]
    assert len(s.train) == 16 and len(s.val) == 8 and len(s.test) == 8
    base = load_splits(root, classes="novel")
    assert base.class_names == ["chihuahua", "dachshund"] and {y for _, y in base.test} == {0, 1}


def test_coop_missing_file_and_too_few_shots(tmp_path):
    root = make_coop(tmp_path / "oxford_pets")
    with pytest.raises(DataError, match="fewer than 5 training images.*Dassl would keep all"):
        load_splits(root, shots=5)
    os.remove(os.path.join(root, "images", "beagle", "test_1.jpg"))
    with pytest.raises(DataError, match=r"split_zhou_OxfordPets.json \(test\[\d+\]\) names .* does not exist"):
        load_splits(root)


def test_aircraft_and_imagenet_layouts(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    air = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (air / "images").mkdir(parents=True)
    (air / "variants.txt").write_text("\n".join(variants) + "\n")
    for s in ("train", "val", "test"):
        lines = []
        for y, v in enumerate(variants):
            for i in range(2):
                name = f"{s}{y}{i}"
                _tiny_image(str(air / "images" / f"{name}.jpg"), y, rng)
                lines.append(f"{name} {v}")
        (air / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    s = load_splits(str(air), shots=1, split_seed=1, benchmark_split="tune")
    assert s.class_names == variants and sorted(y for _, y in s.train) == [0, 1, 2] and len(s.val) == 3

    inet = tmp_path / "imagenet"
    inet.mkdir()
    (inet / "classnames.txt").write_text("n02 goldfish\nn01 tench\n")
    for split in ("train", "val"):
        for y, w in enumerate(("n01", "n02")):
            for i in range(2):
                _tiny_image(str(inet / "images" / split / w / f"{i}.JPEG"), y, rng)
    s = load_splits(str(inet))
    assert s.class_names == ["tench", "goldfish"] and len(s.train) == 4 and len(s.test) == 4


@pytest.fixture(scope="module")
def golden_folder(tmp_path_factory):
    with open(GOLDEN) as f:
        golden = json.load(f)
    root = str(tmp_path_factory.mktemp("goldens") / "oxford_pets")
    make_coop(root, split=golden["split"])
    return golden, root


def test_dassl_fewshot_and_coop_subsample_goldens(golden_folder):
    """The items vpt draws for (seed, shots) are the ones Dassl's own generate_fewshot_dataset drew, in its
    order, and the base / new halves are CoOp's subsample_classes output (tests/data/dassl_fewshot.json,
    written by benchmarks/reference_goldens.py from the two repositories' code)."""
    golden, root = golden_folder
    images = os.path.join(root, "images")
    assert len(golden["cases"]) >= 12 and {c["seed"] for c in golden["cases"]} == {1, 2, 3}
    for case in golden["cases"]:
        s = load_splits(root, shots=case["shots"], split_seed=case["seed"], benchmark_split="tune")
        assert [p for p, _ in rel(s.train, images)] == case["train"], case["seed"]
        assert [p for p, _ in rel(s.val, images)] == case["val"]
        for vpt_name, ref_name in (("base", "base"), ("novel", "new")):
            sub = load_splits(root, shots=case["shots"], split_seed=case["seed"], benchmark_split="tune",
                              classes=vpt_name)
            for split in ("train", "val", "test"):
                assert [list(x) for x in rel(getattr(sub, split), images)] == case[ref_name][split]


@pytest.mark.slow
def test_coop_fixture_trains_and_evaluates(tmp_path):
    """A CoOp-format folder trains on the base classes' Dassl few-shot draw and selects on its val draw."""
    pytest.importorskip("open_clip")
    from vpt.cli import main
    root = make_coop(tmp_path / "oxford_pets", per_class=(3, 2, 2))
    recipe = "clip_kgcoop_tiny"  # a packaged recipe, by name
    out = tmp_path / "run"
    assert main(["train", "-c", recipe, "--epochs", "1", "--data", root, "--output", str(out), "--shots", "2", "--split-seed", "1",
                 "--base-to-novel", "--set", "data.benchmark_split=tune", "--device", "cpu"]) == 0
    res = json.load(open(out / "results.json"))
    assert res["data"]["train"] == 4 and res["data"]["val"] == 4  # 2 base classes x 2 shots; val min(2, 4)
    assert res["test"]["num_samples"] == 4 and res["selection"] != "last epoch (no val split)"
    assert res["base_to_novel"]["novel"]["classes"] == ["chihuahua", "dachshund"] and 0 <= res["hm"] <= 100
