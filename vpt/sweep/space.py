"""Search spaces: SPACE.yaml -> a validated map of dotted config fields to what each may take.

A space file maps dotted config fields, spelled as for ``--set``, to one of::

    optim.lr_base: [50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05]   # a list: grid / categorical values
    optim.weight_decay: {low: 1.0e-5, high: 1.0e-1, log: true}     # a range, sampled on a log scale
    model.prompt.num_tokens: {low: 5, high: 50, step: 5}           # a stepped range (ints stay ints)

Each Optuna trial parameter is named by its dotted field (``optim.lr``). Fields are checked against the real
config dataclasses (and the recipe's prompt kind for ``model.prompt.*``): an unknown one is refused with the
closest valid name. Nothing here imports Optuna; :meth:`SearchSpace.distributions` does, when called.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..config import _unwrap_optional, set_dotted
from ..errors import ConfigError
from ..registry import did_you_mean

Scalar = Union[str, int, float, bool, None]
RANGE_KEYS = {"low", "high", "log", "step"}
EDGE_SHARE = 0.05  # a sampled value within this share of a range's width (log width when log) is on its edge


@dataclass(frozen=True)
class Param:
    """One searched field: ``values`` (a list) or a range ``low``..``high`` (``log`` or ``step``)."""
    name: str  # dotted config field, also the Optuna parameter name
    values: Optional[Tuple[Scalar, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    integer: bool = False  # a range whose bounds (and step) are ints: sampled as ints

    @property
    def is_list(self) -> bool:
        return self.values is not None

    def grid(self) -> Optional[List[Scalar]]:
        """The values a grid visits: the list, or a stepped range expanded; None for a continuous range."""
        if self.values is not None:
            return list(self.values)
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        vals = [self.low + i * self.step for i in range(n)]
        return [int(round(v)) for v in vals] if self.integer else [round(v, 12) for v in vals]

    def to_dict(self) -> Dict[str, Any]:
        if self.values is not None:
            return {"values": list(self.values)}
        out: Dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out

    def distribution(self):
        """The Optuna distribution of this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        if self.values is not None:
            return CategoricalDistribution(list(self.values))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def edge(self, value: Any) -> Optional[str]:
        """'low' / 'high' when ``value`` lies on that edge of this parameter's numeric span, else None.
        A lower edge at 0 is not reported: 0 is the floor of the fields searched this way (weight decay)."""
        nums = [v for v in (self.values or ()) if _is_number(v)]
        if self.values is not None:
            if len(nums) < 2 or len(nums) != len(self.values) or not _is_number(value):
                return None  # categorical: no order, no edge
            lo, hi = min(nums), max(nums)
            if value == hi:
                return "high"
            return "low" if value == lo and lo != 0 else None
        if not _is_number(value):
            return None
        grid = self.grid()
        if grid is not None:  # a stepped range: the extreme steps are its edges
            return "high" if value >= grid[-1] else ("low" if value <= grid[0] and grid[0] != 0 else None)
        lo, hi, v = float(self.low), float(self.high), float(value)
        if self.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(max(v, 1e-300))
        width = (hi - lo) * EDGE_SHARE
        if v >= hi - width:
            return "high"
        return "low" if v <= lo + width and float(self.low) != 0 else None

    def extended(self, side: str) -> Optional["Param"]:
        """This parameter with one more value past its ``side`` ('low' / 'high') edge, at the spacing of its
        values: a stepped range one step further; a numeric list spaced by a ratio (positive values whose log
        gaps are the more even, see :func:`_geometric`) the next value of its geometric mean ratio, as a round
        number where one is near (a half-decade grid 0.003 ... 3 goes on with 0.001 and 10); any other numeric
        list its mean step further. A positive field is not taken below 0, the floor of the fields searched
        this way (0 itself is then the new value); integer lists stay integers. None when there is no next
        value (a categorical list, a continuous range, a single value)."""
        if self.values is None:
            if self.step is None:
                return None
            if side == "high":
                return dataclasses.replace(self, high=self.high + self.step)
            low = self.low - self.step
            low = max(low, 0) if self.low > 0 else low
            return None if low == self.low else dataclasses.replace(self, low=low)
        nums = [v for v in self.values if _is_number(v)]
        if len(nums) < 2 or len(nums) != len(self.values):
            return None
        lo, hi = min(nums), max(nums)
        integer = all(isinstance(v, int) for v in nums)
        if _geometric(sorted(nums)):
            ratio = (hi / lo) ** (1.0 / (len(nums) - 1))
            edge = hi if side == "high" else lo
            new = _round_number(edge * ratio if side == "high" else edge / ratio, edge, side, ratio)
            new = int(round(new)) if integer else new
        else:
            step = (hi - lo) / (len(nums) - 1)
            new = hi + step if side == "high" else lo - step
            if lo > 0 and new < 0:
                new = 0
            new = int(round(new)) if integer else round(float(new), 12)
        if new in nums or (side == "low" and new >= lo) or (side == "high" and new <= hi):
            return None
        values = list(self.values)
        return dataclasses.replace(self, values=tuple(values + [new] if side == "high" else [new] + values))


ROUND_MANTISSAS = (1.0, 2.0, 2.5, 3.0, 5.0, 10.0)


def _geometric(values: List[float]) -> bool:
    """Whether sorted numeric ``values`` are spaced by a ratio rather than a step: all positive, and their
    log gaps more even than their gaps (two values: a decade or more apart)."""
    if values[0] <= 0:
        return False
    if len(values) == 2:
        return values[1] / values[0] >= 10

    def spread(gaps: List[float]) -> float:
        mean = sum(gaps) / len(gaps)
        return (max(gaps) - min(gaps)) / mean if mean > 0 else math.inf
    gaps = [b - a for a, b in zip(values, values[1:])]
    return spread([math.log(b / a) for a, b in zip(values, values[1:])]) < spread(gaps)


def _round_number(x: float, edge: float, side: str, ratio: float) -> float:
    """``x`` as the nearest (on a log scale) round number (1, 2, 2.5, 3 or 5 x 10^k) past ``edge`` on
    ``side`` and within a factor ``ratio ** 0.25`` of ``x`` (so a half-decade grid stays one, and a
    doubling one keeps doubling); else ``x`` to 3 significant digits."""
    exp = math.floor(math.log10(x))
    candidates = [m * 10.0 ** e for e in (exp - 1, exp, exp + 1) for m in ROUND_MANTISSAS]
    near = [c for c in candidates if (c > edge if side == "high" else c < edge)
            and abs(math.log(c / x)) <= 0.25 * math.log(ratio)]
    return float(f"{min(near, key=lambda c: abs(math.log(c / x))) if near else x:.3g}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


@dataclass(frozen=True)
class SearchSpace:
    params: Tuple[Param, ...]

    @property
    def names(self) -> List[str]:
        return [p.name for p in self.params]

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_dict(self) -> Dict[str, Any]:
        return {p.name: p.to_dict() for p in self.params}

    @classmethod
    def from_dict(cls, data: Any, where: str = "space") -> "SearchSpace":
        """The inverse of :meth:`to_dict` (the ``space`` of a results.json), checked as a SPACE.yaml is."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping of dotted fields, got {type(data).__name__}")
        return parse_space({name: spec["values"] if isinstance(spec, Mapping) and list(spec) == ["values"] else spec
                            for name, spec in data.items()}, where)

    def fingerprint(self) -> str:
        """Canonical JSON: two spaces are the same search exactly when their fingerprints are equal."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def distributions(self) -> Dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def grid(self) -> Dict[str, List[Scalar]]:
        """{name: values} for Optuna's GridSampler; ConfigError for a continuous range."""
        out = {}
        for p in self.params:
            g = p.grid()
            if g is None:
                raise ConfigError(f"the grid sampler needs listed values; {p.name} is a continuous range "
                                  f"{{low: {p.low}, high: {p.high}}}: give a list or a step, or use --sampler tpe|random")
            out[p.name] = g
        return out

    def grid_size(self) -> int:
        n = 1
        for g in self.grid().values():
            n *= len(g)
        return n

    def points(self) -> List[Dict[str, Scalar]]:
        """Every grid point as {name: value}, the first parameter varying slowest."""
        import itertools
        grid = self.grid()
        return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]

    def widened(self, edges: Mapping[str, str]) -> Optional["SearchSpace"]:
        """This space with each ``edges`` field ({name: 'low' | 'high'}) given its next value past that edge
        (:meth:`Param.extended`); None when none of them has a next value."""
        params, changed = [], False
        for p in self.params:
            wider = p.extended(edges[p.name]) if p.name in edges else None
            changed = changed or wider is not None
            params.append(wider or p)
        return SearchSpace(tuple(params)) if changed else None

    def edges(self, best: Mapping[str, Any]) -> Dict[str, str]:
        """{name: 'low' | 'high'} for the best setting's values that lie on an edge of the space."""
        out = {}
        for p in self.params:
            if p.name in best:
                e = p.edge(best[p.name])
                if e:
                    out[p.name] = e
        return out


# --- parsing ------------------------------------------------------------------------------------------
def parse_space(data: Any, where: str = "space") -> SearchSpace:
    """A mapping (the parsed SPACE.yaml) -> SearchSpace, each entry checked; fields are checked by
    :func:`check_fields` against a config."""
    if data is None or (isinstance(data, Mapping) and not data):
        raise ConfigError(f"{where} is empty; map dotted config fields to values, e.g. "
                          f"'optim.lr: [0.1, 0.01]' or 'optim.weight_decay: {{low: 1e-5, high: 1e-1, log: true}}'")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must map dotted config fields to a list or {{low, high[, log | step]}}; "
                          f"got {type(data).__name__}")
    params = []
    for name, spec in data.items():
        if not isinstance(name, str) or not name or name.strip() != name or ".." in name or name.startswith("."):
            raise ConfigError(f"{where}: {name!r} is not a dotted config field (e.g. optim.lr)")
        params.append(_parse_param(name, spec, where))
    return SearchSpace(tuple(params))


def _parse_param(name: str, spec: Any, where: str) -> Param:
    label = f"{where}: {name}"
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ConfigError(f"{label}: an empty list; give at least one value")
        for v in spec:
            if not (v is None or isinstance(v, (str, int, float, bool))):
                raise ConfigError(f"{label}: value {v!r} is a {type(v).__name__}; list values must be numbers, "
                                  f"strings, booleans or null (a study stores them)")
            if _is_float(v) and not math.isfinite(v):
                raise ConfigError(f"{label}: value {v!r} is not finite")
        if len({json.dumps(v) for v in spec}) != len(spec):
            raise ConfigError(f"{label}: a value is listed twice; list each once")
        return Param(name, values=tuple(spec))
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{label}: expected a list of values or {{low, high[, log | step]}}, got {spec!r}")
    unknown = sorted(set(spec) - RANGE_KEYS)
    if unknown:
        raise ConfigError(f"{label}: unknown key {unknown[0]!r}; a range takes low, high and log or step"
                          f"{did_you_mean(unknown[0], RANGE_KEYS)}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{label}: a range needs both low and high")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for key, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if not _is_number(v):
            raise ConfigError(f"{label}: {key} must be a finite number, got {v!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{label}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{label}: low ({low}) must be below high ({high})")
    if log and step is not None:
        raise ConfigError(f"{label}: a range is either log or stepped, not both")
    if log and low <= 0:
        raise ConfigError(f"{label}: a log range needs low > 0, got {low}")
    if step is not None and step <= 0:
        raise ConfigError(f"{label}: step must be > 0, got {step}")
    integer = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    integer = integer and not isinstance(low, bool)
    return Param(name, low=low, high=high, log=log, step=step, integer=integer)


def _is_float(v: Any) -> bool:
    return isinstance(v, float)


# --- fields against the config dataclasses --------------------------------------------------------------
def config_fields(cls: type, prefix: str = "") -> List[str]:
    """Every dotted leaf field of a config dataclass (dict-typed fields are leaves here)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[f.name])
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.extend(config_fields(tp, name + "."))
        else:
            out.append(name)
    return out


def check_fields(space: SearchSpace, config_cls: type, dict_schemas: Optional[Mapping[str, Optional[type]]] = None,
                 where: str = "space") -> None:
    """Refuse a space field that the config has not, naming the closest real field.

    ``dict_schemas`` maps a dict-typed field (``model.prompt``) to the dataclass that its dict holds for
    this recipe (the prompt kind's config), so ``model.prompt.num_tokens`` is checked too; None: any key.
    """
    leaves = config_fields(config_cls)
    schemas = dict(dict_schemas or {})
    for name in space.names:
        if name in leaves:
            continue
        parent = next((d for d in schemas if name.startswith(d + ".")), None)
        if parent is not None:
            schema = schemas[parent]
            if schema is None:
                continue
            sub = [f"{parent}.{f}" for f in config_fields(schema)]
            if name in sub:
                continue
            raise ConfigError(f"{where}: unknown field '{name}' ({parent} holds {schema.__name__}: "
                              f"{', '.join(f.split('.')[-1] for f in sub)}){did_you_mean(name, sub)}")
        candidates = leaves + [f"{d}.{f}" for d, s in schemas.items() if s is not None for f in config_fields(s)]
        raise ConfigError(f"{where}: unknown config field '{name}'{did_you_mean(name, candidates)}; "
                          f"fields are spelled as for --set (e.g. optim.lr, optim.weight_decay)")


def apply_params(data: Dict[str, Any], params: Mapping[str, Any]) -> Dict[str, Any]:
    """A nested config dict with each dotted field set to its value (as ``--set`` does)."""
    import copy
    out = copy.deepcopy(data)
    for dotted, value in params.items():
        set_dotted(out, dotted, value, what="space field")
    return out


def describe(params: Mapping[str, Any]) -> str:
    """'optim.lr=0.1, optim.weight_decay=0.001' for logs and tables."""
    return ", ".join(f"{k}={v:g}" if _is_number(v) else f"{k}={v}" for k, v in params.items())


def load_space(path: str) -> SearchSpace:
    """Read and parse a SPACE.yaml (the CLI calls this; YAML is parsed only at the edges)."""
    import os

    import yaml
    if not os.path.isfile(path):
        raise ConfigError(f"space file not found: {path!r}; spaces for the shipped recipes live in configs/spaces/")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_space(data, where=path)

