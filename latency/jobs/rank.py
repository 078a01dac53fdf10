"""The family ranked per column (a device, or a device in one dtype): estimated latency, FLOPs, params, top-1,
Pareto front, budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from latency.estimate.estimator import Estimate
from latency.vocab.blocks import QUANTIZED_DTYPES
from latency.vocab.conditions import Conditions
from latency.vocab.family import list_models, model_info


@dataclass(frozen=True)
class RankRow:
    name: str
    flops_m: float
    params_m: float
    top1: float
    latency_ms: dict[str, float]  # per column
    rank: dict[str, int]  # 1 = fastest, per column
    pareto: dict[str, bool]  # on the accuracy-latency front, per column
    calibrated: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Ranking:
    columns: tuple[str, ...]  # what is ranked: devices ("pixel"), or a device in dtypes ("pixel int8")
    rows: tuple[RankRow, ...]  # ordered by latency in the first column
    budget_ms: float | None = None

    def best_under_budget(self, column: str) -> RankRow | None:
        """The most accurate model whose estimate fits the budget in `column`."""
        if self.budget_ms is None:
            return None
        fitting = [r for r in self.rows if r.latency_ms[column] <= self.budget_ms]
        return max(fitting, key=lambda r: r.top1, default=None)

    def rank_changes(self) -> list[dict[str, Any]]:
        """Models whose rank differs between columns."""
        if len(self.columns) < 2:
            return []
        return [{"name": r.name, "rank": r.rank} for r in self.rows if len({r.rank[c] for c in self.columns}) > 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "budget_ms": self.budget_ms,
            "rows": [r.to_dict() for r in self.rows],
            "best_under_budget": {c: (best.name if (best := self.best_under_budget(c)) else None) for c in self.columns}
            if self.budget_ms is not None
            else None,
            "rank_changes": self.rank_changes(),
        }


def rank_columns(conditions: Sequence[Conditions]) -> dict[str, Conditions]:
    """The columns a ranking compares, by label: each device (its name); a quantized dtype's ranking has the
    same device and backend in fp32 beside it ("pixel int8", "pixel fp32"), since quantizing moves models
    unevenly (depthwise convs, squeeze-excite and hard-swish gain less than 1x1 convs)."""
    if not any(c.dtype in QUANTIZED_DTYPES for c in conditions):
        return {c.device: c for c in conditions}
    columns = {}
    for c in conditions:
        columns[f"{c.device} {c.dtype}"] = c
        columns[f"{c.device} fp32"] = replace(c, dtype="fp32")
    return columns


def pareto_front(points: Sequence[tuple[str, float, float]]) -> set[str]:
    """Names not dominated in (lower latency, higher accuracy): (name, latency, accuracy)."""
    front = set()
    for name, latency, accuracy in points:
        dominated = any(
            (other_latency <= latency and other_accuracy >= accuracy)
            and (other_latency < latency or other_accuracy > accuracy)
            for other, other_latency, other_accuracy in points
            if other != name
        )
        if not dominated:
            front.add(name)
    return front


def rank_family(
    columns: Sequence[str], estimate: Callable[[str, str], Estimate], budget_ms: float | None = None
) -> Ranking:
    """Rank the available family members in each column; `estimate(column, model)` gives estimates."""
    names = list_models(available_only=True)
    infos = {n: model_info(n) for n in names}
    estimates = {(c, n): estimate(c, n) for c in columns for n in names}
    ranks: dict[str, dict[str, int]] = {n: {} for n in names}
    fronts: dict[str, set[str]] = {}
    for column in columns:
        ordered = sorted(names, key=lambda n: estimates[column, n].latency_ms)
        for position, name in enumerate(ordered, start=1):
            ranks[name][column] = position
        fronts[column] = pareto_front([(n, estimates[column, n].latency_ms, infos[n].top1) for n in names])
    rows = [
        RankRow(
            name=n,
            flops_m=infos[n].flops_m or 0.0,
            params_m=infos[n].params_m,
            top1=infos[n].top1,
            latency_ms={c: estimates[c, n].latency_ms for c in columns},
            rank=ranks[n],
            pareto={c: n in fronts[c] for c in columns},
            calibrated={c: estimates[c, n].calibrated for c in columns},
        )
        for n in sorted(names, key=lambda n: ranks[n][columns[0]])
    ]
    return Ranking(tuple(columns), tuple(rows), budget_ms)
