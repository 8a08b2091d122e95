"""`vpt sweep` end to end on a tiny image folder: trials select on val only, a diverging trial fails alone,
the best setting is re-run with K seeds and tested once, a killed sweep continues with the same command,
and bad input gets a message."""
import glob
import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml

from vpt.cli import main
from vpt.errors import ConfigError
from vpt.sweep import report
from vpt.sweep.run import check_space, choose_candidate
from vpt.sweep.space import load_space
from vpt.tasks import task_class

from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder

pytestmark = [pytest.mark.sweep, pytest.mark.usefixtures("one_thread")]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = make_image_folder(root / "data", per_class=8)
    recipe = {"task": "classification",
              "model": {"backbone": {"name": TINY_VIT_NAME, "pretrained": False, "model_kwargs": dict(TINY_VIT)},
                        "prompt": {"kind": "vpt_deep", "num_tokens": 2}, "head": {"kind": "linear"}},
              "data": {"val_fraction": 0.25, "test_fraction": 0.25},
              "augment": {"enabled": False},
              "optim": {"opt": "sgd"},
              "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 16, "workers": 0, "progress": False}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root, data


def _args(root, data, out, space, *extra):
    return ["sweep", "-c", str(root / "recipe.yaml"), "--data", data, "--space", str(space), "--output", str(out),
            "--pruner", "none", *extra]


@pytest.fixture(scope="module")
def lone_sweep(sweep_setup):
    root, data = sweep_setup
    space = root / "space.yaml"
    space.write_text("optim.lr: [1.0e+30, 0.3, 0.03]\n")
    out = root / "run1"
    assert main(_args(root, data, out, space, "--seeds", "2")) == 0
    return out, space


@pytest.mark.slow
def test_sweep_end_to_end(sweep_setup, lone_sweep, capsys):
    root, data = sweep_setup
    out, space = lone_sweep
    res = json.loads((out / "results.json").read_text())
    states = {t["params"]["optim.lr"]: t["state"] for t in res["trials"]}
    assert states == {1e30: "FAIL", 0.3: "COMPLETE", 0.03: "COMPLETE"}  # the diverging trial failed alone
    failed = next(t for t in res["trials"] if t["state"] == "FAIL")
    assert "non-finite" in failed["error"]
    for t in res["trials"]:
        if t["state"] == "COMPLETE":
            assert [e for e, _ in t["val_curve"]] == [1, 2] and t["value"] == max(v for _, v in t["val_curve"])
    best = max((t for t in res["trials"] if t["state"] == "COMPLETE"), key=lambda t: (t["value"], -t["params"]["optim.lr"]))
    assert res["best"]["params"] == best["params"] and res["best"]["val"] == best["value"]
    # every trial / final run folder is a `vpt train` run (its marker and lock), the sweep folder a sweep
    for marker in glob.glob(str(out / "trials" / "*" / ".vpt_run")) + glob.glob(str(out / "final" / "*" / "*" / ".vpt_run")):
        assert json.loads(open(marker).read())["kind"] == "train"
    assert len(glob.glob(str(out / "trials" / "*" / ".vpt_run"))) == 3
    assert json.loads((out / ".vpt_run").read_text())["kind"] == "sweep"
    # trials never read test; the final runs (2 seeds) read it once each
    for path in glob.glob(str(out / "trials" / "*" / "results.json")):
        assert json.loads(open(path).read())["test"] is None
    final = res["final"]
    assert final["seeds"] == [0, 1] and final["test_n"] == 2
    assert final["folder"] == f"final/trial_{res['best']['trial']:04d}"
    tests = [json.loads((out / final["folder"] / f"seed_{s}" / "results.json").read_text())["test"]["top1"] for s in (0, 1)]
    assert final["test_mean"] == pytest.approx(sum(tests) / 2)
    seed0 = json.loads((out / final["folder"] / "seed_0" / "results.json").read_text())
    assert seed0["config"]["optim"]["lr"] == res["best"]["params"]["optim.lr"]
    # the edge check (1e30 diverged): 0.03 is the low edge; 0.3 lies inside. If 0.03 wins alone, that is an
    # edge; if it ties 0.3 (the tie rule picks the smaller lr), the plateau reaches inside: no warning.
    # (test_a_larger_budget... checks a warning that must fire.)
    done = {t["params"]["optim.lr"]: t["value"] for t in res["trials"] if t["state"] == "COMPLETE"}
    if done[0.03] == done[0.3]:
        assert res["best"]["params"] == {"optim.lr": 0.03}
        assert res["edge_warning"] is None and res["edges"] == {} and res["edge_ties"] == {"optim.lr": [0.3]}
    elif done[0.03] > done[0.3]:
        assert res["edges"] == {"optim.lr": "low"} and "lowest value searched" in res["edge_warning"]
    else:
        assert res["edge_warning"] is None and res["edges"] == {}
    for name in ("summary.md", "summary.csv", "val_vs_lr.png", "history.png"):
        assert (out / name).stat().st_size > 0
    # summary.md leads with the best setting and the final runs' test mean +/- std, then the trials
    md = (out / "summary.md").read_text()
    lr = res["best"]["params"]["optim.lr"]
    assert md.index(f"**Best setting:** optim.lr={lr} (trial {res['best']['trial']}, val top-1") < md.index(
        f"**Final runs:** test top-1 {final['test_mean']:.4g} +/- {final['test_std']:.2g} over 2 run(s) (seeds 0, 1)"
    ) < md.index("## Trials")
    # running the finished sweep again only rewrites its report
    capsys.readouterr()
    assert main(_args(root, data, out, space, "--seeds", "2")) == 0
    printed = capsys.readouterr().out
    assert ("warning: the best setting" in printed) == bool(res["edge_warning"]) and "test top1:" in printed
    again = json.loads((out / "results.json").read_text())
    assert again["best"] == res["best"] and again["final"]["test_mean"] == final["test_mean"]


@pytest.mark.slow
def test_packed_trials_give_the_lone_trials_curves(sweep_setup, lone_sweep):
    """The same grid with --pack 3: one engine run for all three trials; the diverging one fails alone and
    the others see exactly the val curves (and final results) of the lone trials."""
    root, data = sweep_setup
    lone_out, space = lone_sweep
    out = root / "packed"
    assert main(_args(root, data, out, space, "--seeds", "2", "--pack", "3")) == 0
    lone, packed = (json.loads((d / "results.json").read_text()) for d in (lone_out, out))
    by_lr = {t["params"]["optim.lr"]: t for t in lone["trials"]}
    assert len(list((out / "packs").iterdir())) == 1  # one pack
    for t in packed["trials"]:
        other = by_lr[t["params"]["optim.lr"]]
        assert t["state"] == other["state"]
        if t["state"] == "COMPLETE":
            assert t["val_curve"] == other["val_curve"] and t["value"] == other["value"]
    assert packed["best"]["params"] == lone["best"]["params"]
    assert packed["final"]["test_mean"] == lone["final"]["test_mean"]


@pytest.mark.slow
def test_a_larger_budget_that_changes_the_best_trains_its_own_final_runs(sweep_setup, tmp_path, capsys):
    """--trials raised on a finished study: the new trial is better, so the final runs of ITS setting are
    trained (final/trial_<N>, study <study>/final/trial_<N>) beside the earlier ones, with a note."""
    root, data = sweep_setup
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [0.3, 1.0e-05, 1.0e-06]\n")  # the grid's shuffle (seed 0) runs 1e-6, 1e-5, 0.3
    args = _args(root, data, tmp_path / "out", space, "--seeds", "1", "--epochs", "1")
    assert main(args + ["--trials", "2"]) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(t["params"]["optim.lr"] for t in first["trials"]) == [1e-6, 1e-5]
    assert first["final"]["folder"] == f"final/trial_{first['best']['trial']:04d}" and not first["final"]["note"]
    capsys.readouterr()
    assert main(args + ["--trials", "3"]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["best"]["params"] == {"optim.lr": 0.3} and res["best"]["trial"] == 2
    assert res["final"]["study"] == "sweep/final/trial_2" and res["final"]["folder"] == "final/trial_0002"
    run = json.loads((tmp_path / "out" / "final" / "trial_0002" / "seed_0" / "results.json").read_text())
    assert run["config"]["optim"]["lr"] == 0.3 and res["final"]["test_n"] == 1
    printed = capsys.readouterr().out
    assert "best setting has changed since earlier final runs (sweep/final/trial_" in printed
    # 0.3 beat both other values (a tie would have gone to the smaller lr): an edge, and the warning says so
    assert res["edges"] == {"optim.lr": "high"} and res["edge_ties"] == {}
    assert "warning: the best setting (optim.lr=0.3) lies on the edge of the space: optim.lr=0.3 is the highest" in printed
    assert (tmp_path / "out" / first["final"]["folder"] / "seed_0" / "results.json").is_file()  # kept


@pytest.mark.slow
def test_extend_edges_widens_the_grid_past_the_edge_and_trains_only_the_new_point(sweep_setup, tmp_path, capsys):
    """The best lr on the high edge of [1e-5, 0.3]: --extend-edges 1 adds the next value at the list's ratio
    (1e4) in study sweep/widened_1, trains only that trial, keeps the final runs of the best
    setting, and the same command (with or without the flag) then trains nothing more."""
    root, data = sweep_setup
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [1.0e-05, 0.3]\n")
    out = tmp_path / "out"
    args = _args(root, data, out, space, "--seeds", "1", "--epochs", "1")
    assert main(args) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["best"]["params"] == {"optim.lr": 0.3} and first["edges"] == {"optim.lr": "high"}
    assert first["widened"] == [] and first["space"] == first["space_given"]
    # the warning names the way that works: the same command, same folder, with --extend-edges 1
    printed = capsys.readouterr().out
    assert "run the same command with --extend-edges 1" in printed and "sweep again" not in printed
    assert "run the same command with --extend-edges 1" in (out / "summary.md").read_text()
    assert main(args + ["--extend-edges", "1"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["widened"] == [{"study": "sweep/widened_1", "edges": {"optim.lr": "high"}, "added": {"optim.lr": [10000.0]}}]
    assert res["space"] == {"optim.lr": {"values": [1e-05, 0.3, 10000.0]}} and res["space_given"] == first["space"]
    assert [t["number"] for t in res["trials"]] == [0, 1, 2]
    old = {t["number"]: t for t in first["trials"]}
    for t in res["trials"]:  # the earlier trials are the same records, not trained again
        if t["number"] in old:
            assert t == old[t["number"]]
    new = next(t for t in res["trials"] if t["number"] not in old)
    assert new["params"] == {"optim.lr": 10000.0} and new["val_curve"] and new["state"] in ("COMPLETE", "FAIL")
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001", "0002"]
    # the new value did not beat 0.3 (val saturates on this tiny split; a tie goes to the smaller lr)
    assert new["state"] == "FAIL" or new["value"] <= first["best"]["val"]
    assert res["best"] == first["best"] and res["final"]["study"] == first["final"]["study"]  # final runs kept
    assert res["final"]["test_mean"] == first["final"]["test_mean"] and len(list((out / "final").iterdir())) == 1
    assert res["edge_warning"] is None and res["edges"] == {}  # 0.3 now lies inside the space
    assert "widened the space past its edge (sweep/widened_1): optim.lr + 10000.0" in printed
    assert "warning: the best setting" not in printed
    mtime = (out / "trials" / "0002" / "results.json").stat().st_mtime_ns
    assert main(args) == 0  # without the flag, the same command reports the widened study; nothing trains
    assert json.loads((out / "results.json").read_text())["trials"] == res["trials"]
    assert (out / "trials" / "0002" / "results.json").stat().st_mtime_ns == mtime
    assert main(_args(root, data, tmp_path / "bad", space, "--extend-edges", "1", "--sampler", "tpe", "--trials", "2")) == 2
    assert "--extend-edges adds grid points: it needs --sampler grid" in capsys.readouterr().err


@pytest.mark.slow
def test_top_k_trains_each_candidate_and_chooses_by_mean_final_val(sweep_setup, tmp_path, capsys):
    """--top-k 2: the two best trials each get the final runs (their own folders and studies), the setting with
    the best mean final val is the result, summary.md lists both, and the same command again trains nothing."""
    root, data = sweep_setup
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [0.3, 0.03, 1.0e-05]\n")
    out = tmp_path / "out"
    args = _args(root, data, out, space, "--seeds", "2", "--epochs", "1", "--top-k", "2")
    assert main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    ranked = report.ranked_records(res["trials"])
    cands = res["candidates"]
    assert res["top_k"] == 2 and [c["trial"] for c in cands] == [r["number"] for r in ranked[:2]]
    for c in cands:
        runs = [json.loads((out / c["folder"] / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
        assert c["folder"] == f"final/trial_{c['trial']:04d}" and c["study"] == f"sweep/final/trial_{c['trial']}"
        assert all(r["config"]["optim"]["lr"] == c["params"]["optim.lr"] for r in runs) and c["runs"] == 2
        assert c["val_mean"] == pytest.approx(sum(r["val"]["top1"] for r in runs) / 2)
        assert c["test_mean"] == pytest.approx(sum(r["test"]["top1"] for r in runs) / 2)
        assert not c["note"]  # the other candidate's final runs are not "earlier final runs of another setting"
    chosen = cands[choose_candidate(cands)]
    assert [c["chosen"] for c in cands] == [c is chosen for c in cands]
    assert res["best"]["trial"] == chosen["trial"] and res["best"]["params"] == chosen["params"]
    assert res["final"]["folder"] == chosen["folder"] and res["final"]["test_mean"] == chosen["test_mean"]
    assert "Final runs" in (out / "summary.md").read_text()
    assert f"* trial {chosen['trial']} (optim.lr=" in printed and printed.count("mean final val") == 2
    assert main(args) == 0  # finished: only the report is written again
    again = json.loads((out / "results.json").read_text())
    assert again["candidates"] == cands and again["best"] == res["best"]
    assert main(_args(root, data, tmp_path / "bad", space, "--top-k", "0")) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err


@pytest.mark.sweep
def test_choose_candidate_prefers_mean_final_val_then_the_better_trial():
    assert choose_candidate([{"val_mean": 50.0}, {"val_mean": 60.0}]) == 1
    assert choose_candidate([{"val_mean": 60.0}, {"val_mean": 60.0}]) == 0  # tie: the better trial
    assert choose_candidate([{"val_mean": None}, {"val_mean": 10.0}]) == 1  # every final run of #0 failed
    assert choose_candidate([{"val_mean": None}, {"val_mean": None}]) == 0


def _kill_then_rerun(root, data, out, space, *extra):
    """SIGKILL a `vpt sweep` process in its 4th optimizer step (epoch 2 of 2), then run the same command again
    (in this process: the import is the slow part of a new one)."""
    args = _args(root, data, out, space, "--seeds", "1", "--heartbeat", "1", *extra)
    env = {**os.environ, "PYTHONPATH": REPO, "VPT_TEST_KILL_AT_STEP": "4", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-m", "vpt", *args], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_sweep_continues_with_the_same_command(sweep_setup):
    root, data = sweep_setup
    space = root / "space2.yaml"
    space.write_text("optim.lr: [0.3, 0.03]\n")
    out = root / "killed"
    res = _kill_then_rerun(root, data, out, space)
    trials = res["trials"]
    killed_trial = next(t for t in trials if t["state"] == "FAIL")
    retry = next(t for t in trials if t["retry_of"] == killed_trial["number"])
    assert retry["state"] == "COMPLETE" and retry["params"] == killed_trial["params"]
    assert [e for e, _ in retry["val_curve"]] == [1, 2]  # epoch 1 from before the kill, epoch 2 after
    log = (out / "trials" / f"{killed_trial['number']:04d}" / "train.log").read_text()
    assert "resumed" in log  # the retry continued the killed trial's run folder from its finished epoch
    assert sum(t["state"] == "COMPLETE" for t in trials) == 2 and res["final"]["test_n"] == 1


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_pack_resumes_from_its_last_finished_epoch(sweep_setup, lone_sweep):
    """--pack 2 killed in epoch 2: the same command regroups the retried trials into the same pack, which
    resumes after epoch 1; the val curves are those of the lone, unkilled trials."""
    root, data = sweep_setup
    lone = {t["params"]["optim.lr"]: t for t in json.loads((lone_sweep[0] / "results.json").read_text())["trials"]}
    space = root / "space3.yaml"
    space.write_text("optim.lr: [0.3, 0.03]\n")
    out = root / "killed_pack"
    res = _kill_then_rerun(root, data, out, space, "--pack", "2")
    killed = [t for t in res["trials"] if t["state"] == "FAIL"]
    retries = [t for t in res["trials"] if t["retry_of"] is not None]
    assert len(killed) == 2 and sorted(t["retry_of"] for t in retries) == sorted(t["number"] for t in killed)
    assert os.listdir(out / "packs") == ["0000-0001"]  # one pack folder: the retries continued it
    log = (out / "packs" / "0000-0001" / "train.log").read_text()
    assert "resumed" in log and "starts over" not in log
    for t in retries:
        assert t["state"] == "COMPLETE" and [e for e, _ in t["val_curve"]] == [1, 2]
        assert t["val_curve"] == lone[t["params"]["optim.lr"]]["val_curve"] and t["value"] == max(
            v for _, v in t["val_curve"])


@pytest.mark.slow
def test_bad_input_gets_a_message(sweep_setup, capsys):
    root, data = sweep_setup
    bad = root / "bad.yaml"
    bad.write_text("optim.lrr: [0.1]\n")
    assert main(_args(root, data, root / "bad", bad)) == 2
    assert "unknown config field 'optim.lrr'" in capsys.readouterr().err
    bad.write_text("{}\n")
    assert main(_args(root, data, root / "bad", bad)) == 2
    assert "empty" in capsys.readouterr().err
    bad.write_text("optim.opt: [sgd, adamm]\n")
    assert main(_args(root, data, root / "bad", bad)) == 2
    assert "adamm" in capsys.readouterr().err
    bad.write_text("optim.lr: [0.3]\n")
    assert main(_args(root, data, root / "noval", bad, "--val-fraction", "0", "--epochs", "1")) == 2
    assert "trials select on the validation split, and the data has none" in capsys.readouterr().err
    # a folder that holds another sweep, and a study whose space differs
    space = root / "one.yaml"
    space.write_text("optim.lr: [0.3]\n")
    out = root / "taken"
    os.makedirs(out)
    (out / "sweep.json").write_text(json.dumps({"study": "other", "storage": "x", "space": {}}))
    assert main(_args(root, data, out, space)) == 2
    assert "in use by another sweep" in capsys.readouterr().err
    db = f"sqlite:///{root / 'shared.db'}"
    study = optuna.create_study(storage=db, study_name="s", direction="maximize")
    study.set_user_attr("vpt:space", {"optim.lr": {"values": [1.0]}})
    assert main(_args(root, data, root / "other", space, "--storage", db, "--study", "s")) == 2
    assert "searches another space" in capsys.readouterr().err
    assert main(_args(root, data, root / "x", space, "--storage", f"sqlite:///{root}/no/dir/x.db")) == 2
    assert "cannot reach the storage" in capsys.readouterr().err
    # no -c: the packaged default recipe, named as `vpt train` names it; a missing data folder writes nothing
    out = root / "nodata"
    assert main(["sweep", "--space", str(space), "--data", str(root / "no_such_folder"), "--output", str(out)]) == 2
    io = capsys.readouterr()
    assert "recipe: vpt_deep_vit_tiny_cifar10 (the default" in io.out
    assert "data not found" in io.err and "no_such_folder" in io.err and not out.exists()


@pytest.mark.sweep
def test_sweep_folder_uses_the_run_folder_marker_and_lock(sweep_setup, tmp_path, capsys):
    """The sweep folder carries `vpt train`'s marker and lock (held shared by the study's workers): another
    study's sweep, or a `vpt train`, there is refused (while it runs: by the lock; after: by the marker)."""
    from vpt.engine.rundir import prepare_run_dir
    from vpt.sweep.folder import prepare_sweep_dir
    from vpt.errors import RunDirError
    root, data = sweep_setup
    out = str(tmp_path / "sweep")
    mine = {"study": "a", "storage": "sqlite:///x.db", "space": {"optim.lr": {"values": [0.1]}}}
    # a worker starting beside one that is claiming the folder sees its lock and temporary marker only
    os.makedirs(out)
    for name in (".vpt_run.lock", "..vpt_run.123.tmp", ".vpt_run.456.tmp"):  # now's and older versions' names
        (tmp_path / "sweep" / name).write_text("")
    first = prepare_sweep_dir(out, mine)
    second = prepare_sweep_dir(out, dict(mine))  # a second worker of the same study shares the folder
    try:
        assert json.loads((tmp_path / "sweep" / ".vpt_run").read_text())["sweep"] == mine
        with pytest.raises(RunDirError, match="in use by a running vpt sweep"):
            prepare_run_dir(out, overwrite=True)
        with pytest.raises(RunDirError, match="in use by another sweep \\(study 'a'"):
            prepare_sweep_dir(out, {**mine, "study": "b"})
    finally:
        first.release()
        second.release()
    (tmp_path / "sweep" / "results.json").write_text("{}")
    with pytest.raises(RunDirError, match="holds a vpt sweep \\(study 'a'\\)"):
        prepare_run_dir(out, overwrite=True)
    assert (tmp_path / "sweep" / "results.json").read_text() == "{}"  # --overwrite deleted nothing of the sweep's
    recipe = str(root / "recipe.yaml")
    assert main(["train", "-c", recipe, "--data", data, "--output", out, "--overwrite"]) == 2
    assert "holds a vpt sweep" in capsys.readouterr().err
    run = str(tmp_path / "run")
    prepare_run_dir(run).release()
    with pytest.raises(RunDirError, match="holds a vpt train run"):
        prepare_sweep_dir(run, mine)
    legacy = tmp_path / "legacy"  # a sweep folder made before the marker: its sweep.json says whose it is
    os.makedirs(legacy)
    (legacy / "sweep.json").write_text(json.dumps(mine))
    prepare_sweep_dir(str(legacy), mine).release()
    assert json.loads((legacy / ".vpt_run").read_text())["sweep"] == mine
    os.makedirs(tmp_path / "mine")
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match="not a vpt sweep and holds other files \\(notes.txt\\)"):
        prepare_sweep_dir(str(tmp_path / "mine"), mine)


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_sweep_processes_share_one_study(sweep_setup, tmp_path):
    """Two real `vpt sweep` workers, one SQLite study, one folder: every grid point runs once, both exit 0."""
    root, data = sweep_setup
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [0.3, 0.1, 0.03, 0.01]\n")
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "vpt", *_args(root, data, out, space, "--seeds", "1", "--epochs", "1")]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    res = json.loads((out / "results.json").read_text())
    done = sorted(t["params"]["optim.lr"] for t in res["trials"] if t["state"] == "COMPLETE")
    assert done == [0.01, 0.03, 0.1, 0.3]  # every grid point exactly once
    assert all(t["state"] == "COMPLETE" for t in res["trials"])
    assert sorted(os.listdir(out / "trials")) == [f"{i:04d}" for i in range(4)]
    assert res["final"]["test_n"] == 1 and len(res["final_trials"]) == 1


def _recipes_of(space: str):
    """The packaged recipe of the same name, else every recipe under configs/ that names the space (the detection
    spaces: configs/detection/*.yaml say ``--space configs/spaces/detection_lr.yaml``)."""
    packaged = os.path.join(REPO, "vpt", "recipes", os.path.basename(space))
    if os.path.isfile(packaged):
        return [packaged]
    ref = "configs/spaces/" + os.path.basename(space)
    return [r for r in sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.yaml")))
            if "spaces" not in r.split(os.sep) and ref in open(r, encoding="utf-8").read()]


@pytest.mark.sweep
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "spaces", "*.yaml"))))
def test_shipped_spaces_fit_their_recipes(path, tmp_path):
    recipes = _recipes_of(path)
    assert recipes, f"{path} has no recipe: neither vpt/recipes/{os.path.basename(path)} nor a configs/ recipe naming it"
    for recipe in recipes:
        base = yaml.safe_load(open(recipe))
        base.setdefault("data", {})["root"] = str(tmp_path)
        check_space(load_space(path), task_class(base.get("task", "classification")), base)


@pytest.mark.sweep
def test_a_space_that_the_recipe_overrides_is_refused():
    base = {"task": "classification", "data": {"root": "x"}, "optim": {"lr": 40.0}}
    with pytest.raises(ConfigError, match="optim.lr=40.0, which wins over lr_base"):
        check_space(load_space(os.path.join(REPO, "configs", "spaces", "vpt_deep_vitb16_in21k.yaml")),
                    task_class("classification"), base)


@pytest.mark.sweep
def test_a_pruned_trial_stops_its_engine_run_after_the_epoch(sweep_setup, tmp_path):
    """The engine callback path of pruning: the pruner's verdict after epoch 1 ends that trial's run there."""
    from vpt.sweep.run import Sweep, SweepOptions
    from vpt.sweep.space import parse_space
    from vpt.sweep.worker import TrialReporter
    root, data = sweep_setup
    base = yaml.safe_load((root / "recipe.yaml").read_text())
    base["data"]["root"] = data
    base["output"] = {"dir": str(tmp_path / "sweep")}
    space = parse_space({"optim.lr": [0.3]})
    sweep = Sweep(task_class("classification"), base, space, SweepOptions())
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=101.0))
    trial = study.ask(fixed_distributions=space.distributions())
    reporter = TrialReporter(trial)
    [outcome] = sweep._train_search(study)([trial], [dict(trial.params)], [reporter])
    assert outcome.pruned and reporter.pruned
    run = tmp_path / "sweep" / "trials" / "0000"
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # the header and epoch 1: epoch 2 never ran
    assert "pruned" in json.loads((run / "results.json").read_text())["stopped"]
    assert list(study.trials[0].intermediate_values) == [1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_nproc_per_trial_launches_torchrun_and_the_job_reports_each_epoch(sweep_setup, tmp_path, monkeypatch, capsys):
    """--nproc-per-trial: each trial / final run is `python -m torch.distributed.run --standalone
    --nproc_per_node=N -m vpt.commands.sweep_trial ...`; the job's rank 0 reports every epoch's val to the
    trial in the storage. Here the job runs in this process as one rank (the 2-process run is the slow test)."""
    from vpt.sweep import torchrun
    root, data = sweep_setup
    cmd = torchrun.launch_command(2, "t.yaml", "s/final", 7, "median", "val_top1", True, False)
    assert cmd[1:6] == ["-m", "vpt.sweep.launch", str(os.getpid()), "--standalone", "--nproc_per_node=2"]
    assert cmd[6:9] == ["-m", "vpt.commands.sweep_trial", "t.yaml"] and "--blind-to-test" in cmd and "--resume" not in cmd
    jobs = []

    def in_process(cmd, storage_url, hint):
        monkeypatch.setenv(torchrun.STORAGE_ENV, storage_url)
        jobs.append(cmd)
        return torchrun.trial_main(cmd[cmd.index(torchrun.TRIAL_MODULE) + 1:])
    monkeypatch.setattr(torchrun, "run_job", in_process)
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [1.0e+30, 0.3]\n")
    out = tmp_path / "out"
    assert main(_args(root, data, out, space, "--seeds", "1", "--nproc-per-trial", "2")) == 0
    assert len(jobs) == 3 and all("--nproc_per_node=2" in j for j in jobs)
    assert sum("--blind-to-test" in j for j in jobs) == 2  # the search trials; the final run reads test
    res = json.loads((out / "results.json").read_text())
    states = {t["params"]["optim.lr"]: t for t in res["trials"]}
    assert states[1e30]["state"] == "FAIL" and "non-finite" in states[1e30]["error"]  # diverged: the trial fails
    assert states[0.3]["state"] == "COMPLETE" and [e for e, _ in states[0.3]["val_curve"]] == [1, 2]
    assert json.loads((out / "trials" / f"{states[0.3]['number']:04d}" / "results.json").read_text())["test"] is None
    assert res["final"]["test_n"] == 1


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_trial_job_dies_with_the_worker_that_started_it():
    """A sweep worker killed outright leaves no torchrun job behind: the job (vpt.sweep.launch) gets SIGTERM
    when the thread that started it dies (here a thread, so the test process itself survives); a job whose
    worker is already gone exits; and the launcher runs torch's own launcher with the arguments it is given."""
    import signal
    import threading
    env = {**os.environ, "PYTHONPATH": REPO}
    guard = ("import sys, time; from vpt.sweep.launch import die_with_parent; die_with_parent(int(sys.argv[1])); "
             "print('armed', flush=True); time.sleep(60)")
    box = {}

    def start():  # the thread lives until the job has armed its signal, as a worker waits for its job
        box["job"] = subprocess.Popen([sys.executable, "-c", guard, str(os.getpid())], env=env, stdout=subprocess.PIPE,
                                      text=True)
        box["line"] = box["job"].stdout.readline()
    starter = threading.Thread(target=start)
    starter.start()
    starter.join()
    assert box["line"] == "armed\n" and box["job"].wait(timeout=60) == -signal.SIGTERM
    gone = subprocess.run([sys.executable, "-c", guard, "1"], env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "(pid 1) that started this trial job is gone" in gone.stderr
    usage = subprocess.run([sys.executable, "-m", "vpt.sweep.launch", str(os.getpid()), "--help"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and "--nproc_per_node" in usage.stdout, usage.stderr[-2000:]


@pytest.mark.sweep
@pytest.mark.skipif(not os.environ.get("VPT_SLOW_TESTS"),
                    reason="SLOW: a real 2-process torchrun job per trial takes 30-60 s on 2 busy CPU cores; "
                           "set VPT_SLOW_TESTS=1")
@pytest.mark.slow
@pytest.mark.subprocess
def test_nproc_per_trial_two_gloo_processes(sweep_setup, tmp_path):
    root, data = sweep_setup
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [0.3]\n")
    out = tmp_path / "out"
    assert main(_args(root, data, out, space, "--seeds", "1", "--device", "cpu", "--nproc-per-trial", "2")) == 0
    res = json.loads((out / "results.json").read_text())
    [trial] = res["trials"]
    assert trial["state"] == "COMPLETE" and [e for e, _ in trial["val_curve"]] == [1, 2]  # reported by rank 0
    run = json.loads((out / "trials" / "0000" / "results.json").read_text())
    assert run["world_size"] == 2 and run["test"] is None
    assert json.loads((out / res["final"]["folder"] / "seed_0" / "results.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_sigterm_fails_the_running_trial_and_queues_it_again(sweep_setup, tmp_path, monkeypatch):
    """SIGTERM ends `vpt sweep` as Ctrl-C does: exit 130, the running trial FAILED and queued again (WAITING)
    at once, not left RUNNING until its heartbeat goes stale; the previous SIGTERM handler is restored."""
    import signal
    from vpt.engine import trainer
    root, data = sweep_setup
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [0.3, 0.03]\n")
    step = trainer.Trainer._optimizer_step

    def terminated_step(self):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread at the next bytecode
        return step(self)

    monkeypatch.setattr(trainer.Trainer, "_optimizer_step", terminated_step)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert main(_args(root, data, out, space, "--seeds", "1")) == 130
    assert signal.getsignal(signal.SIGTERM) is before
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    states = sorted(t.state.name for t in study.get_trials())
    assert states == ["FAIL", "WAITING"], states
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"][0]
    assert "SIGTERM" in failed.user_attrs["interrupted"] and "error" not in failed.user_attrs
    # the same command continues it: the stopped trial reads 'interrupted', continued by its retry, which
    # reads 'complete' with no trace of the interrupt in its own record
    monkeypatch.setattr(trainer.Trainer, "_optimizer_step", step)
    assert main(_args(root, data, out, space, "--seeds", "1")) == 0
    res = json.loads((out / "results.json").read_text())
    stopped = next(t for t in res["trials"] if t["interrupted"])
    retry = next(t for t in res["trials"] if t["retry_of"] == stopped["number"])
    assert stopped["continued_by"] == retry["number"] and "SIGTERM" in stopped["interrupted"]
    assert retry["state"] == "COMPLETE" and retry["error"] is None and not retry["interrupted"]
    assert res["trial_counts"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 0, "INTERRUPTED": 1, "RUNNING": 0}
    rows = {line.split(" | ")[0].strip("| "): line for line in (out / "summary.md").read_text().splitlines()
            if line.startswith("| ")}
    assert "| interrupted |" in rows[str(stopped["number"])]
    assert f"continued by trial {retry['number']}" in rows[str(stopped["number"])]
    assert "| complete |" in rows[str(retry["number"])] and "Interrupt" not in rows[str(retry["number"])]
    assert f"continues trial {stopped['number']}" in rows[str(retry["number"])]
