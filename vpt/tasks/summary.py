"""The summary table of ``vpt summarize`` / ``vpt fewshot``: runs grouped as seeds only when that is what they are.

Two runs are averaged into one row (mean ± std) only when their resolved configs are equal except for the
seeds (:data:`SEED_FIELDS`) and for settings that do not change what is measured (:data:`RUNTIME_FIELDS`:
the device, worker count, output folder...), and when they used the same backbone weights (results.json's
``backbone.weights_id``; two files under one ``vpt:NAME`` are different weights). Runs of the same method,
data and shots with other settings (backbone, weights, learning rate, epochs, ...) get rows of their own, and
the ``setting`` column names what sets each apart; :func:`grouping_notes` says the same in words.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple


# --- reading results files ------------------------------------------------------------------------
def _find_results(paths: Iterable[str]) -> List[str]:
    out: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            for dirpath, _, files in sorted(os.walk(p)):
                out += [os.path.join(dirpath, f) for f in sorted(files)
                        if f == "results.json" or (f.endswith(".json") and f.startswith("eval"))]
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"{p!r} is neither a run folder nor a results file")
    return out


def _method(config: Dict[str, Any]) -> str:
    model = config.get("model") or {}
    text, prompt = model.get("text"), model.get("prompt")
    parts = []
    if text:
        parts.append(str(text.get("kind", "coop")))
    if prompt:
        parts.append(str(prompt.get("kind")))
    if not parts:
        head = model.get("head") or {}
        parts.append(f"{head.get('kind', 'zeroshot') if isinstance(head, dict) else head} head")
    return "+".join(parts)


def result_rows(path: str) -> List[Dict[str, Any]]:
    """Rows from a ``vpt train`` results.json or a ``vpt eval --json`` file (one per transfer target);
    [] for other JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(r, dict):
        return []
    name = os.path.basename
    if isinstance(r.get("config"), dict):  # vpt train
        cfg = r["config"]
        data = cfg.get("data") or {}
        rows = [{"method": _method(cfg), "data": name(str(data.get("root", "")).rstrip("/")),
                 "eval": "train run", "shots": data.get("shots"), "seed": (cfg.get("train") or {}).get("seed"),
                 "top1": (r.get("test") or {}).get("top1")}]
    elif "artifact" in r:  # vpt eval
        method = _artifact_method(str(r["artifact"]))
        if isinstance(r.get("transfer"), dict):
            rows = [{"method": method, "data": name(str(root).rstrip("/")), "eval": "transfer", "top1": m.get("top1")}
                    for root, m in sorted(r["transfer"].items())]
        else:
            rows = [{"method": method, "data": name(str(r.get("data", "")).rstrip("/")),
                     "eval": "base-to-novel" if "hm" in r else "eval", "top1": r.get("top1")}]
    else:
        return []
    for row in rows:
        row.setdefault("shots", None)
        for k in ("base", "novel", "hm"):
            row.setdefault(k, r.get(k))
        row["path"] = path
    return rows


def _artifact_method(artifact: str) -> str:
    try:
        with open(os.path.join(artifact, "adapter_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        return _method({"model": cfg})
    except (OSError, ValueError, AttributeError):
        return name_of(artifact)


def name_of(path: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def _mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# the seeds a group of runs varies: init / order / augmentation, and the split / few-shot draw (`vpt fewshot`
# sets both to the same value)
SEED_FIELDS = ("train.seed", "data.split_seed")
# where and how a run was executed, not what it measures
RUNTIME_FIELDS = ("output.dir", "output.tensorboard", "output.save_last", "train.device", "train.workers",
                  "train.log_interval", "train.progress", "train.eval_batch_size", "train.compile",
                  "train.deterministic")
WEIGHTS_FIELD = "backbone weights"  # pseudo-field: results.json's backbone.weights_id
SETTING_WIDTH = 120  # longest `setting` cell before it is shortened (the notes below the table hold the rest)

HEADER = ["method", "data", "eval", "shots", "runs", "top-1", "base", "novel", "HM", "seeds", "setting"]


def flatten(tree: Any, prefix: str = "") -> Dict[str, str]:
    """Nested dicts -> {'section.field': value as compact JSON}; lists and scalars are leaves."""
    if isinstance(tree, dict):
        out: Dict[str, str] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree, sort_keys=True, default=str)}


def _read_config(path: Optional[str]) -> Optional[Dict[str, Any]]:
    if not path or not os.path.isfile(path):
        return None
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)  # config.yaml, adapter_config.json (JSON is YAML)
    except (OSError, ValueError, yaml.YAMLError):  # an unreadable config counts as none
        return None
    return data if isinstance(data, dict) else None


def _identity(path: str, row: Dict[str, Any]) -> Tuple[Dict[str, str], Optional[int], str]:
    """(the settings that identify what a row measures, its seed, where they came from) for one result row."""
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
    except (OSError, ValueError):
        r = {}
    if isinstance(r.get("config"), dict):  # vpt train: the resolved config itself
        cfg, source = r["config"], "results.json config"
    else:  # vpt eval: the run config of the evaluated artifact (or its adapter_config.json)
        cfg = _read_config(r.get("run_config"))
        source = "the artifact's run config"
        if cfg is None:
            cfg = {"model": _read_config(os.path.join(str(r.get("artifact", "")), "adapter_config.json")) or {}}
            source = "the artifact's adapter_config.json (no run config found: seeds unknown)"
        cfg = dict(cfg, eval={"split": r.get("split")})
    flat = {k: v for k, v in flatten(cfg).items() if k not in SEED_FIELDS and k not in RUNTIME_FIELDS}
    weights = (r.get("backbone") or {}).get("weights_id") if isinstance(r.get("backbone"), dict) else None
    if weights:
        flat[WEIGHTS_FIELD] = str(weights)
    seed = (cfg.get("train") or {}).get("seed") if isinstance(cfg.get("train"), dict) else None
    return flat, seed, source


class Group:
    def __init__(self, key: Tuple[str, str, str, Any], settings: Dict[str, str]):
        self.key, self.settings, self.rows, self.seeds = key, settings, [], []
        self.setting = ""  # what sets this group apart from its siblings (same key, other settings)
        self.differ: List[str] = []  # the fields in which the siblings differ

    def add(self, row: Dict[str, Any], seed: Optional[int]) -> None:
        self.rows.append(row)
        self.seeds.append(seed)


def _short(field: str, value: str) -> str:
    v = value[1:-1] if value.startswith('"') and value.endswith('"') else value
    if field == WEIGHTS_FIELD and len(v) > 20:
        v = v[:20] + "…"
    return f"{field}={v}"


def group_runs(paths: Iterable[str]) -> List[Group]:
    """Result rows under ``paths`` grouped by (method, data, eval, shots) and by every setting but the seeds."""
    groups: Dict[Tuple[Any, ...], Group] = {}
    for p in _find_results(paths):
        rows = result_rows(p)
        if not rows:
            continue
        settings, seed, _ = _identity(p, rows[0])
        for row in rows:
            key = (row["method"], row["data"], row["eval"], row["shots"])
            s = dict(settings)
            if row["eval"] == "transfer":
                s.pop("data.root", None)  # the training data; the transfer target is row['data']
            ident = key + (tuple(sorted(s.items())),)
            if ident not in groups:
                groups[ident] = Group(key, s)
            groups[ident].add(row, seed)
    if not groups:
        raise FileNotFoundError("no results found: give run folders (with results.json) or `vpt eval --json` files")
    out = sorted(groups.values(), key=lambda g: tuple(str(x) for x in g.key) + (str(sorted(g.settings.items())),))
    for key in {g.key for g in out}:
        siblings = [g for g in out if g.key == key]
        if len(siblings) > 1:
            fields = sorted({f for g in siblings for f in g.settings}
                            - {f for f in siblings[0].settings
                               if all(g.settings.get(f) == siblings[0].settings[f] for g in siblings)})
            for g in siblings:
                g.differ = fields
                g.setting = ", ".join(_short(f, g.settings.get(f, "(unset)")) for f in fields)
    return out


def _seeds(g: Group) -> str:
    if any(s is None for s in g.seeds):
        return "-"
    return ", ".join(str(s) for s in sorted(g.seeds))


def summary_table(paths: Iterable[str], groups: Optional[List[Group]] = None) -> Tuple[List[str], List[List[str]]]:
    """(header, rows): one row per group of runs that differ only by seed (:func:`group_runs`), mean ± std of
    top-1 / base / novel / HM over its runs. "train run": the run's own test split (the base classes in a
    base-to-novel run)."""
    table = []
    for g in groups if groups is not None else group_runs(paths):
        method, data, kind, shots = g.key
        cols = [_mean_std([float(r[k]) for r in g.rows if r.get(k) is not None]) for k in ("top1", "base", "novel", "hm")]
        setting = g.setting if len(g.setting) <= SETTING_WIDTH else g.setting[:SETTING_WIDTH - 1] + "…"
        table.append([method, data, kind, "all" if shots is None else str(shots), str(len(g.rows))] + cols
                     + [_seeds(g), setting])
    return list(HEADER), table


def grouping_notes(groups: List[Group]) -> List[str]:
    """What the table averaged and what it kept apart, and why, as Markdown lines ([] when every row is one
    run of its own method, data and shots)."""
    lines = []
    for i, g in enumerate(groups, 1):
        if len(g.rows) > 1:
            seeds = [s for s in g.seeds if s is not None]
            repeats = len(seeds) != len(set(seeds))
            lines.append(f"- row {i} ({', '.join(str(x) for x in g.key[:3])}): {len(g.rows)} runs averaged"
                         + (f", seeds {_seeds(g)}" if len(seeds) == len(g.seeds) else ", seeds unknown")
                         + (" (a seed repeats: those runs are repeats, not independent seeds)" if repeats else ""))
    by_key: Dict[Tuple[Any, ...], List[int]] = {}
    for i, g in enumerate(groups, 1):
        by_key.setdefault(g.key, []).append(i)
    for key, idx in by_key.items():
        if len(idx) > 1:
            lines.append(f"- rows {', '.join(map(str, idx))} ({', '.join(str(x) for x in key[:3])}) kept apart: they "
                         f"differ in more than the seed, in {', '.join(groups[idx[0] - 1].differ)} (the setting "
                         f"column has each row's values)")
    if not lines:
        return []
    return [f"Rows average only runs whose configs differ by the seeds ({', '.join(SEED_FIELDS)}) or by where "
            f"they ran (device, workers, output folder, ...), with the same backbone weights:"] + lines


def summarize(paths: Sequence[str]) -> Tuple[List[str], List[List[str]], List[str]]:
    """(header, rows, notes): :func:`summary_table` and :func:`grouping_notes` over one grouping."""
    groups = group_runs(paths)
    header, rows = summary_table(paths, groups)
    return header, rows, grouping_notes(groups)
