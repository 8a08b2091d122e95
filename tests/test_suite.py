"""`vpt suite`: every task of a benchmark folder trained as a normal run folder per seed, the per-task table
with mean ± std over seeds, the suite summary (VTAB-1k: both conventions, labelled), resuming, and the bad
input refused before anything trains."""
import json
import os

import pytest
import yaml

from helpers import make_coop, make_vtab_task, tiny_recipe
from vpt.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def vtab(tmp_path):
    root = tmp_path / "vtab-1k"
    make_vtab_task(root, "patch_camelyon")
    make_vtab_task(root, "kitti", labels=(0, 1, 2, 3), seed=1)
    return str(root)


@pytest.mark.slow
def test_vtab_two_tasks_write_both_means_and_resume(vtab, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    out = tmp_path / "suite"
    argv = ["suite", "vtab1k", "--root", vtab, "-c", recipe, "--output", str(out), "--seeds", "0", "1",
            "--device", "cpu", "--set", "train.log_interval=100"]
    assert main(argv) == 0
    res = json.load(open(out / "suite.json"))
    assert [r["task"] for r in res["tasks"]] == ["patch_camelyon", "kitti"]  # VTAB's order: specialized first
    for r in res["tasks"]:
        tops = [json.load(open(os.path.join(d, "results.json")))["test"]["top1"] for d in r["run_dirs"]]
        assert r["runs"] == 2 and r["top1_mean"] == pytest.approx(sum(tops) / 2)
    s = res["summary"]
    means = {r["task"]: r["top1_mean"] for r in res["tasks"]}
    assert s["task_mean"] == pytest.approx((means["kitti"] + means["patch_camelyon"]) / 2)
    assert s["group_means"] == {"specialized": means["patch_camelyon"], "structured": means["kitti"]}
    assert s["mean_of_group_means"] == pytest.approx(s["task_mean"])
    md = open(out / "suite.md").read()
    assert "mean of the 2 tasks (of 19: partial)" in md and "mean of the group means (specialized, structured)" in md
    assert open(out / "suite.csv").read().splitlines()[0] == "task,group,runs,top1_mean,top1_std"
    cfg = open(out / "kitti" / "seed1" / "config.yaml").read()
    assert "seed: 1" in cfg and "split_seed: 1" in cfg
    # again: finished runs are kept; a run without results (killed) resumes from its folder
    os.remove(out / "kitti" / "seed1" / "results.json")
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count(": done (") == 3 and "--resume" in printed
    assert os.path.isfile(out / "kitti" / "seed1" / "results.json")


@pytest.mark.parametrize("case,fragment", [
    (["--tasks", "kiti"], "--tasks names 'kiti', which is not a vtab1k task folder under"),
    (["--tasks", "kiti"], "did you mean 'kitti'"),
    (["--shots", "2"], "--shots is set per run by vpt suite"),
    (["--suite-shots", "2"], "--suite-shots applies to coop-fewshot"),
    (["--space", "missing.yaml"], "--space file not found"),
])
def test_suite_bad_input_refused_before_training(vtab, tmp_path, capsys, case, fragment):
    recipe = tiny_recipe(tmp_path / "r.yaml", epochs=1)
    rc = main(["suite", "vtab1k", "--root", vtab, "-c", recipe, "--output", str(tmp_path / "o"), *case])
    assert rc == 2 and fragment in capsys.readouterr().err
    assert not os.path.isdir(tmp_path / "o" / "kitti")


def test_suite_unknown_task_folder_named(tmp_path, capsys):
    root = tmp_path / "vtab"
    make_vtab_task(root, "kitti")
    make_vtab_task(root, "smallnorb_elev")
    rc = main(["suite", "vtab1k", "--root", str(root), "-c", tiny_recipe(tmp_path / "r.yaml"), "--output",
               str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "'smallnorb_elev' is not one of the 19 tasks (did you mean 'smallnorb_ele'?)" in err


@pytest.mark.slow
def test_coop_base2novel_suite(tmp_path, capsys):
    pytest.importorskip("open_clip")
    root = tmp_path / "coop"
    make_coop(root / "oxford_pets", per_class=(3, 2, 2))
    make_coop(root / "dtd", name="DescribableTextures", classes=("banded", "blotchy", "braided"), per_class=(2, 1, 2))
    out = tmp_path / "suite"
    assert main(["suite", "coop-base2novel", "--root", str(root), "-c", "clip_kgcoop_tiny",
                 "--output", str(out), "--seeds", "1", "--epochs", "1", "--device", "cpu",
                 "--set", "data.shots=2"]) == 0
    res = json.load(open(out / "suite.json"))
    rows = {r["task"]: r for r in res["tasks"]}
    assert set(rows) == {"oxford_pets", "dtd"}
    for r in rows.values():
        run = json.load(open(os.path.join(r["run_dirs"][0], "results.json")))
        assert r["hm_mean"] == pytest.approx(run["hm"]) and run["data"]["train"] == 4  # 2 base classes x 2 shots
    s = res["summary"]
    assert s["base"] == pytest.approx((rows["dtd"]["base_mean"] + rows["oxford_pets"]["base_mean"]) / 2)
    assert "HM of the averages" in open(out / "suite.md").read()
    # each dataset's run trained with KgCoOp's hand-crafted prompt of that dataset (its code's CUSTOM_TEMPLATES)
    for task, template in (("oxford_pets", "a photo of a {c}, a type of pet."),
                           ("dtd", "a photo of a {c}, a type of texture.")):
        saved = yaml.safe_load(open(os.path.join(rows[task]["run_dirs"][0], "config.yaml")))
        assert saved["model"]["text"]["templates"] == [template]


def _resolved(argv):
    from vpt.cli import build_parser
    from vpt.commands.train import resolve_run_config
    return resolve_run_config(build_parser().parse_args(["train", *argv])).model


@pytest.fixture(scope="module")
def coop_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("coop")
    return {"pets": make_coop(root / "oxford_pets", per_class=(1, 1, 1)),
            "dtd": make_coop(root / "dtd", name="DescribableTextures", classes=("banded", "blotchy"),
                             per_class=(1, 1, 1)),
            "aircraft_named_pets": make_coop(root / "fgvc_aircraft", per_class=(1, 1, 1))}


def test_coop_dataset_gets_the_papers_hand_crafted_prompt(coop_folders, image_folder, tmp_path):
    from vpt.data.benchmarks import coop_dataset_name
    assert coop_dataset_name(coop_folders["pets"]) == "OxfordPets"
    assert coop_dataset_name(coop_folders["aircraft_named_pets"]) == "OxfordPets"  # the split file names it
    assert coop_dataset_name(image_folder) is None
    kg = ["-c", "clip_kgcoop_tiny", "--output", str(tmp_path / "o")]
    assert _resolved(kg + ["--data", coop_folders["pets"]]).text.templates == ["a photo of a {c}, a type of pet."]
    # KgCoOp and CoOp's zero-shot CLIP differ on DTD
    assert _resolved(kg + ["--data", coop_folders["dtd"]]).text.templates == ["a photo of a {c}, a type of texture."]
    zs = ["-c", "clip_kgcoop_tiny", "--output", str(tmp_path / "o"), "--set", "model.text=null"]
    assert _resolved(zs + ["--data", coop_folders["dtd"]]).head.templates == ["{c} texture."]
    # the explicit choice wins, in the recipe or with --set
    assert _resolved(kg + ["--data", coop_folders["pets"], "--set", "model.text.templates=['a {c}.']"]
                     ).text.templates == ["a {c}."]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(open(os.path.join(REPO, "vpt", "recipes", "clip_kgcoop_tiny.yaml")).read().replace(
        "    weight: 8.0\n", "    weight: 8.0\n    templates: ['itap of a {c}.']\n"))
    assert _resolved(["-c", str(recipe), "--data", coop_folders["pets"], "--output", str(tmp_path / "o")]
                     ).text.templates == ["itap of a {c}."]
    head = _resolved(zs + ["--data", coop_folders["dtd"], "--set", "model.head.templates=simple"]).head
    assert head.templates == "simple"
    # not a CoOp folder: the defaults; a trained image prompt or CoOp's learned text: no hand-crafted prompt set
    assert _resolved(kg + ["--data", image_folder]).text.templates == ["a photo of a {c}."]
    coop = _resolved(zs + ["--data", coop_folders["pets"], "--set", "model.text={kind: coop, num_tokens: 4}"])
    assert coop.head.templates == "openai" and coop.text.kind == "coop"
    vis = _resolved(zs + ["--data", coop_folders["pets"], "--set", "model.prompt={kind: vpt_shallow, num_tokens: 2}"])
    assert vis.head.templates == "openai"


def test_suite_process_group_follows_the_resolved_device(vtab, tmp_path, monkeypatch):
    """The backend comes from the device the runs use: a recipe's train.device cpu joins gloo on a GPU machine."""
    import torch
    from vpt import engine
    from vpt.engine import distributed
    from vpt.sweep.suite import resolved_device
    recipe = tiny_recipe(tmp_path / "r.yaml", device="cpu")
    assert resolved_device(recipe) == "cpu"
    assert resolved_device(recipe, sets=["train.device=cuda:1"]) == "cuda:1"
    assert resolved_device(recipe, ["--device", "cuda"], ["train.device=cpu"]) == "cuda"
    assert resolved_device("vpt_deep_vit_tiny_cifar10") is None  # the recipe leaves it to the library
    seen = []

    class Stop(Exception):
        pass

    def fake_init(device=None, **kw):
        seen.append(device)
        raise Stop
    monkeypatch.setattr(engine, "init_distributed", fake_init)
    with pytest.raises(Stop):
        main(["suite", "vtab1k", "--root", vtab, "-c", recipe, "--output", str(tmp_path / "o")])
    assert seen == ["cpu"]
    # and the backend init_distributed picks for that device, with CUDA present and two ranks
    backends = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: backends.append(backend))
    distributed.init_distributed("cpu", env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert backends == ["gloo"]


def test_coop_too_few_images_for_the_shots_stops_before_any_run(tmp_path, capsys):
    """Every task's data is read (lists, files, the few-shot draw) before the first run trains."""
    root = tmp_path / "coop"
    make_coop(root / "oxford_pets", per_class=(3, 2, 2))
    make_coop(root / "dtd", name="DescribableTextures", classes=("banded", "blotchy"), per_class=(1, 1, 1))
    rc = main(["suite", "coop-fewshot", "--root", str(root), "-c", tiny_recipe(tmp_path / "r.yaml"), "--output",
               str(tmp_path / "o"), "--suite-shots", "2", "--seeds", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "dtd: 2 class(es) have fewer than 2 training images" in err and "Dassl would keep all" in err
    assert not os.path.exists(tmp_path / "o" / "oxford_pets")


@pytest.mark.slow
@pytest.mark.sweep
def test_space_sweeps_on_val_then_trains_the_best_setting_final(vtab, tmp_path):
    pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [0.01, 0.2]\n")
    out = tmp_path / "suite"
    assert main(["suite", "vtab1k", "--root", vtab, "-c", tiny_recipe(tmp_path / "r.yaml", epochs=1), "--output",
                 str(out), "--tasks", "kitti", "--seeds", "0", "--device", "cpu", "--space", str(space)]) == 0
    sweep = json.load(open(out / "kitti" / "sweep" / "results.json"))
    trial = sweep["trials"][0]
    assert len(sweep["trials"]) == 2
    best_lr = sweep["best"]["params"]["optim.lr"]
    final = json.load(open(out / "kitti" / "seed0" / "results.json"))
    assert final["config"]["optim"]["lr"] == best_lr
    assert final["data"]["sources"]["train"] == "train800val200.txt"  # the final protocol
    assert final["data"]["sources"]["val"] == "-" and final["data"]["val"] == 0 and trial["params"]
    tuned = [json.load(open(os.path.join(d, f))) for d, _, fs in os.walk(out / "kitti" / "sweep" / "trials")
             for f in fs if f == "results.json"]
    assert tuned and all(t["data"]["sources"]["val"] == "val200.txt" for t in tuned)  # trials select on val200
    assert list(json.load(open(out / "suite.json"))["summary"]["group_means"]) == ["structured"]


@pytest.mark.slow
def test_coop_crossdataset_suite(tmp_path):
    pytest.importorskip("open_clip")
    root = tmp_path / "coop"
    make_coop(root / "imagenet", per_class=(2, 1, 2))
    make_coop(root / "dtd", name="DescribableTextures", classes=("banded", "blotchy", "braided"), per_class=(2, 1, 2))
    out = tmp_path / "suite"
    assert main(["suite", "coop-crossdataset", "--root", str(root), "-c",
                 "clip_kgcoop_tiny", "--output", str(out), "--seeds", "1",
                 "--epochs", "1", "--device", "cpu"]) == 0
    res = json.load(open(out / "suite.json"))
    rows = {r["task"]: r for r in res["tasks"]}
    transfer = json.load(open(out / "imagenet" / "seed1" / "eval_transfer.json"))["transfer"]
    (dtd,) = transfer.values()
    assert dtd["classes"] == ["banded", "blotchy", "braided"] and dtd["num_samples"] == 6
    assert rows["dtd"]["role"] == "target" and rows["dtd"]["top1_mean"] == pytest.approx(dtd["top1"])
    assert res["summary"]["target_mean"] == pytest.approx(dtd["top1"])


def test_the_command_offers_the_suites_the_runner_runs():
    from vpt.commands.suite import SUITES as offered
    from vpt.sweep.suite import SUITES
    assert offered == SUITES
