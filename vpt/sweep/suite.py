"""Benchmark suites: every task of VTAB-1k, FGVC or CoOp's datasets trained with one recipe, then the tables
the papers print (``vpt suite``).

A suite is a list of jobs, each a normal ``vpt train`` run folder (resumable: a finished run is kept, a
started one continues with ``--resume``) or, with a search space, a ``vpt sweep`` on the task's val split
(``data.benchmark_split: tune``) whose best setting is then trained with the final protocol. The runner takes
the function that executes a command line (the CLI passes its own), so this module imports no command.

Layout of ``--output``: ``<task>/seed<s>/`` (few-shot: ``<task>/shots<k>_seed<s>/``; with a space,
``<task>/sweep/`` first), then ``suite.csv`` (one row per task, mean and std over seeds), ``suite.md`` (the same
table and the suite's summary) and ``suite.json`` (everything, with each run's folder).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..data.benchmarks import (COOP_DATASETS, FGVC_TASKS, VTAB_GROUPS, VTAB_TASKS, detect_format, did_you_mean)
from ..errors import DataError, UserError
from ..io import atomic_write_json

_logger = logging.getLogger(__name__)

SUITES = ("vtab1k", "fgvc", "coop-base2novel", "coop-fewshot", "coop-crossdataset")
FEW_SHOTS = (1, 2, 4, 8, 16)
CROSS_SOURCE = "imagenet"


@dataclass
class Job:
    task: str
    folder: str  # the task's data folder
    run_dir: str
    seed: int
    shots: Optional[int] = None
    extra: List[str] = field(default_factory=list)  # suite-specific train flags


def _subfolders(root: str) -> List[str]:
    if not os.path.isdir(root):
        raise DataError(f"suite folder not found: {root!r}; pass --root DIR holding one folder per task "
                        f"(docs/benchmarks.md)")
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def discover(suite: str, root: str, tasks: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """task name -> data folder, checked before anything trains: unknown or missing names are errors that
    name the closest known task."""
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}{did_you_mean(suite, SUITES)}; use one of {', '.join(SUITES)}")
    found: Dict[str, str] = {}
    if suite == "vtab1k":
        known, want = list(VTAB_TASKS), "vtab1k"
    elif suite == "fgvc":
        known, want = list(FGVC_TASKS), "fgvc"
    else:
        known, want = list(COOP_DATASETS), "coop"
    for d in _subfolders(root):
        path = os.path.join(root, d)
        fmt = detect_format(path)
        if fmt != want:
            continue
        if suite == "vtab1k" and d not in VTAB_TASKS:
            raise DataError(f"{path!r} holds VTAB-1k lists but {d!r} is not one of the 19 tasks"
                            f"{did_you_mean(d, known)}; rename the folder to its task (docs/benchmarks.md)")
        if suite.startswith("coop") and d not in COOP_DATASETS:
            raise DataError(f"{path!r} holds a CoOp split but {d!r} is not one of CoOp's dataset folders"
                            f"{did_you_mean(d, known)}; use CoOp's folder names: {', '.join(known)}")
        found[d] = path
    order = {k: i for i, k in enumerate(known)}  # the papers' order (VTAB: natural, specialized, structured)
    found = dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    if tasks:
        unknown = [t for t in tasks if t not in found]
        if unknown:
            t = unknown[0]
            hint = did_you_mean(t, list(found) or known)
            raise UserError(f"--tasks names {t!r}, which is not a {want} task folder under {root!r}{hint}; "
                            f"found: {', '.join(found) or 'none'}")
        found = {t: found[t] for t in tasks}
    if not found:
        raise DataError(f"{root!r} holds no {want} task folders; expected {root}/<task>/ with "
                        f"{'train800val200.txt' if want == 'vtab1k' else 'train.json' if want == 'fgvc' else 'split_zhou_*.json'} "
                        f"(docs/benchmarks.md says how to prepare it)")
    if suite == "coop-crossdataset" and CROSS_SOURCE not in found:
        raise DataError(f"coop-crossdataset trains on {CROSS_SOURCE!r} and evaluates on the other datasets; "
                        f"{root!r} has no {CROSS_SOURCE}/ (or --tasks leaves it out)")
    return found


def plan(suite: str, found: Dict[str, str], output: str, seeds: Sequence[int],
         shots: Sequence[int] = FEW_SHOTS) -> List[Job]:
    jobs = []
    for task, folder in found.items():
        if suite == "coop-crossdataset" and task != CROSS_SOURCE:
            continue  # evaluated with the source's prompts
        for s in seeds:
            if suite == "coop-fewshot":
                for k in shots:
                    jobs.append(Job(task, folder, os.path.join(output, task, f"shots{k}_seed{s}"), s, k,
                                    ["--shots", str(k)]))
            else:
                extra = ["--base-to-novel"] if suite == "coop-base2novel" else []
                jobs.append(Job(task, folder, os.path.join(output, task, f"seed{s}"), s, None, extra))
    return jobs


def train_argv(job: Job, recipe: str, fixed: Sequence[str], sets: Sequence[str] = ()) -> List[str]:
    """The ``vpt train`` command of a job; a finished run is not started again (None), a started one resumes."""
    argv = ["train", "-c", recipe, "--data", job.folder, "--output", job.run_dir, "--seed", str(job.seed),
            "--split-seed", str(job.seed), *job.extra, *fixed]
    for s in sets:
        argv += ["--set", s]
    if os.path.isfile(os.path.join(job.run_dir, "config.yaml")):
        argv.append("--resume")
    return argv


def _section_settings(recipe: str, sets: Sequence[str], section: str = "data") -> Dict[str, Any]:
    """The recipe's ``section`` with the ``--set <section>.*`` overrides (data: enough to read every task's data)."""
    import yaml
    with open(recipe, encoding="utf-8") as f:
        data = dict((yaml.safe_load(f) or {}).get(section) or {})
    prefix = section + "."
    for item in sets:
        key, sep, value = item.partition("=")
        if sep and key.startswith(prefix) and key.count(".") == 1:
            data[key[len(prefix):]] = yaml.safe_load(value)
    return data


def resolved_device(recipe: str, fixed: Sequence[str] = (), sets: Sequence[str] = ()) -> Optional[str]:
    """The device every run of the suite trains on, resolved as ``vpt train`` resolves it: ``--device``, else
    ``--set train.device=``, else the recipe's ``train.device``; None (the library's choice: cuda if available)
    when none says. The suite's process group and the transfer evaluations follow it (gloo for cpu)."""
    flag = _device(fixed)
    if flag:
        return flag[0]
    from .. import recipes
    found = recipes.find(recipe)
    if found is None:
        return None  # run_suite names the missing recipe
    device = _section_settings(found, sets, "train").get("device")
    return None if device is None else str(device)


def preflight(suite: str, jobs: Sequence[Job], recipe: str, sets: Sequence[str]) -> None:
    """Read every job's data (lists, files, few-shot draw) before the first run starts, so a broken task
    folder or too few images for the shots stops the suite before anything trains."""
    from ..data import load_splits
    data = _section_settings(recipe, sets)
    seen = set()
    for job in jobs:
        shots = job.shots if job.shots is not None else data.get("shots")
        key = (job.folder, shots, job.seed)
        if key in seen or finished(job):
            continue
        seen.add(key)
        load_splits(job.folder, split_seed=job.seed, shots=shots, check_readable=False,
                    classes="base" if suite == "coop-base2novel" else data.get("classes", "all"),
                    format=data.get("format", "auto"), benchmark_split=data.get("benchmark_split", "final"))


def finished(job: Job) -> bool:
    return os.path.isfile(os.path.join(job.run_dir, "results.json"))


def sweep_best(sweep_dir: str) -> List[str]:
    """``--set field=value`` items of the best setting a finished ``vpt sweep`` chose."""
    with open(os.path.join(sweep_dir, "results.json")) as f:
        best = json.load(f).get("best")
    if not best:
        raise UserError(f"the sweep in {sweep_dir!r} found no best setting (every trial failed?); see its "
                        f"summary.md, fix the space, and run the same command again")
    return [f"{k}={json.dumps(v)}" for k, v in sorted(best["params"].items())]


def run_suite(suite: str, root: str, recipe: str, output: str, seeds: Sequence[int], execute: Callable[[List[str]], int],
              fixed: Sequence[str] = (), sets: Sequence[str] = (), tasks: Optional[Sequence[str]] = None,
              space: Optional[str] = None, shots: Sequence[int] = FEW_SHOTS,
              log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or continue) every job of the suite through ``execute(argv) -> exit status``, then write the tables."""
    found = discover(suite, root, tasks)
    from .. import recipes
    found_recipe = recipes.find(recipe)
    if found_recipe is None:
        raise UserError(f"recipe not found: {recipe!r} is neither a file nor a packaged recipe; pass a recipe name "
                        f"(`vpt list recipes`, e.g. -c vpt_deep_vitb16_in21k) or a YAML path (docs/benchmarks.md)")
    recipe = found_recipe
    if space is not None and not os.path.isfile(space):
        raise UserError(f"--space file not found: {space!r}; search spaces live in configs/spaces/")
    jobs = plan(suite, found, output, seeds, shots)
    preflight(suite, jobs, recipe, sets)
    tuned: Dict[str, List[str]] = {}
    if space is not None:
        for task, folder in found.items():
            if suite == "coop-crossdataset" and task != CROSS_SOURCE:
                continue
            sweep_dir = os.path.join(output, task, "sweep")
            if not os.path.isfile(os.path.join(sweep_dir, "results.json")):
                argv = ["sweep", "-c", recipe, "--data", folder, "--space", space, "--output", sweep_dir, "--seeds", "1",
                        *fixed]
                for s in list(sets) + ["data.benchmark_split=tune"]:
                    argv += ["--set", s]
                log(f"== {task}: sweep on val: vpt {' '.join(argv)}")
                rc = execute(argv)
                if rc:
                    raise UserError(f"the sweep of {task!r} failed (exit {rc}); fix it and run the same command "
                                    f"again (finished runs are kept)")
            tuned[task] = sweep_best(sweep_dir)
    for job in jobs:
        if finished(job):
            log(f"== {job.task} seed {job.seed}{'' if job.shots is None else f' {job.shots} shots'}: done "
                f"({job.run_dir})")
            continue
        argv = train_argv(job, recipe, fixed, list(sets) + tuned.get(job.task, []))
        log(f"== {job.task} seed {job.seed}: vpt {' '.join(argv)}")
        rc = execute(argv)
        if rc:
            raise UserError(f"the run {job.run_dir!r} failed (exit {rc}); fix it and run the same command again "
                            f"(finished runs are kept, this one resumes)")
    if suite == "coop-crossdataset":
        for job in jobs:
            targets = [f for t, f in found.items() if t != CROSS_SOURCE]
            out = os.path.join(job.run_dir, "eval_transfer.json")
            if targets and not os.path.isfile(out):
                dev = resolved_device(recipe, fixed, sets)
                rc = execute(["eval", os.path.join(job.run_dir, "best"), "--transfer", *targets, "--split", "test",
                              "--json", out] + (["--device", dev] if dev else []))
                if rc:
                    raise UserError(f"evaluating {job.run_dir!r} on the target datasets failed (exit {rc})")
    return write_tables(suite, found, jobs, output)


def _device(fixed: Sequence[str]) -> List[str]:
    fixed = list(fixed)
    return [fixed[fixed.index("--device") + 1]] if "--device" in fixed[:-1] else []


# --- tables --------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def _fmt(m: Optional[float], sd: Optional[float] = None, n: int = 1) -> str:
    if m is None:
        return "-"
    return f"{m:.2f}" if sd is None or n < 2 else f"{m:.2f} ± {sd:.2f}"


def _hm(b: float, n: float) -> float:
    return 0.0 if b + n == 0 else 2 * b * n / (b + n)


def _read(job: Job) -> Dict[str, Any]:
    with open(os.path.join(job.run_dir, "results.json")) as f:
        res = json.load(f)
    out = {"top1": float(res["test"]["top1"]) if res.get("test") else None}
    for k in ("base", "novel", "hm"):
        if res.get(k) is not None:
            out[k] = float(res[k])
    path = os.path.join(job.run_dir, "eval_transfer.json")
    if os.path.isfile(path):
        with open(path) as f:
            out["transfer"] = {os.path.basename(os.path.normpath(r)): float(m["top1"])
                               for r, m in json.load(f)["transfer"].items()}
    return out


def write_tables(suite: str, found: Dict[str, str], jobs: List[Job], output: str) -> Dict[str, Any]:
    from ..tasks.summary import markdown
    rows: List[Dict[str, Any]] = []
    keyed: Dict[Tuple[str, Optional[int]], List[Dict[str, Any]]] = {}
    for job in jobs:
        if finished(job):
            keyed.setdefault((job.task, job.shots), []).append(dict(_read(job), seed=job.seed, run=job.run_dir))
    metrics = ("base", "novel", "hm") if suite == "coop-base2novel" else ("top1",)
    for (task, shots), runs in keyed.items():
        row: Dict[str, Any] = {"task": task, "shots": shots, "runs": len(runs), "seeds": [r["seed"] for r in runs],
                               "run_dirs": [r["run"] for r in runs]}
        if suite == "vtab1k":
            row["group"] = VTAB_TASKS[task][0]
        for k in metrics:
            row[k + "_mean"], row[k + "_std"] = mean_std([r[k] for r in runs if r.get(k) is not None])
        if suite == "coop-crossdataset":
            for target in sorted({t for r in runs for t in r.get("transfer", {})}):
                m, sd = mean_std([r["transfer"][target] for r in runs if target in r.get("transfer", {})])
                rows.append({"task": target, "shots": None, "runs": len(runs), "top1_mean": m, "top1_std": sd,
                             "role": "target", "seeds": row["seeds"], "run_dirs": row["run_dirs"]})
            row["role"] = "source"
        rows.append(row)
    rows.sort(key=lambda r: (r.get("role", "") != "source", list(found).index(r["task"]) if r["task"] in found else 0,
                             r["shots"] or 0))
    summary = _summary(suite, rows)
    # CSV: one row per task (and shots)
    cols = ["task"] + (["group"] if suite == "vtab1k" else []) + (["shots"] if suite == "coop-fewshot" else []) + \
           (["role"] if suite == "coop-crossdataset" else []) + ["runs"] + \
           [f"{k}_{s}" for k in metrics for s in ("mean", "std")]
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "suite.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else (f"{r[c]:.4f}" if isinstance(r[c], float) else r[c]) for c in cols])
    header = [c for c in cols if not c.endswith("_std")]
    header = [c[:-5] if c.endswith("_mean") else c for c in header]
    table = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in cols if not c.endswith(("_mean", "_std"))]
             + [_fmt(r[f"{k}_mean"], r[f"{k}_std"], r["runs"]) for k in metrics] for r in rows]
    text = [f"# {suite}: test accuracy (%), mean ± std over seeds\n", markdown(header, table), "## Summary\n"]
    text += [f"- {line}" for line in summary["lines"]]
    with open(os.path.join(output, "suite.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    result = {"suite": suite, "tasks": rows, "summary": summary["values"], "summary_lines": summary["lines"],
              "missing_runs": [j.run_dir for j in jobs if not finished(j)]}
    atomic_write_json(os.path.join(output, "suite.json"), result)
    return result


def _summary(suite: str, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    lines, values = [], {}
    if suite == "vtab1k":
        means = {r["task"]: r["top1_mean"] for r in rows if r["top1_mean"] is not None}
        n = len(means)
        values["task_mean"] = sum(means.values()) / n if n else None
        lines.append(f"mean of the {n} task{'s' if n != 1 else ''}{'' if n == 19 else ' (of 19: partial)'}: "
                     f"{_fmt(values['task_mean'])}")
        groups = {}
        for g in VTAB_GROUPS:
            vals = [m for t, m in means.items() if VTAB_TASKS[t][0] == g]
            if vals:
                groups[g] = sum(vals) / len(vals)
                lines.append(f"{g} mean ({len(vals)} task{'s' if len(vals) != 1 else ''}): {_fmt(groups[g])}")
        values["group_means"] = groups
        values["mean_of_group_means"] = sum(groups.values()) / len(groups) if groups else None
        lines.append(f"mean of the group means ({', '.join(groups)}): {_fmt(values['mean_of_group_means'])}")
    elif suite == "coop-base2novel":
        b = [r["base_mean"] for r in rows if r["base_mean"] is not None]
        nv = [r["novel_mean"] for r in rows if r["novel_mean"] is not None]
        if b and nv:
            values.update(base=sum(b) / len(b), novel=sum(nv) / len(nv))
            values["hm"] = _hm(values["base"], values["novel"])
            lines.append(f"average over {len(b)} dataset(s): base {_fmt(values['base'])}, novel "
                         f"{_fmt(values['novel'])}, HM {_fmt(values['hm'])} (HM of the averages, as the papers)")
    elif suite == "coop-fewshot":
        by_shots: Dict[int, List[float]] = {}
        for r in rows:
            if r["top1_mean"] is not None:
                by_shots.setdefault(r["shots"], []).append(r["top1_mean"])
        values["by_shots"] = {k: sum(v) / len(v) for k, v in sorted(by_shots.items())}
        for k, v in sorted(by_shots.items()):
            lines.append(f"{k} shot(s): average over {len(v)} dataset(s) {_fmt(sum(v) / len(v))}")
    elif suite == "coop-crossdataset":
        src = [r for r in rows if r.get("role") == "source"]
        tgt = [r["top1_mean"] for r in rows if r.get("role") == "target" and r["top1_mean"] is not None]
        values["source"] = src[0]["top1_mean"] if src else None
        values["target_mean"] = sum(tgt) / len(tgt) if tgt else None
        lines.append(f"source ({CROSS_SOURCE}): {_fmt(values['source'])}; average over {len(tgt)} target "
                     f"dataset(s): {_fmt(values['target_mean'])}")
    else:  # fgvc
        means = [r["top1_mean"] for r in rows if r["top1_mean"] is not None]
        values["task_mean"] = sum(means) / len(means) if means else None
        lines.append(f"mean of the {len(means)} task(s): {_fmt(values['task_mean'])}")
    return {"lines": lines, "values": values}
