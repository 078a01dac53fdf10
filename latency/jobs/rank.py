"""The family ranked per device: estimated latency, FLOPs, params, top-1, Pareto front, budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from latency.estimate.estimator import Estimate
from latency.vocab.family import list_models, model_info


@dataclass(frozen=True)
class RankRow:
    name: str
    flops_m: float
    params_m: float
    top1: float
    latency_ms: dict[str, float]  # per device
    rank: dict[str, int]  # 1 = fastest, per device
    pareto: dict[str, bool]  # on the accuracy-latency front, per device
    calibrated: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Ranking:
    devices: tuple[str, ...]
    rows: tuple[RankRow, ...]  # ordered by latency on the first device
    budget_ms: float | None = None

    def best_under_budget(self, device: str) -> RankRow | None:
        """The most accurate model whose estimate fits the budget on `device`."""
        if self.budget_ms is None:
            return None
        fitting = [r for r in self.rows if r.latency_ms[device] <= self.budget_ms]
        return max(fitting, key=lambda r: r.top1, default=None)

    def rank_changes(self) -> list[dict[str, Any]]:
        """Models whose rank differs between devices."""
        if len(self.devices) < 2:
            return []
        return [{"name": r.name, "rank": r.rank} for r in self.rows if len({r.rank[d] for d in self.devices}) > 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "budget_ms": self.budget_ms,
            "rows": [r.to_dict() for r in self.rows],
            "best_under_budget": {d: (best.name if (best := self.best_under_budget(d)) else None) for d in self.devices}
            if self.budget_ms is not None
            else None,
            "rank_changes": self.rank_changes(),
        }


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
    devices: Sequence[str], estimate: Callable[[str, str], Estimate], budget_ms: float | None = None
) -> Ranking:
    """Rank the available family members on each device; `estimate(device, model)` gives estimates."""
    names = list_models(available_only=True)
    infos = {n: model_info(n) for n in names}
    estimates = {(d, n): estimate(d, n) for d in devices for n in names}
    ranks: dict[str, dict[str, int]] = {n: {} for n in names}
    fronts: dict[str, set[str]] = {}
    for device in devices:
        ordered = sorted(names, key=lambda n: estimates[device, n].latency_ms)
        for position, name in enumerate(ordered, start=1):
            ranks[name][device] = position
        fronts[device] = pareto_front([(n, estimates[device, n].latency_ms, infos[n].top1) for n in names])
    rows = [
        RankRow(
            name=n,
            flops_m=infos[n].flops_m or 0.0,
            params_m=infos[n].params_m,
            top1=infos[n].top1,
            latency_ms={d: estimates[d, n].latency_ms for d in devices},
            rank=ranks[n],
            pareto={d: n in fronts[d] for d in devices},
            calibrated={d: estimates[d, n].calibrated for d in devices},
        )
        for n in sorted(names, key=lambda n: ranks[n][devices[0]])
    ]
    return Ranking(tuple(devices), tuple(rows), budget_ms)
