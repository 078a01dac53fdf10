"""The search job: make sure the table covers the space (filling it on a local device), check the
target can be met, run the channel/resolution search (search_cost), write the architecture, measure it
end to end and state the estimate at the machine's speed during that run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from latency.estimate.estimator import Estimator, MissingBlocksError
from latency.estimate.fitting import at_run_speed
from latency.jobs.measure import Progress, latest_run, profile_archs
from latency.jobs.report import plot_search
from latency.jobs.space_fill import profile_space
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.errors import LutError
from latency.vocab.space import Space
from lut_db import LutStore
from profilers.devices import is_local
from search_cost.cost import LatencyCost
from search_cost.distributed import barrier, init_from_env
from search_cost.search import EpochLog, Search, SearchConfig


@dataclass(frozen=True)
class SearchRequest:
    space: Space
    config: SearchConfig
    out: Path
    checkpoint: Path
    conditions: Conditions = field(default_factory=Conditions)  # the search's latency is at batch 1
    profile_budget_min: float = 10.0
    measure: bool = True
    protocol: str = "standard"
    deploy_env: DeployEnv = DEFAULT


@dataclass(frozen=True)
class SearchOutcome:
    target_ms: float
    estimated_ms: float
    measured_ms: float | None
    estimated_then_ms: float | None
    expected_latency_ms: float
    proxy_accuracy: float
    projected: bool  # the argmax missed the budget and was projected onto it
    arch: str
    plot: str  # accuracy and expected latency over the epochs, beside the architecture
    calibrated: bool
    flops_m: float

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        del payload["flops_m"]
        return payload


def _silent(*_: Any) -> None:
    pass


def space_estimator(
    request: SearchRequest, store: LutStore, progress: Progress, say: Callable[[str], None]
) -> Estimator:
    """The device's estimator over the space; a local device's missing blocks are measured first."""
    space, device = request.space, request.conditions.device
    estimator = Estimator(request.conditions, store=store, deploy_env=request.deploy_env)
    try:
        estimator.space_tables(space)
    except MissingBlocksError:
        if not is_local(device):
            raise
        say(f"the table does not cover {space.name} on {device} yet: filling it ({request.profile_budget_min:g} min)")
        with progress(f"profiling {space.name}") as bar:
            filled = profile_space(
                space,
                store,
                estimator.conditions,
                request.profile_budget_min,
                request.protocol,
                bar,
                deploy_env=request.deploy_env,
            )
        if filled.interrupted:
            raise KeyboardInterrupt from None
        estimator.reload()
    return estimator


def run_search(
    request: SearchRequest,
    store: LutStore,
    progress: Progress,
    say: Callable[[str], None],
    on_epoch: Callable[[EpochLog], None],
) -> SearchOutcome | None:
    """The search, in this process or (under torchrun) in each of several: the first fills the table if
    needed, then all train; only the first writes, measures and reports (the others return None)."""
    space, device, target_ms = request.space, request.conditions.device, request.config.target_ms
    ranks, train_device = init_from_env(request.config.train_device)
    if ranks.main:
        estimator = space_estimator(request, store, progress, say)
    barrier(ranks)
    if not ranks.main:
        say = on_epoch = _silent  # one voice: the first process
        estimator = Estimator(request.conditions, store=store, deploy_env=request.deploy_env)
    fastest = estimator.estimate(space.arch(space.point_from_row([0] * len(space.dimensions)))).latency_ms
    if target_ms < fastest:
        raise LutError(
            f"--target-ms {target_ms:g} is below the fastest architecture of {space.name} on {device} "
            f"({fastest:.3f} ms, every option at its smallest); no architecture can meet it.",
            exit_code=2,
        )
    cost = LatencyCost(space, estimator=estimator)  # after the check: building it costs seconds on a big space
    config = replace(request.config, train_device=train_device)
    runner = Search(space, cost, config, request.checkpoint, ranks)
    if resumed_at := runner.resume():
        say(f"resuming from {request.checkpoint} at epoch {resumed_at}")
    result = runner.run(on_epoch=on_epoch)
    if not ranks.main:
        return None
    request.out.write_text(result.arch.to_json())
    plot = request.out.with_suffix(".png")
    plot_search(result.history, target_ms, f"search for {target_ms:g} ms on {device} ({space.name})", plot)
    estimated = estimator.estimate(result.arch).latency_ms
    measured = estimated_then = None
    if request.measure:
        with progress(f"measuring {result.arch.name}") as bar:
            profile_archs(
                [result.arch],
                store,
                estimator.conditions,
                tag="search",
                protocol=request.protocol,
                force=True,
                progress=bar,
                deploy_env=request.deploy_env,
            )
        runs = store.e2e_runs(estimator.conditions, tag="search", deploy_env=request.deploy_env.name)
        if (run := latest_run(runs, result.arch)) is not None:
            measured = run.stats.median_us / 1e3
            # The machine drifts as a whole: compare with the estimate at its speed during the run.
            estimated_then = at_run_speed(estimated, run, estimator.table_canary_us)
    return SearchOutcome(
        target_ms=target_ms,
        estimated_ms=estimated,
        measured_ms=measured,
        estimated_then_ms=estimated_then,
        expected_latency_ms=result.expected_latency_ms,
        proxy_accuracy=result.proxy_accuracy,
        projected=result.point != result.argmax,
        arch=str(request.out),
        plot=str(plot),
        calibrated=estimator.calibrated,
        flops_m=sum(s.flops_m for s in result.arch.specs()),
    )
