"""What a sweep leaves for people: a summary table (markdown and CSV), plots (PNG with matplotlib; Optuna's
plotly HTML where plotly is installed) and the trials as plain records for results.json.

Input is a list of trial records (:func:`trial_records`), so the report is made from a study in any storage
and the tests can feed it records directly. Every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..io import atomic_write_text
from .space import SearchSpace, describe

_logger = logging.getLogger(__name__)

LR_FIELDS = ("optim.lr", "optim.lr_base", "optim.head_lr")
WD_FIELDS = ("optim.weight_decay",)


def trial_records(study) -> List[Dict[str, Any]]:
    """The study's trials as JSON-able dicts (surplus trials, closed unrun, left out), by trial number.

    ``state`` is Optuna's. A trial stopped from outside (Ctrl-C, SIGTERM, a killed worker) is FAIL there and
    runs again as a new trial; its record says ``interrupted`` (True, or what stopped it), ``continued_by``
    (the number of the trial that continued it, when one did) and ``retry_of`` on the continuing trial."""
    from .study import is_surplus
    out = []
    trials = [t for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number) if not is_surplus(t)]
    continued_by = {int(t.system_attrs["failed_trial"]): t.number for t in trials if "failed_trial" in t.system_attrs}
    for t in trials:
        out.append({
            "number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
            "val_curve": [[int(k), float(v)] for k, v in sorted(t.intermediate_values.items())],  # [epoch, value]
            "best_epoch": t.user_attrs.get("best_epoch"), "error": t.user_attrs.get("error"),
            "retry_of": t.system_attrs.get("failed_trial"),
            "interrupted": (t.user_attrs.get("interrupted") or t.number in continued_by) if t.state.name == "FAIL"
            else False,
            "continued_by": continued_by.get(t.number),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
        })
    return out


def _lr_field(records: Sequence[Mapping[str, Any]]) -> Optional[str]:
    return next((f for f in LR_FIELDS if any(f in r["params"] for r in records)), None)


def _rank(r: Mapping[str, Any], lr_field: Optional[str]) -> tuple:
    """Completed trials first, the highest value first; ties go to the smaller learning rate (VPT's rule,
    for stability), then to the lower trial number."""
    lr = r["params"].get(lr_field) if lr_field else None
    value = r["value"] if r["state"] == "COMPLETE" and r["value"] is not None else None
    return (value is None, -(value or 0.0), lr if isinstance(lr, (int, float)) else 0.0, r["number"])


def ranked_records(records: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    """The completed trials, the best first (see :func:`_rank`)."""
    done = [r for r in records if r["state"] == "COMPLETE" and r["value"] is not None]
    lr_field = _lr_field(done)
    return sorted(done, key=lambda r: _rank(r, lr_field))


def best_record(records: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The best completed trial (see :func:`_rank`), or None."""
    ranked = ranked_records(records)
    return ranked[0] if ranked else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return "" if v is None else str(v)


def trial_state(r: Mapping[str, Any]) -> str:
    """What a person reads as a trial's state: Optuna's, lower case, but ``interrupted`` for a trial stopped
    from outside (which Optuna records as failed)."""
    return "interrupted" if r.get("interrupted") else r["state"].lower()


def trial_note(r: Mapping[str, Any]) -> str:
    """Why a trial ended as it did, and which trial it continues or was continued by."""
    parts = []
    if r.get("interrupted"):
        how = r["interrupted"] if isinstance(r["interrupted"], str) else "stopped before it finished"
        after = (f"continued by trial {r['continued_by']}" if r.get("continued_by") is not None
                 else "runs again when the same command runs again")
        parts.append(f"{how}; {after}")
    elif r.get("error"):
        parts.append(str(r["error"]))
    if r.get("retry_of") is not None:
        parts.append(f"continues trial {r['retry_of']}")
    return "; ".join(parts)


def summary_rows(records: Sequence[Mapping[str, Any]], space: SearchSpace) -> List[Dict[str, Any]]:
    rows = []
    lr_field = _lr_field(records)
    for r in sorted(records, key=lambda r: _rank(r, lr_field)):  # the best first
        row = {"trial": r["number"], "state": trial_state(r), "val": r["value"]}
        row.update({name: r["params"].get(name) for name in space.names})
        row["best_epoch"] = r.get("best_epoch")
        row["epochs_run"] = len(r.get("val_curve") or {})
        row["note"] = trial_note(r)
        rows.append(row)
    return rows


def _md_table(rows: Sequence[Mapping[str, Any]], head: Sequence[str]) -> List[str]:
    cols = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]).replace("|", "/") for c in cols) + " |")
    return lines


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    return "" if mean is None else f"{mean:.4g} +/- {std or 0.0:.2g}"


def _headline(chosen: Optional[Mapping[str, Any]], metric: str, warning: Optional[str]) -> List[str]:
    """The lines summary.md opens with: the best setting, its final runs' test mean +/- std, the edge warning."""
    lines = ["# Sweep summary", ""]
    if chosen is None:
        return lines + ["No trial has completed yet: there is no best setting.", ""]
    lines.append(f"**Best setting:** {describe(chosen['params'])} (trial {chosen['trial']}, {metric} "
                 f"{_fmt(chosen['val'])})")
    lines.append("")
    test = chosen.get("metric_label") or chosen.get("metric") or ""
    n = chosen.get("test_n") or 0
    if chosen.get("test_mean") is not None:
        seeds = ", ".join(str(s) for s in chosen.get("seeds") or [])
        lines.append(f"**Final runs:** test {test} {_pm(chosen['test_mean'], chosen.get('test_std'))} over {n} "
                     f"run(s)" + (f" (seeds {seeds})" if seeds else "") + ", each trained again with that setting; "
                     f"test is read by these runs only")
    elif "test_mean" in chosen:
        lines.append("**Final runs:** no test result (no final run finished, or the data has no test split)")
    if chosen.get("hm_mean") is not None:
        lines.append("")
        lines.append("**Base-to-novel (test):** " + ", ".join(
            f"{k} {_pm(chosen.get(k + '_mean'), chosen.get(k + '_std'))}" for k in ("base", "novel", "hm")))
    if warning:
        lines += ["", f"**Warning:** {warning}"]
    return lines + ["", "## Trials (the best first)", ""]


def summary_markdown(records: Sequence[Mapping[str, Any]], space: SearchSpace, metric: str = "val top1",
                     candidates: Sequence[Mapping[str, Any]] = (), chosen: Optional[Mapping[str, Any]] = None,
                     warning: Optional[str] = None) -> str:
    """The best setting and its final runs' test mean +/- std first (``chosen``: the chosen candidate, as
    results.json's ``final`` plus ``params``, ``val``, ``trial`` and the metric's ``metric_label``; None: the
    best trial, no final runs yet);
    then the trials, the best first; then the final runs of each candidate setting (``--top-k``), with the
    one the sweep chose marked."""
    rows = summary_rows(records, space)
    if chosen is None:
        best = best_record(records)
        chosen = None if best is None else {"params": best["params"], "trial": best["number"], "val": best["value"]}
    lines = _headline(chosen, metric, warning)
    if not rows:
        return "\n".join(lines + ["No trials yet."]) + "\n"
    lines += _md_table(rows, [metric if c == "val" else c for c in rows[0]])
    if candidates:
        final = [{"chosen": "yes" if c.get("chosen") else "", "trial": c["trial"], "setting": describe(c["params"]),
                  "trial val": c["val"], "final runs": c.get("runs", 0),
                  "final val": _pm(c.get("val_mean"), c.get("val_std")),
                  "final test": _pm(c.get("test_mean"), c.get("test_std"))} for c in candidates]
        lines += ["", "Final runs (each candidate setting trained again with every seed; the chosen one has the "
                      "best mean final val; test is read only by these runs):", ""]
        lines += _md_table(final, list(final[0]))
    return "\n".join(lines) + "\n"


def summary_csv(records: Sequence[Mapping[str, Any]], space: SearchSpace) -> str:
    rows = summary_rows(records, space)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def write_tables(out_dir: str, records: Sequence[Mapping[str, Any]], space: SearchSpace,
                 candidates: Sequence[Mapping[str, Any]] = (), chosen: Optional[Mapping[str, Any]] = None,
                 metric: str = "val top1", warning: Optional[str] = None) -> List[str]:
    """summary.md (see :func:`summary_markdown`) and summary.csv (the trials) in ``out_dir``."""
    md, cs = os.path.join(out_dir, "summary.md"), os.path.join(out_dir, "summary.csv")
    atomic_write_text(md, summary_markdown(records, space, metric, candidates, chosen, warning))
    atomic_write_text(cs, summary_csv(records, space))
    return [md, cs]


# --- plots ---------------------------------------------------------------------------------------------
# Plot text is data (class, metric and field names): matplotlib's bundled DejaVu Sans, named explicitly, covers
# the Latin, Greek and Cyrillic alphabets whatever a user's matplotlibrc says, and '$' is a character, not the
# start of mathtext (which would drop the spaces of a name holding two of them).
PLOT_STYLE = {"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "text.parse_math": False,
              "axes.unicode_minus": True}


def _save_png(fig, path: str) -> None:
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _finish_plot(plt, fig, ax, path: str, xlabel: str, ylabel: Optional[str], legend: bool = True,
                 grid: bool = True) -> str:
    """Label the axes, save the figure as ``path`` (atomically) and close it; returns ``path``."""
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=8)
    if grid:
        ax.grid(alpha=0.3)
    _save_png(fig, path)
    plt.close(fig)
    return path


def write_plots(out_dir: str, records: Sequence[Mapping[str, Any]], space: SearchSpace, study=None,
                metric: str = "val top1") -> List[str]:
    """PNG plots (matplotlib): ``metric`` (the trials' selection metric, e.g. "val top1") vs learning rate, one
    line per weight decay; optimisation history over trial numbers; parameter importance (Optuna's fANOVA,
    given the study and 2+ completed trials). Optuna's plotly HTML versions too where plotly is installed.
    Returns the files written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.warning("no plots: matplotlib is not installed (pip install 'vpt[sweep]')")
        return []
    with plt.rc_context(PLOT_STYLE):
        written = _matplotlib_plots(plt, out_dir, records, space, study, metric)
    if study is not None:
        written += _plotly_html(out_dir, study, sum(r["state"] == "COMPLETE" and r["value"] is not None
                                                    for r in records))
    return written


def _matplotlib_plots(plt, out_dir: str, records: Sequence[Mapping[str, Any]], space: SearchSpace, study,
                      metric: str) -> List[str]:
    from matplotlib.ticker import MaxNLocator
    written = []
    done = [r for r in records if r["state"] == "COMPLETE" and r["value"] is not None]
    lr = next((f for f in LR_FIELDS if f in space.names), None)
    wd = next((f for f in WD_FIELDS if f in space.names), None)
    if lr and done:
        fig, ax = plt.subplots(figsize=(6, 4))
        groups: Dict[Any, List] = {}
        for r in done:
            groups.setdefault(r["params"].get(wd) if wd else None, []).append((r["params"][lr], r["value"]))
        for key in sorted(groups, key=lambda k: (k is None, k if isinstance(k, (int, float)) else 0)):
            pts = sorted(groups[key])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{wd}={key:g}" if wd else None)
        ax.set_xscale("log" if all(p > 0 for g in groups.values() for p, _ in g) else "linear")
        written.append(_finish_plot(plt, fig, ax, os.path.join(out_dir, "val_vs_lr.png"), lr, f"best {metric}",
                                    legend=bool(wd)))
    finished = sorted((r for r in records if r["value"] is not None), key=lambda r: r["number"])
    if finished:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["number"] for r in finished]
        ys = [r["value"] for r in finished]
        best, run = [], -math.inf
        for y in ys:
            run = max(run, y)
            best.append(run)
        ax.scatter(xs, ys, s=14, label="trial")
        ax.step(xs, best, where="post", color="C1", label="best so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers: no 0.5 ticks
        written.append(_finish_plot(plt, fig, ax, os.path.join(out_dir, "history.png"), "trial number", metric))
    importances = param_importances(study) if study is not None else {}
    if importances:
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.4 * len(importances)))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        written.append(_finish_plot(plt, fig, ax, os.path.join(out_dir, "param_importance.png"),
                                    f"importance for {metric} (fANOVA)", None, legend=False, grid=False))
    return written


def param_importances(study) -> Dict[str, float]:
    """Optuna's parameter importances; {} with fewer than 2 completed trials or one parameter."""
    import optuna
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2 or len({k for t in done for k in t.params}) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as e:  # e.g. every trial had the same value
        _logger.info("no parameter importance: %s", e)
        return {}


def _plotly_html(out_dir: str, study, n_done: int) -> List[str]:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return []
    import optuna.visualization as vis
    out = []
    plots = [("history", vis.plot_optimization_history), ("slice", vis.plot_slice)]
    if n_done >= 2:
        plots.append(("param_importance", vis.plot_param_importances))
    for name, fn in plots:
        try:
            fig = fn(study)
        except (RuntimeError, ValueError) as e:
            _logger.info("no %s plot: %s", name, e)
            continue
        path = os.path.join(out_dir, f"{name}.html")
        atomic_write_text(path, fig.to_html(include_plotlyjs="cdn"))
        out.append(path)
    return out


def edge_ties(space: SearchSpace, best_params: Mapping[str, Any], best_value: Optional[float],
              records: Sequence[Mapping[str, Any]]) -> Dict[str, List[Any]]:
    """{name: values}: for each of the best setting's values that lies on an edge of the space, the values of
    that field away from the edge held by other completed trials with the same best value. A tie like this
    is a plateau that reaches into the space (the tie rule, smaller lr first, picked the edge), not a sign
    that the optimum lies beyond it: a saturated val split (every lr at 100%) does this."""
    out: Dict[str, List[Any]] = {}
    if best_value is None:
        return out
    tied = [r for r in records if r["state"] == "COMPLETE" and r["value"] is not None
            and math.isclose(r["value"], best_value, rel_tol=1e-9, abs_tol=1e-12)]
    for name, side in space.edges(best_params).items():
        param = next(p for p in space.params if p.name == name)
        inside = list(dict.fromkeys(r["params"][name] for r in tied if name in r["params"]
                                    and param.edge(r["params"][name]) != side))
        if all(isinstance(v, (int, float)) for v in inside):
            inside.sort()
        if inside:
            out[name] = inside
    return out


def real_edges(space: SearchSpace, best_params: Mapping[str, Any], best_value: Optional[float] = None,
               records: Sequence[Mapping[str, Any]] = ()) -> Dict[str, str]:
    """{name: 'low' | 'high'}: the best setting's values on an edge of the space, less those tied with values
    inside it (see :func:`edge_ties`)."""
    ties = edge_ties(space, best_params, best_value, records)
    return {name: side for name, side in space.edges(best_params).items() if name not in ties}


def edge_warning(space: SearchSpace, best_params: Mapping[str, Any], best_value: Optional[float] = None,
                 records: Sequence[Mapping[str, Any]] = (), sampler: str = "grid", extended: int = 0) -> Optional[str]:
    """A sentence when the best setting lies on an edge of the space (the optimum may lie beyond it), with the
    way to look past it that works; an edge that other trials tie with from inside the space is left out (see
    :func:`edge_ties`). ``extended``: the --extend-edges steps this sweep has taken already."""
    edges = real_edges(space, best_params, best_value, records)
    if not edges:
        return None
    parts = [f"{name}={_fmt(best_params[name])} is the {side}est value searched" for name, side in edges.items()]
    if sampler == "grid" and space.widened(edges) is not None:
        fix = (f"run the same command with --extend-edges {extended + 1}: it adds the next value past the edge (at "
               f"the grid's spacing) and trains only the new points, in this folder, keeping every finished trial")
    elif sampler == "grid":
        fix = (f"{', '.join(edges)} has no next value to add (--extend-edges widens listed and stepped fields): "
               f"widen it in the space file and sweep into a new --output (this folder holds this space's study)")
    else:
        fix = (f"widen the range in the space file and sweep into a new --output (this folder holds this space's "
               f"study; --extend-edges needs --sampler grid)")
    return (f"the best setting ({describe(best_params)}) lies on the edge of the space: {'; '.join(parts)}. "
            f"The optimum may lie beyond it: {fix}")