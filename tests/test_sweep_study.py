"""vpt.sweep without training: spaces, studies shared by worker processes, stale and diverging trials, pruning,
reports. Training is a stand-in callable here (the command's tests train for real)."""
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

import optuna  # the vpt[sweep] extra; the test extra installs it

from vpt.errors import ConfigError  # noqa: E402
from vpt.prompts.tokens import DeepPromptConfig  # noqa: E402
from vpt.sweep import report  # noqa: E402
from vpt.sweep.space import SearchSpace, check_fields, parse_space  # noqa: E402
from vpt.sweep.study import (FILLING_ATTR, PACK_ATTR, SweepError, fail_stale_trials, heartbeat, make_pruner,  # noqa: E402
                             make_sampler, open_storage, open_study, open_widened)
from vpt.sweep.worker import Outcome, run_worker  # noqa: E402
from vpt.tasks.classification import RunConfig  # noqa: E402

pytestmark = pytest.mark.sweep

S = optuna.trial.TrialState
GRID = {"optim.lr": [0.1, 0.01, 0.001], "optim.weight_decay": [0.0, 0.01]}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- spaces -------------------------------------------------------------------------------------------------
@pytest.mark.sweep
def test_space_forms_and_optuna_distributions():
    space = parse_space({"optim.lr": {"low": 1e-4, "high": 1e-1, "log": True},
                         "model.prompt.num_tokens": {"low": 5, "high": 20, "step": 5},
                         "optim.weight_decay": [0.0, 1e-4]})
    d = space.distributions()
    assert isinstance(d["optim.lr"], optuna.distributions.FloatDistribution) and d["optim.lr"].log
    assert isinstance(d["model.prompt.num_tokens"], optuna.distributions.IntDistribution)
    assert space["model.prompt.num_tokens"].grid() == [5, 10, 15, 20]
    with pytest.raises(ConfigError, match="optim.lr is a continuous range"):
        space.grid()
    assert parse_space(GRID).grid_size() == 6
    assert parse_space(GRID).fingerprint() == parse_space(dict(reversed(list(GRID.items())))).fingerprint()


@pytest.mark.sweep
@pytest.mark.parametrize("data,match", [
    ({}, "empty"),
    (None, "empty"),
    ([1, 2], "must map"),
    ({"optim.lr": []}, "empty list"),
    ({"optim.lr": [0.1, 0.1]}, "listed twice"),
    ({"optim.lr": [[0.1]]}, "list values must be"),
    ({"optim.lr": {"low": 1, "hihg": 2}}, "did you mean 'high'"),
    ({"optim.lr": {"low": 1}}, "both low and high"),
    ({"optim.lr": {"low": 2, "high": 1}}, "must be below"),
    ({"optim.lr": {"low": 0, "high": 1, "log": True}}, "low > 0"),
    ({"optim.lr": {"low": 1e-3, "high": 1, "log": True, "step": 0.1}}, "not both"),
    ({"optim.lr": {"low": 0, "high": 1, "step": -1}}, "step must be > 0"),
    ({"optim.lr": "0.1"}, "expected a list"),
])
def test_invalid_spaces_are_refused_with_the_fix(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(data)


@pytest.mark.sweep
def test_unknown_fields_get_did_you_mean_against_the_config_dataclasses():
    schemas = {"model.prompt": DeepPromptConfig, "model.head": None}
    check_fields(parse_space({"optim.lr": [1], "model.prompt.num_tokens": [5], "model.head.kind": ["mlp"]}),
                 RunConfig, schemas)
    with pytest.raises(ConfigError, match="unknown config field 'optim.lrr'.*did you mean 'optim.lr'"):
        check_fields(parse_space({"optim.lrr": [1]}), RunConfig, schemas)
    with pytest.raises(ConfigError, match="did you mean 'optim.weight_decay'"):
        check_fields(parse_space({"optim.weight_decy": [1]}), RunConfig, schemas)
    with pytest.raises(ConfigError, match="did you mean 'model.prompt.num_tokens'"):
        check_fields(parse_space({"model.prompt.num_token": [1]}), RunConfig, schemas)


@pytest.mark.sweep
def test_edges():
    space = parse_space({"optim.lr": [0.1, 0.01, 0.001], "optim.weight_decay": [0.0, 0.01],
                         "sched.warmup_epochs": {"low": 0.5, "high": 10.0, "log": True}})
    assert space.edges({"optim.lr": 0.1}) == {"optim.lr": "high"}
    assert space.edges({"optim.lr": 0.001}) == {"optim.lr": "low"}
    assert space.edges({"optim.lr": 0.01, "optim.weight_decay": 0.0}) == {}  # 0 is the floor, not an edge
    assert space.edges({"optim.weight_decay": 0.01}) == {"optim.weight_decay": "high"}
    assert space.edges({"sched.warmup_epochs": 9.5}) == {"sched.warmup_epochs": "high"}
    assert space.edges({"sched.warmup_epochs": 2.0}) == {}
    assert SearchSpace.from_dict(space.to_dict()).fingerprint() == space.fingerprint()  # a results.json's space
    msg = report.edge_warning(space, {"optim.lr": 0.1, "optim.weight_decay": 0.0})
    assert "optim.lr=0.1 is the highest value searched" in msg and "weight_decay" not in msg.split(":")[1]
    # a plateau: the lowest lr ties with values inside the space (a saturated val split), so the tie rule
    # picked the edge; no warning, and results name the tie. A lone edge value, or a near tie, still warns.
    def rec(n, lr, value, state="COMPLETE"):
        return {"number": n, "state": state, "value": value, "params": {"optim.lr": lr}}
    records = [rec(0, 0.001, 100.0), rec(1, 0.01, 100.0), rec(2, 0.1, 99.5), rec(3, 0.1, 100.0, "FAIL")]
    assert report.edge_ties(space, {"optim.lr": 0.001}, 100.0, records) == {"optim.lr": [0.01]}
    assert report.real_edges(space, {"optim.lr": 0.001}, 100.0, records) == {}
    assert report.edge_warning(space, {"optim.lr": 0.001}, 100.0, records) is None
    records[1]["value"] = 99.5
    assert report.edge_ties(space, {"optim.lr": 0.001}, 100.0, records) == {}
    assert "optim.lr=0.001 is the lowest value searched" in report.edge_warning(space, {"optim.lr": 0.001}, 100.0, records)


def test_the_edge_warning_names_the_way_past_the_edge_that_works():
    """A grid: --extend-edges N (the same command and folder; the count after the steps already taken). A
    field with no next value, or a tpe / random search: a wider space in a new --output, which is what the
    folder then takes (it holds this space's study)."""
    space = parse_space({"optim.lr": [0.1, 0.01, 0.001], "optim.opt": ["sgd", "adamw"],
                         "optim.weight_decay": {"low": 1e-5, "high": 1e-1, "log": True}})
    grid = report.edge_warning(space, {"optim.lr": 0.1, "optim.opt": "sgd"})
    assert "run the same command with --extend-edges 1" in grid and "widen the space there and sweep again" not in grid
    assert "--extend-edges 3" in report.edge_warning(space, {"optim.lr": 0.1}, extended=2)
    categorical = report.edge_warning(space, {"optim.opt": "sgd", "optim.lr": 0.01})
    assert categorical is None or "--extend-edges 1" not in categorical  # a list of names has no edge to widen
    tpe = report.edge_warning(space, {"optim.lr": 0.01, "optim.weight_decay": 0.1}, sampler="tpe")
    assert "widen the range in the space file and sweep into a new --output" in tpe and "needs --sampler grid" in tpe
    ranged = report.edge_warning(space, {"optim.lr": 0.01, "optim.weight_decay": 0.1})
    assert "optim.weight_decay has no next value to add" in ranged and "new --output" in ranged


def _record(n, state, value, lr, **kw):
    return {"number": n, "state": state, "value": value, "params": {"optim.lr": lr}, "val_curve": [[1, value or 0]],
            "best_epoch": 1, "error": None, "retry_of": None, "interrupted": False, "continued_by": None,
            "seconds": 1.0, **kw}


def test_summary_leads_with_the_best_setting_and_the_final_test_and_states_are_honest():
    space = parse_space({"optim.lr": [0.1, 0.01, 0.001]})
    recs = [_record(0, "FAIL", None, 0.1, interrupted="interrupted (KeyboardInterrupt)", continued_by=3),
            _record(1, "COMPLETE", 80.0, 0.01), _record(2, "FAIL", None, 0.001, error="diverged: nan"),
            _record(3, "COMPLETE", 90.0, 0.1, retry_of=0)]
    chosen = {"params": {"optim.lr": 0.1}, "val": 90.0, "trial": 3, "metric": "top1", "test_mean": 71.25,
              "test_std": 1.5, "test_n": 3, "seeds": [0, 1, 2]}
    md = report.summary_markdown(recs, space, "val top1", chosen=chosen, warning="the best setting ... edge")
    head = md.split("## Trials")[0]
    assert head.index("**Best setting:** optim.lr=0.1 (trial 3, val top1 90)") < head.index("**Final runs:**")
    assert "test top1 71.25 +/- 1.5 over 3 run(s) (seeds 0, 1, 2)" in head and "**Warning:** the best" in head
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| complete |" in rows["3"] and "continues trial 0" in rows["3"] and "Interrupt" not in rows["3"]
    assert "| interrupted |" in rows["0"] and "continued by trial 3" in rows["0"]
    assert "| fail |" in rows["2"] and "diverged: nan" in rows["2"]
    assert {r["trial"]: r["state"] for r in report.summary_rows(recs, space)} == {
        0: "interrupted", 1: "complete", 2: "fail", 3: "complete"}
    # before any final run: the best trial leads; with no trial completed, the summary says so
    assert "**Best setting:** optim.lr=0.1 (trial 3, val top1 90)" in report.summary_markdown(recs, space)
    assert "No trial has completed yet" in report.summary_markdown(recs[:1], space)


def test_plots_name_the_metric_count_trials_in_integers_and_render_any_name(tmp_path, monkeypatch):
    """history.png: the metric's name on the y axis, integer trial ticks; text in DejaVu Sans (named, whatever
    the user's matplotlibrc says) with '$' kept as a character, so a field or metric name like 'navío $ x $'
    renders whole, with no missing glyph."""
    import matplotlib
    matplotlib.use("Agg")
    figures = {}

    def keep(fig, path):  # what each plot would save: drawn, its text read back
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Glyph ... missing from font(s)" is a UserWarning
            fig.canvas.draw()
        ax = fig.axes[0]
        figures[os.path.basename(path)] = {
            "ylabel": ax.get_ylabel(), "xticks": [t.get_text() for t in ax.get_xticklabels() if t.get_text()],
            "fonts": {t.get_fontname() for t in [ax.xaxis.label, ax.yaxis.label, *ax.get_yticklabels()]},
            "math": {t.get_parse_math() for t in [ax.xaxis.label, ax.yaxis.label]}}
        open(path, "wb").close()

    monkeypatch.setattr(report, "_save_png", keep)
    monkeypatch.setitem(matplotlib.rcParams, "font.family", ["monospace"])  # a user's style: overridden
    space = parse_space({"optim.lr": [0.1, 0.01, 0.001]})
    recs = [_record(n, "COMPLETE", v, lr) for n, (lr, v) in enumerate([(0.1, 50.0), (0.01, 60.0), (0.001, 55.0)])]
    report.write_plots(str(tmp_path), recs, space, metric="val navío $ x $")
    hist = figures["history.png"]
    assert hist["ylabel"] == "val navío $ x $" and hist["math"] == {False}
    assert hist["xticks"] and all(t.lstrip("−-").isdigit() for t in hist["xticks"]), hist["xticks"]
    assert hist["fonts"] == {"DejaVu Sans"}
    assert figures["val_vs_lr.png"]["ylabel"] == "best val navío $ x $"


@pytest.mark.parametrize("spec, side, values", [
    ([0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0], "low", [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]),  # half-decades
    ([0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0], "high", [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]),
    ([1e-5, 3e-5, 1e-4], "low", [3e-6, 1e-5, 3e-5, 1e-4]),
    ([0.1, 0.01, 0.001], "low", [0.0001, 0.1, 0.01, 0.001]),  # decades, in the list's own order
    ([5, 10, 20, 40], "high", [5, 10, 20, 40, 80]),  # doubling ints keep doubling (no round-number snap)
    ([1, 2, 3], "high", [1, 2, 3, 4]),  # even steps: one step more
    ([0.1, 0.5, 0.9], "low", [0.0, 0.1, 0.5, 0.9]),  # a positive field stops at 0
    ({"low": 5, "high": 50, "step": 5}, "high", (5, 55)),
    ({"low": 5, "high": 50, "step": 5}, "low", (0, 50)),
    (["a", "b"], "high", None), ([0.3], "high", None), ({"low": 0.1, "high": 1.0, "log": True}, "high", None),
])
def test_a_param_extends_past_its_edge_at_its_spacing(spec, side, values):
    wider = parse_space({"x": spec}).params[0].extended(side)
    if values is None:
        assert wider is None
    elif isinstance(values, tuple):
        assert (wider.low, wider.high, wider.step) == (*values, 5) and isinstance(wider.low, int)
    else:
        assert list(wider.values) == pytest.approx(values, rel=1e-12)
        assert all(type(v) is type(spec[0]) for v in wider.values)


@pytest.mark.sweep
def test_a_widened_space_adds_a_row_of_grid_points():
    space = parse_space(GRID)
    wider = space.widened({"optim.lr": "high", "optim.weight_decay": "high"})
    assert wider.grid() == {"optim.lr": [0.1, 0.01, 0.001, 1.0], "optim.weight_decay": [0.0, 0.01, 0.02]}
    new = [p for p in wider.points() if p not in space.points()]
    assert len(space.points()) == 6 and len(new) == 12 - 6 and {"optim.lr": 1.0, "optim.weight_decay": 0.0} in new
    assert space.widened({}) is None and parse_space({"optim.opt": ["sgd", "adamw"]}).widened({"optim.opt": "high"}) is None


# --- studies --------------------------------------------------------------------------------------------------
def _study(url, space=GRID, config=None, sampler="grid"):
    sp = parse_space(space)
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    return open_study(storage, "s", sp, config or {"optim": {"opt": "sgd"}, "output": {"dir": "x"}},
                      make_sampler(sampler, sp), make_pruner("none", 3)), sp


@pytest.mark.slow
def test_join_checks_space_and_config(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _study(url)
    _study(url, config={"optim": {"opt": "sgd"}, "output": {"dir": "elsewhere"}})  # where it writes may differ
    with pytest.raises(SweepError, match="another space.*optim.weight_decay"):
        _study(url, space={"optim.lr": [0.1, 0.01, 0.001], "optim.weight_decay": [0.0]})
    with pytest.raises(SweepError, match="another config.*optim.opt: study 'sgd', this command 'adamw'"):
        _study(url, config={"optim": {"opt": "adamw"}})


@pytest.mark.sweep
def test_a_study_left_unrecorded_is_taken_up_and_a_foreign_one_is_refused(tmp_path):
    """A creator stopped between creating the study and recording its space leaves an empty, unrecorded study:
    the same command records it and runs (a killed sweep continues at any point). One with trials that vpt
    did not record is someone else's."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    optuna.create_study(storage=storage, study_name="s", direction="maximize")
    sp = parse_space(GRID)
    config = {"optim": {"opt": "sgd"}}
    study = open_study(storage, "s", sp, config, make_sampler("grid", sp), make_pruner("none", 3), wait_s=0.3)
    assert study.user_attrs["vpt:space"] == sp.to_dict()
    with pytest.raises(SweepError, match="another config"):  # and it is checked like any other from now on
        open_study(storage, "s", sp, {"optim": {"opt": "adamw"}}, make_sampler("grid", sp), make_pruner("none", 3))
    theirs = optuna.create_study(storage=storage, study_name="theirs", direction="maximize")
    theirs.enqueue_trial({"x": 1})
    with pytest.raises(SweepError, match="'theirs' exists but was not made by vpt sweep"):
        open_study(storage, "theirs", sp, config, make_sampler("grid", sp), make_pruner("none", 3), wait_s=0.3)


@pytest.mark.sweep
def test_unreachable_storage_is_named(tmp_path):
    with pytest.raises(SweepError, match="cannot reach the storage"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/study.db")
    with pytest.raises(SweepError, match="journal file path|does not exist"):
        open_storage(f"journal:{tmp_path}/no/such/dir/study.log")
    with pytest.raises(SweepError, match="neither an SQLAlchemy URL"):
        open_storage("study.db")


def _fake_train(values, fail_at=None):
    def train(trials, params, reporters):
        out = []
        for p, r in zip(params, reporters):
            if fail_at is not None and p == fail_at:
                out.append(Outcome(error="FloatingPointError: non-finite training loss in epoch 1"))
                continue
            for epoch in (1, 2, 3):
                if r.report(epoch, values(p) * epoch / 3):
                    break
            out.append(Outcome(pruned=r.pruned))
        return out
    return train


@pytest.mark.slow
def test_diverging_trial_fails_alone_and_the_study_completes(tmp_path):
    study, sp = _study(f"sqlite:///{tmp_path / 'study.db'}")
    bad = {"optim.lr": 0.1, "optim.weight_decay": 0.01}
    run_worker(study, sp, sp.grid_size(), _fake_train(lambda p: 1 / p["optim.lr"] - p["optim.weight_decay"], fail_at=bad), grid=True)
    trials = study.get_trials()
    assert len(trials) == 6
    failed = [t for t in trials if t.state == S.FAIL]
    assert [t.params for t in failed] == [bad] and "non-finite" in failed[0].user_attrs["error"]
    assert sum(t.state == S.COMPLETE for t in trials) == 5
    recs = report.trial_records(study)
    assert report.best_record(recs)["params"] == {"optim.lr": 0.001, "optim.weight_decay": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_a_widened_study_keeps_every_trial_and_runs_only_the_new_points(tmp_path, scheme):
    """The best value on the high edge: the widened study copies the finished trials (numbers, values, curves,
    attributes) and runs only the new grid points; a second worker joins it; one left half filled is made
    again; the parent must be finished first."""
    url = f"sqlite:///{tmp_path / 'study.db'}" if scheme == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    study, sp = _study(url, space={"optim.lr": [0.01, 0.1]})
    values = lambda p: {0.01: 50.0, 0.1: 70.0, 1.0: 80.0}[p["optim.lr"]]  # noqa: E731
    trained = []

    def train(trials, params, reporters):
        trained.extend(p["optim.lr"] for p in params)
        return _fake_train(values)(trials, params, reporters)
    run_worker(study, sp, sp.grid_size(), train, grid=True)
    best = report.best_record(report.trial_records(study))
    edges = report.real_edges(sp, best["params"], best["value"], report.trial_records(study))
    assert edges == {"optim.lr": "high"}
    wider = sp.widened(edges)
    assert wider.grid() == {"optim.lr": [0.01, 0.1, 1.0]}
    config = {"optim": {"opt": "sgd"}, "output": {"dir": "x"}}
    storage = study._storage
    widened, budget = open_widened(storage, study, "s/widened_1", wider, config, make_sampler("grid", wider),
                                   make_pruner("none", 3))
    assert budget == 3
    copies = {t.number: t for t in widened.get_trials() if t.state != S.WAITING}
    for t in study.get_trials():
        c = copies[t.number]
        assert (c.params, c.value, c.state, c.intermediate_values) == (t.params, t.value, t.state, t.intermediate_values)
    assert [t.system_attrs["fixed_params"] for t in widened.get_trials(states=(S.WAITING,))] == [{"optim.lr": 1.0}]
    trained.clear()
    run_worker(widened, wider, budget, train, grid=True)
    assert trained == [1.0]  # nothing trained twice
    recs = report.trial_records(widened)
    assert [r["number"] for r in recs] == [0, 1, 2] and report.best_record(recs)["params"] == {"optim.lr": 1.0}
    # another worker (or a rerun) joins the same study: nothing copied or queued twice
    again, _ = open_widened(storage, study, "s/widened_1", wider, config, make_sampler("grid", wider),
                            make_pruner("none", 3))
    assert len(again.get_trials()) == 3
    # a creator stopped while filling: the study is marked and has no space record; it is made again
    half = optuna.create_study(storage=storage, study_name="s/widened_2", direction="maximize")
    half.set_user_attr(FILLING_ATTR, time.time() - 60)  # not renewed for a minute
    half.enqueue_trial({"optim.lr": 1.0})
    remade = open_study(storage, "s/widened_2", wider, config, make_sampler("grid", wider), make_pruner("none", 3),
                        wait_s=0.3, populate=lambda st: None)
    assert remade.user_attrs["vpt:space"] == wider.to_dict() and remade.get_trials() == []
    # the parent must have finished
    running, _ = _study(f"sqlite:///{tmp_path / 'other.db'}", space={"optim.lr": [0.01, 0.1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Optuna: heartbeats are meant for optimize()
        running.ask()
    with pytest.raises(SweepError, match="still has running or queued trials"):
        open_widened(running._storage, running, "s/widened_1", wider, config, make_sampler("grid", wider),
                     make_pruner("none", 3))


@pytest.mark.slow
def test_median_pruner_stops_bad_trials(tmp_path):
    space = {"optim.lr": [10.0 ** -i for i in range(8)]}
    sp = parse_space(space)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = open_study(storage, "p", sp, {}, make_sampler("grid", sp, seed=3), make_pruner("median", 3))
    run_worker(study, sp, sp.grid_size(), _fake_train(lambda p: -abs(p["optim.lr"] - 1e-3)), grid=True)
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == S.PRUNED]
    assert len(trials) == 8 and pruned
    done = [t.value for t in trials if t.state == S.COMPLETE]
    assert all(max(t.intermediate_values.values()) < max(done) for t in pruned)


WORKER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from vpt.sweep.space import parse_space
    from vpt.sweep.study import open_storage, open_study, make_sampler, make_pruner
    from vpt.sweep.worker import Outcome, run_worker
    space = parse_space({grid!r})
    storage = open_storage(sys.argv[1], heartbeat_interval=1, grace_period=2)
    study = open_study(storage, "two", space, {{}}, make_sampler("grid", space), make_pruner("none", 1))
    kill = os.environ.get("KILL_AT")
    def train(trials, params, reporters):
        out = []
        for p, r in zip(params, reporters):
            if kill and p["optim.lr"] == float(kill):
                os.kill(os.getpid(), 9)
            time.sleep(0.3)
            r.report(1, p["optim.lr"] + p["optim.weight_decay"])
            out.append(Outcome())
        return out
    run_worker(study, space, space.grid_size(), train, grid=True)
""")


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_killed_worker_leaves_a_failed_trial_and_a_restart_completes_the_study(tmp_path, scheme):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO, grid=GRID))
    url = f"sqlite:///{tmp_path / 'study.db'}" if scheme == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    killed = subprocess.run([sys.executable, str(script), url], env={**os.environ, "KILL_AT": "0.01"}, timeout=120)
    assert killed.returncode == -9
    import time
    time.sleep(3.2)  # past the 2 s grace period (SQLite stores beats to the whole second: +1 s): stale
    assert subprocess.run([sys.executable, str(script), url], timeout=120).returncode == 0
    study = optuna.load_study(study_name="two", storage=open_storage(url))
    trials = study.get_trials()
    failed = [t for t in trials if t.state == S.FAIL]
    assert len(failed) == 1 and failed[0].params["optim.lr"] == 0.01  # the killed one, failed by the restart
    done = {json.dumps(t.params, sort_keys=True) for t in trials if t.state == S.COMPLETE}
    assert len(done) == 6  # and its point ran again: the study completed


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # trials asked by hand here
@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_a_stale_trial_fails_its_whole_pack_and_its_packmates_are_queued_again(tmp_path, scheme):
    """One process beats for a whole pack, one trial after another: when the first trial's beat has aged past
    the grace period, its packmate (beaten later, not yet stale) is failed and queued again in the same pass,
    so the retries can regroup into that pack; a running trial outside the pack is left alone."""
    import time
    url = f"sqlite:///{tmp_path / 'study.db'}" if scheme == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    study, sp = _study(url)
    t0, t1, t2, t3 = (study.ask(fixed_distributions=sp.distributions()) for _ in range(4))
    for t in (t0, t1, t3):
        t.set_user_attr(PACK_ATTR, "0000-0001")
    t3.set_user_attr(PACK_ATTR, None)  # a retry of that pack running alone (vpt.sweep.run clears its pack)
    with heartbeat(study, [t0._trial_id]):
        pass
    time.sleep(3.2)  # past the 2 s grace period for t0 only (SQLite stores beats to the whole second: +1 s)
    with heartbeat(study, [t1._trial_id, t2._trial_id, t3._trial_id]):
        pass
    assert fail_stale_trials(study) == [0, 1]
    trials = study.get_trials()
    assert [t.state for t in trials[:4]] == [S.FAIL, S.FAIL, S.RUNNING, S.RUNNING]
    retried = sorted(t.system_attrs["failed_trial"] for t in trials if t.state == S.WAITING)
    assert retried == [0, 1]
    assert fail_stale_trials(study) == []  # nothing stale is left: t2 and t3 are fresh and outside the pack


# --- reports ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.sweep
def test_report_tables_plots_and_tie_break(tmp_path):
    sp = parse_space(GRID)
    recs = [{"number": i, "state": "COMPLETE", "value": v, "params": {"optim.lr": lr, "optim.weight_decay": wd},
             "val_curve": [[1, v / 2], [2, v]], "best_epoch": 2, "error": None, "retry_of": None, "seconds": 1.0}
            for i, (lr, wd, v) in enumerate([(0.1, 0.0, 50.0), (0.01, 0.0, 70.0), (0.001, 0.0, 70.0),
                                              (0.1, 0.01, 40.0), (0.01, 0.01, 60.0)])]
    recs.append({"number": 5, "state": "FAIL", "value": None, "params": {"optim.lr": 0.001, "optim.weight_decay": 0.01},
                 "val_curve": [], "best_epoch": None, "error": "diverged", "retry_of": None, "seconds": None})
    assert report.best_record(recs)["params"]["optim.lr"] == 0.001  # a tie goes to the smaller lr
    md = report.summary_markdown(recs, sp)
    table = md.split("## Trials (the best first)\n\n", 1)[1].splitlines()
    assert table[2].startswith("| 2 | complete | 70 | 0.001 | 0 |") and "diverged" in md
    csv_text = report.summary_csv(recs, sp)
    assert csv_text.splitlines()[0] == "trial,state,val,optim.lr,optim.weight_decay,best_epoch,epochs_run,note"
    files = report.write_tables(str(tmp_path), recs, sp) + report.write_plots(str(tmp_path), recs, sp)
    for name in ("summary.md", "summary.csv", "val_vs_lr.png", "history.png"):
        assert os.path.getsize(tmp_path / name) > 0 and str(tmp_path / name) in files
    with open(tmp_path / "val_vs_lr.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_sweep_widens_step_by_step_up_to_its_limit_and_a_rerun_follows(tmp_path, monkeypatch):
    """Sweep._widen with training stubbed: val rises as the lr falls, so each new low lr wins and lies on the
    new edge. --extend-edges 2 takes two steps (1e-3 -> 3e-4 -> 1e-4 below a half-decade grid), unpruned, and
    keeps the warning; a rerun without the flag follows both studies and trains nothing; each step's trials
    keep their numbers."""
    from vpt.config import to_dict
    from vpt.sweep.run import Sweep, SweepOptions
    from vpt.tasks import task_class
    cls = task_class("classification")
    base = to_dict(cls.config_cls())
    base["output"]["dir"], base["data"]["root"] = str(tmp_path), str(tmp_path)  # never read: training is stubbed
    space = parse_space({"optim.lr": [0.001, 0.003, 0.01, 0.03, 0.1]})
    trained = []

    def fake(self, study):
        def train(trials, params, reporters):
            out = []
            for p, r in zip(params, reporters):
                trained.append(p["optim.lr"])
                final = 100 - 1000 * p["optim.lr"]
                for epoch in (1, 2, 3):  # an lr below the grid starts slowly: 0 until its last epoch
                    if r.report(epoch, final if epoch == 3 else (0.0 if p["optim.lr"] < 0.001 else final / 2)):
                        break
                out.append(Outcome(pruned=r.pruned))
            return out
        return train
    monkeypatch.setattr(Sweep, "_train_search", fake)
    sweep = Sweep(cls, base, space, SweepOptions(sampler="grid", pruner="median", extend_edges=2))
    storage = open_storage(sweep.storage_url, heartbeat_interval=1, grace_period=2)
    study = open_study(storage, "sweep", space, base, make_sampler("grid", space), make_pruner("median", 3))
    run_worker(study, space, 5, fake(sweep, study), grid=True)
    last = sweep._widen(storage, study)
    # the new points ran their whole curves: the median pruner (active after 5 finished trials) would have
    # stopped them at epoch 2, below every finished curve
    assert last.study_name == "sweep/widened_2" and trained[5:] == [0.0003, 0.0001]
    assert [t.state for t in last.get_trials()] == [S.COMPLETE] * 7
    assert [w["added"] for w in sweep.widenings] == [{"optim.lr": [0.0003]}, {"optim.lr": [0.0001]}]
    assert sweep.searched.grid() == {"optim.lr": [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]}
    recs = report.trial_records(last)
    assert [r["number"] for r in recs] == list(range(7)) and report.best_record(recs)["params"] == {"optim.lr": 0.0001}
    assert report.edge_warning(sweep.searched, {"optim.lr": 0.0001}, recs[-1]["value"], recs)  # still an edge: warned
    trained.clear()
    again = Sweep(cls, base, space, SweepOptions(sampler="grid", pruner="median"))
    assert again._widen(storage, study).study_name == "sweep/widened_2" and trained == []
    assert again.searched == sweep.searched and [w["study"] for w in again.widenings] == ["sweep/widened_1", "sweep/widened_2"]


def test_two_workers_that_draw_the_same_grid_point_at_once_leave_it_to_the_first():
    """Two RUNNING trials on one grid point (two workers asked at the same moment): the later one is the
    duplicate, the earlier one keeps the point. (Each used to see the other as the duplicate, so both were
    closed as surplus and the point never ran: test_two_sweep_processes_share_one_study failed now and then.)"""
    from vpt.sweep.study import duplicate_of
    study = optuna.create_study(direction="maximize")
    dist = {"optim.lr": optuna.distributions.CategoricalDistribution([0.3, 0.1])}
    study.enqueue_trial({"optim.lr": 0.3})
    study.enqueue_trial({"optim.lr": 0.3})
    first, second = study.ask(dist), study.ask(dist)
    assert first.params == second.params == {"optim.lr": 0.3}
    assert duplicate_of(study, first, first.params) is None
    assert duplicate_of(study, second, second.params) == first.number
