"""Gates: conditions on an evaluation's sliced metrics that a model version must pass to be promoted.

Three kinds, as in YAML `gates:` (a list) or `Gate(...)`:

- a bound on a slice's metric: ``{metric: recall, slice: "sex=female", min: 0.8}`` (or ``max:``); a fairness
  metric (``demographic_parity_difference``) is bounded the same way, without a slice;
- a maximum gap between the slices of one definition: ``{metric: recall, between: sex, max_gap: 0.05}``;
- no worse than a baseline model on each slice the two share, both scored on the same rows:
  ``{metric: accuracy, baseline: "cancer@production", tolerance: 0.01}`` (which way is worse comes from
  `sparkdl.metrics`). A baseline reference that does not resolve yet (the first promotion) skips the gate.

`check_gates` gives a `GateReport`; `evaluate_model` stores it as `gates.json` beside the model version, and
`ModelStore.set_alias` refuses a promotion whose stored report failed, naming the slice, metric, value and limit
(`force=True` overrides and records it).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sparkdl.errors import ConfigError
from sparkdl.evaluation.fairness import METRICS as FAIRNESS_METRICS
from sparkdl.evaluation.slices import OVERALL
from sparkdl.metrics import larger_is_better


@dataclass(frozen=True)
class Gate:
    """One gate; exactly one of (`min`/`max`), `max_gap` (with `between`) or `baseline` is set."""

    metric: str
    slice: str = OVERALL
    min: float | None = None
    max: float | None = None
    max_gap: float | None = None
    between: str | None = None
    baseline: str | None = None
    tolerance: float = 0.0

    @property
    def kind(self) -> str:
        return "baseline" if self.baseline else "gap" if self.max_gap is not None else "bound"

    def describe(self) -> str:
        if self.kind == "baseline":
            return f"{self.metric} no worse than {self.baseline} on each slice (tolerance {self.tolerance:g})"
        if self.kind == "gap":
            return f"{self.metric} gap between the slices of {self.between!r} <= {self.max_gap:g}"
        bounds = [f">= {self.min:g}" if self.min is not None else "",
                  f"<= {self.max:g}" if self.max is not None else ""]
        where = "" if self.metric in FAIRNESS_METRICS else f" on slice {self.slice!r}"
        return f"{self.metric}{where} {' and '.join(b for b in bounds if b)}"


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome on one slice (a gap or a fairness bound: on its definition)."""

    gate: str
    slice: str
    metric: str
    value: float | None
    limit: float | None
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class GateReport:
    """All gates' outcomes: `passed` when every result passed (skipped baselines pass)."""

    passed: bool
    results: tuple[GateResult, ...] = field(default_factory=tuple)

    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [asdict(r) for r in self.results]}


def parse_gates(items: Sequence[Any] | None) -> list[Gate]:
    """Gates from their YAML/Python forms.

    Raises:
        ConfigError: an item that is not a mapping, an unknown key, no or several kinds, a gap without `between`,
            or a bound that is not a number; the message names the item.
    """
    if not items:
        return []
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise ConfigError(f"gates must be a list of gate mappings, got {items!r}")
    gates = []
    allowed = {f for f in Gate.__dataclass_fields__}
    for i, item in enumerate(items):
        where = f"gates[{i}]"
        if isinstance(item, Gate):
            gates.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a mapping such as {{metric: recall, slice: overall, min: 0.8}}, "
                              f"got {item!r}")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        if not isinstance(item.get("metric"), str) or not item["metric"]:
            raise ConfigError(f"{where}: 'metric' (a metric name) is required, got {item!r}")
        for key in ("min", "max", "max_gap", "tolerance"):
            if item.get(key) is not None and (not isinstance(item[key], (int, float)) or isinstance(item[key], bool)):
                raise ConfigError(f"{where}.{key} must be a number, got {item[key]!r}")
        kinds = [k for k, on in (("bound", item.get("min") is not None or item.get("max") is not None),
                                 ("gap", item.get("max_gap") is not None), ("baseline", bool(item.get("baseline"))))
                 if on]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: set exactly one of min/max, max_gap (with between) or baseline, got {item!r}")
        if kinds == ["gap"] and not item.get("between"):
            raise ConfigError(f"{where}: max_gap needs 'between': the slice definition whose slices are compared")
        gate = Gate(**{k: (float(v) if k in ("min", "max", "max_gap", "tolerance") and v is not None else v)
                       for k, v in item.items()})
        if gate.metric not in FAIRNESS_METRICS:
            larger_is_better(gate.metric.split(".")[0])  # ConfigError naming an unknown metric
        gates.append(gate)
    return gates


def baseline_refs(gates: Sequence[Gate]) -> list[str]:
    """The baseline model references the gates compare with, in order, once each."""
    return list(dict.fromkeys(g.baseline for g in gates if g.baseline))


def check_gates(gates: Sequence[Gate], report: Mapping[str, Any],
                baselines: Mapping[str, Mapping[str, Any] | None] | None = None) -> GateReport:
    """Check `gates` against a sliced report (`sliced_classification` / `sliced_regression`); `baselines` maps
    each baseline reference to its sliced report on the same rows, or None when it does not resolve (skipped).

    A slice or metric the report lacks fails its gate, naming what is missing; a suppressed slice (under
    min_slice_size) fails a bound on it.
    """
    slices = report.get("slices", {})
    results: list[GateResult] = []
    for gate in gates:
        if gate.kind == "bound":
            results.append(_bound(gate, report, slices))
        elif gate.kind == "gap":
            results.append(_gap(gate, slices))
        else:
            results.extend(_against_baseline(gate, slices, (baselines or {}).get(gate.baseline)))
    return GateReport(all(r.passed for r in results), tuple(results))


def _value(slices: Mapping, name: str, metric: str) -> float | None:
    return slices.get(name, {}).get("metrics", {}).get(metric, {}).get("value")


def _bound(gate: Gate, report: Mapping, slices: Mapping) -> GateResult:
    if gate.metric in FAIRNESS_METRICS:
        fairness = report.get("fairness") or {}
        where = fairness.get("sensitive") or "fairness"
        value = fairness.get("metrics", {}).get(gate.metric, {}).get("value")
        missing = "" if fairness else "no fairness metrics (declare evaluate.sensitive)"
    else:
        where, value = gate.slice, _value(slices, gate.slice, gate.metric)
        suppressed = [s for s in report.get("suppressed", []) if s["slice"] == gate.slice]
        missing = (f"slice {gate.slice!r} is suppressed ({suppressed[0]['n']} rows < min_slice_size)" if suppressed
                   else f"slice {gate.slice!r} is not in the report" if gate.slice not in slices
                   else f"metric {gate.metric!r} is not in the report")
    limit = gate.min if gate.min is not None else gate.max
    if value is None:
        return GateResult(gate.describe(), where, gate.metric, None, limit, False, missing)
    if gate.min is not None and value < gate.min:
        return GateResult(gate.describe(), where, gate.metric, value, gate.min, False, "below the minimum")
    if gate.max is not None and value > gate.max:
        return GateResult(gate.describe(), where, gate.metric, value, gate.max, False, "above the maximum")
    return GateResult(gate.describe(), where, gate.metric, value, limit, True)


def _gap(gate: Gate, slices: Mapping) -> GateResult:
    values = {name: _value(slices, name, gate.metric) for name, s in slices.items()
              if s.get("definition") == gate.between}
    values = {k: v for k, v in values.items() if v is not None}
    if len(values) < 2:
        return GateResult(gate.describe(), str(gate.between), gate.metric, None, gate.max_gap, False,
                          f"fewer than 2 reported slices of {gate.between!r} have {gate.metric}")
    high, low = max(values, key=values.get), min(values, key=values.get)
    gap = values[high] - values[low]
    return GateResult(gate.describe(), f"{high} vs {low}", gate.metric, gap, gate.max_gap, gap <= gate.max_gap,
                      "" if gap <= gate.max_gap else "the gap is above max_gap")


def _against_baseline(gate: Gate, slices: Mapping, baseline: Mapping | None) -> list[GateResult]:
    if baseline is None:
        return [GateResult(gate.describe(), OVERALL, gate.metric, None, None, True,
                           f"skipped: {gate.baseline} does not resolve (nothing to compare with yet)")]
    larger = larger_is_better(gate.metric.split(".")[0])
    theirs = baseline.get("slices", {})
    out = []
    for name in slices:
        ours, base = _value(slices, name, gate.metric), _value(theirs, name, gate.metric)
        if base is None:
            continue
        limit = base - gate.tolerance if larger else base + gate.tolerance
        if ours is None:
            out.append(GateResult(gate.describe(), name, gate.metric, None, limit, False, "no value"))
            continue
        passed = ours >= limit if larger else ours <= limit
        out.append(GateResult(gate.describe(), name, gate.metric, ours, limit, passed,
                              f"baseline {gate.baseline}: {base:.6g}" + ("" if passed else ", worse beyond tolerance")))
    return out or [GateResult(gate.describe(), OVERALL, gate.metric, None, None, False,
                              f"no slice of the report has {gate.metric} for both models")]
