"""The measurement protocol (docs/design.md): warm-up, adaptive run counts, interleaved trials in
independent processes, a canary block timed in every trial, and re-measurement of unstable entries.

Blocks are measured in groups: within a group every block is visited once per trial, round-robin,
with the canary first, so drift during the group hits all its blocks alike. Trial t runs in worker
process t mod `launches`: a block's time depends on where its buffers landed in memory, which
differs from process to process, so trials in separate processes and the median of their medians
give a number the next run reproduces. A block's result is final when its group's last trial ends,
and is handed to the caller at once (who stores it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from latency.vocab.blocks import BlockSpec
from latency.vocab.timing import SampleStats
from profilers.errors import BlockFailed
from profilers.stats import relative_spread, summarize
from profilers.targets import ArchTarget, Target, label
from profilers.worker import Timing, TimingPlan, Worker, WorkerCrashed


@dataclass(frozen=True)
class Protocol:
    """Every knob of the protocol; recorded with each row."""

    name: str = "standard"
    warmup_runs: int = 10
    warmup_s: float = 0.5
    min_runs: int = 50  # over all trials
    min_time_s: float = 1.0  # over all trials
    max_time_s: float = 4.0  # over all trials, while the CI target is not met
    ci_target: float = 0.02  # relative half-width of the median's 95% CI
    trials: int = 3
    launches: int = 3  # independent worker processes; trial t runs in process t mod launches
    rewarm_runs: int = 3  # a block comes back cold after the rest of its group ran
    rewarm_s: float = 0.05
    canary_runs: int = 30
    canary_s: float = 0.15
    group_size: int = 12
    unstable_iqr: float = 0.10  # IQR over the median, within a trial
    unstable_spread: float = 0.05  # trials' medians apart, relative (raw or canary-corrected)
    remeasure_rounds: int = 1
    # The canary detects a group (or a network's run) taken while the machine moved: its trials' canaries
    # apart, or away from the session's usual canary, by more than this (relative) retake the whole group, up
    # to `retakes` times, keeping the steadiest take. Rows and runs are then used as measured, never rescaled
    # by a canary ratio (docs/design.md).
    canary_tolerance: float = 0.10
    retakes: int = 2
    # Return the worker's free heap to the kernel before each call of a block (malloc_trim), so that the
    # block pays for faulting in its buffers as it does inside a network run by a plain process, where
    # glibc trims and unmaps between blocks; warm-heap blocks sum well short of such a process's end-to-end
    # time (docs/design.md).
    cold_heap: bool = True
    # Whole networks timed as truth (in a deployment's environment) each get processes of their own, as
    # in the user's process: no other model's memory beside them. Smoke tests share one process.
    network_per_process: bool = True
    # Fork workers from a zygote that imported the runtime once (profilers.zygote) instead of starting a
    # fresh interpreter each: seconds instead of a minute per worker on a loaded machine, but forked
    # workers share one memory layout, which independent launches are there to vary. Smoke tests only.
    preloaded_workers: bool = False

    def __post_init__(self) -> None:
        if self.trials < 3 and self.name == "standard":
            raise ValueError("the standard protocol needs at least 3 trials")

    def trial_plan(self, first_visit: bool) -> TimingPlan:
        """One visit of a block: the first in a process warms up (the warm-up time is shared
        between the processes the block runs in), later ones re-warm briefly."""
        return TimingPlan(
            warmup_runs=self.warmup_runs if first_visit else self.rewarm_runs,
            warmup_s=self.warmup_s / min(self.launches, self.trials) if first_visit else self.rewarm_s,
            min_runs=max(1, -(-self.min_runs // self.trials)),
            min_time_s=self.min_time_s / self.trials,
            max_time_s=self.max_time_s / self.trials,
            ci_target=self.ci_target * self.trials**0.5,  # the trials together reach ci_target
            cold_heap=self.cold_heap,
        )

    def canary_plan(self) -> TimingPlan:
        """Every visit of the canary warms it up in full, in a worker that times nothing else: the canary of
        a block group and of a network's run are then timed the same way (same worker, warm state and
        environment), and only the machine's speed tells them apart."""
        return TimingPlan(
            warmup_runs=self.warmup_runs,
            warmup_s=self.warmup_s / 2,
            min_runs=self.canary_runs,
            min_time_s=self.canary_s,
            max_time_s=self.canary_s * 3,
            ci_target=self.ci_target,
            cold_heap=self.cold_heap,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "standard": Protocol(),
    # For steady devices (a GPU timed with CUDA events) and short device leases: the same structure
    # with a tenth of the time budgets. Rows say so in their protocol.
    "brief": Protocol(
        name="brief",
        warmup_s=0.05,
        min_time_s=0.1,
        max_time_s=0.4,
        rewarm_s=0.01,
        canary_s=0.03,
        retakes=1,
    ),
    # For smoke tests and CI: same structure, tiny budgets. Rows say so in their protocol.
    "quick": Protocol(
        name="quick",
        warmup_runs=2,
        warmup_s=0.0,
        min_runs=9,
        min_time_s=0.0,
        max_time_s=0.05,
        trials=3,
        launches=1,
        rewarm_runs=1,
        rewarm_s=0.0,
        canary_runs=5,
        canary_s=0.0,
        group_size=6,
        remeasure_rounds=1,
        retakes=0,
        network_per_process=False,
        preloaded_workers=True,
    ),
}


def canary_spec(batch: int = 1, dtype: str = "fp32") -> BlockSpec:
    """A fixed mid-size block, timed in every trial to follow the machine's drift."""
    return BlockSpec.from_key(f"ir_k3_s1_c32-96-32_se0_relu_28x28_b{batch}_{dtype}")


@dataclass(frozen=True)
class Result:
    """One target's measurement (a block or a whole network), or why it failed (`error`)."""

    target: Target
    stats: SampleStats | None
    trial_medians_us: tuple[float, ...] = ()
    canary_medians_us: tuple[float, ...] = ()
    canary_ratio: float | None = None
    canary_us: float | None = None
    stable: bool = False
    remeasured: bool = False
    warmup_runs: int = 0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    lowering: dict[str, Any] = field(default_factory=dict)  # how the runtime took it (Backend.lowering)
    parts: tuple[Result, ...] = ()  # in context: each block of the network, in order, as timed inside it

    @property
    def ok(self) -> bool:
        return self.error is None


class ProgressSink:
    """Receives progress (block visits); the CLI draws it as a bar."""

    def advance(self, steps: int = 1, description: str | None = None) -> None: ...

    def add_total(self, steps: int) -> None: ...


def _combine(target: Target, timings: list[Timing], canary: list[float], protocol: Protocol) -> Result:
    result = _combine_samples(target, [t.samples_us for t in timings], canary, protocol)
    lowering = timings[0].lowering if timings else {}
    result = replace(result, warmup_runs=sum(t.warmup_runs for t in timings), lowering=lowering)
    if not timings or not timings[0].part_samples_us:
        return result
    # The network's blocks as timed inside it (each trial's calls, block by block), combined as blocks are.
    assert isinstance(target, ArchTarget)
    specs = target.arch.specs(batch=target.batch, dtype=target.dtype)
    parts = tuple(
        _combine_samples(spec, [list(t.part_samples_us[i]) for t in timings], canary, protocol)
        for i, spec in enumerate(specs)
    )
    return replace(result, parts=parts)


def _combine_samples(target: Target, trials_us: list[list[float]], canary: list[float], protocol: Protocol) -> Result:
    medians = tuple(float(np.median(samples)) for samples in trials_us)
    # The median of the trials' medians: one odd process does not move it.
    pooled = summarize([s for samples in trials_us for s in samples])
    median_us = float(np.median(medians))
    # The pooled percentiles bracket it except when one trial holds most of the calls; keep the row possible.
    stats = replace(
        pooled,
        median_us=median_us,
        p10_us=min(pooled.p10_us, median_us),
        p90_us=max(pooled.p90_us, median_us),
        min_us=min(pooled.min_us, median_us),
    )
    # No ratios when a trial's canary could not be timed: a partial set would be misleading.
    ratios = [m / c for m, c in zip(medians, canary, strict=True) if c > 0] if len(canary) == len(medians) else []
    raw_spread = relative_spread(medians)
    # Drift moves the whole machine; the canary-relative spread is what the estimate sees.
    canary_spread = relative_spread(ratios) if len(ratios) == len(medians) else raw_spread
    spread = min(raw_spread, canary_spread)
    # Noise within a trial; drift between trials is the spread's business, not the IQR's.
    trial_iqr = float(np.median([summarize(samples).iqr_ratio for samples in trials_us]))
    stable = trial_iqr <= protocol.unstable_iqr and spread <= protocol.unstable_spread
    return Result(
        target=target,
        stats=stats,
        trial_medians_us=medians,
        canary_medians_us=tuple(canary),
        canary_ratio=float(np.median(ratios)) if ratios else None,
        canary_us=float(np.median(canary)) if canary else None,
        stable=stable,
        details={"trial_spread": raw_spread, "canary_trial_spread": canary_spread, "trial_iqr_ratio": trial_iqr},
    )


class Scheduler:
    """Runs the protocol over targets with a pool of workers (one per launch, trial t in worker
    t mod len(workers)); yields each target's result as soon as it is final.

    `canary_worker` times the canary of every trial instead of `workers`: a worker of the block protocol's
    that times nothing else, given by every path on this host (blocks and networks alike), so that a canary
    says only how fast the machine ran, whatever the group beside it; one process, so that its trials differ
    by the machine's movement, not by where each process's buffers landed (fresh processes' canaries
    differ: docs/design.md). A group taken while the machine moved is taken again (`_take`,
    `Protocol.canary_tolerance`); `canary_history` carries the canaries of the takes kept so far from one
    scheduler to the next (a network per scheduler). `in_context`: whole networks are timed block by block,
    and their results carry their blocks' (`Result.parts`).
    """

    def __init__(
        self,
        workers: Worker | Sequence[Worker],
        protocol: Protocol,
        progress: ProgressSink | None = None,
        canary_worker: Worker | None = None,
        in_context: bool = False,
        canary_history: list[float] | None = None,
    ) -> None:
        self.workers = list(workers) if isinstance(workers, Sequence) else [workers]
        self.canary_worker = canary_worker
        # the canaries of every take kept so far (schedulers of one session share it: the machine's usual speed)
        self.canary_history = canary_history if canary_history is not None else []
        self.protocol = protocol
        self.in_context = in_context
        self.progress = progress or ProgressSink()
        self._visited: set[tuple[int, str]] = set()  # (worker, key) already warmed up there

    def run(self, targets: Sequence[Target], deadline: float | None = None) -> Iterator[Result]:
        """Measure `targets` group by group; no group starts after `deadline` (time.monotonic)."""
        size = self.protocol.group_size
        for start in range(0, len(targets), size):
            if deadline is not None and time.monotonic() >= deadline:
                return
            group = list(targets[start : start + size])
            results = {r.target.key: r for r in self._measure_steady(group)}
            for _ in range(self.protocol.remeasure_rounds):
                unstable = [r.target for r in results.values() if r.ok and not r.stable]
                if not unstable:
                    break
                self.progress.add_total(len(unstable) * self.protocol.trials)
                for again in self._measure_group(unstable):
                    previous = results[again.target.key]
                    # Keep the steadier of the two; flag it unstable if neither is.
                    if again.ok and (not previous.ok or _noise(again) <= _noise(previous)):
                        takes = {"takes": previous.details["takes"]} if "takes" in previous.details else {}
                        results[again.target.key] = replace(again, remeasured=True, details={**again.details, **takes})
                    else:
                        results[again.target.key] = replace(previous, remeasured=True)
            yield from (results[s.key] for s in group)
            self._forget(group)

    def _measure_steady(self, group: list[Target]) -> list[Result]:
        """Measure the group; while its canaries say the machine moved (`_take`) by more than the protocol's
        tolerance, take it again, up to `retakes` times, and keep the steadiest take."""
        best, best_moved = self._take(group)
        taken = 1
        while best_moved > self.protocol.canary_tolerance and taken <= self.protocol.retakes:
            self.progress.add_total(len(group) * self.protocol.trials)
            again, moved = self._take(group)
            taken += 1
            if moved < best_moved:
                best, best_moved = again, moved
        self.canary_history.extend(_canaries(best))  # the kept take's: a lasting change of speed moves the median
        return [replace(r, details={**r.details, "takes": taken, "canary_moved": best_moved}) for r in best]

    def _take(self, group: list[Target]) -> tuple[list[Result], float]:
        """One take of the group and how far the machine moved during it: its trials' canaries apart
        (relative spread), or their median away from the median of the canaries of the takes kept before
        (once there are three), whichever is larger. A machine that swings between speeds for seconds at a
        time (docs/design.md) can hold still through a whole group in its slow state: the spread alone would
        not see that."""
        results = self._measure_group(group)
        canaries = _canaries(results)
        if not canaries:
            return results, 0.0
        moved = relative_spread(canaries)
        if len(self.canary_history) >= 3:
            moved = max(moved, abs(float(np.median(canaries)) / float(np.median(self.canary_history)) - 1))
        return results, moved

    def _forget(self, group: list[Target]) -> None:
        keys = [t.key for t in group]
        for index, worker in enumerate(self.workers):
            try:
                worker.forget(keys)
            except WorkerCrashed:
                self._restart(index)
        self._visited -= {(i, k) for i in range(len(self.workers)) for k in keys}

    def _visit(self, index: int, key: str) -> bool:
        """Whether this is the first visit of `key` in worker `index` (and remember it)."""
        first = (index, key) not in self._visited
        self._visited.add((index, key))
        return first

    def _measure_group(self, group: list[Target]) -> list[Result]:
        protocol = self.protocol
        canary = canary_spec(group[0].batch, group[0].dtype)
        timings: dict[str, list[Timing]] = {t.key: [] for t in group}
        canary_medians: list[float] = []
        errors: dict[str, str] = {}
        for trial in range(protocol.trials):
            index = trial % len(self.workers)
            worker = self.workers[index]
            try:
                timing = (self.canary_worker or worker).measure(canary.key, protocol.canary_plan())
                canary_medians.append(float(np.median(timing.samples_us)))
            except (BlockFailed, WorkerCrashed) as exc:
                self._recover(index, exc, canary=self.canary_worker is not None)
            # Rotate the order each trial so no block always follows the same neighbour.
            shift = trial * len(group) // protocol.trials
            for target in group[shift:] + group[:shift]:
                if target.key in errors:
                    self.progress.advance(1)
                    continue
                try:
                    plan = protocol.trial_plan(self._visit(index, target.key))
                    if self.in_context:
                        plan = replace(plan, in_context=True)
                    timings[target.key].append(worker.measure(target.key, plan))
                except (BlockFailed, WorkerCrashed) as exc:
                    errors[target.key] = str(exc)
                    self._recover(index, exc)
                self.progress.advance(1, description=label(target))
        results = []
        for target in group:
            if target.key in errors:
                results.append(Result(target=target, stats=None, error=errors[target.key]))
            else:
                canary_for_block = canary_medians if len(canary_medians) == protocol.trials else []
                results.append(_combine(target, timings[target.key], canary_for_block, protocol))
        return results

    def _recover(self, index: int, exc: Exception, canary: bool = False) -> None:
        if isinstance(exc, WorkerCrashed):
            self._restart(index, canary)

    def _restart(self, index: int, canary: bool = False) -> None:
        if canary:
            assert self.canary_worker is not None
            self.canary_worker.restart()
            return
        self.workers[index].restart()
        self._visited = {(i, k) for i, k in self._visited if i != index}


def _canaries(results: list[Result]) -> tuple[float, ...]:
    """A group's trial canaries (every result of a group has the same; none where a trial's failed)."""
    return next((r.canary_medians_us for r in results if r.canary_medians_us), ())


def _noise(result: Result) -> float:
    assert result.stats is not None
    return max(
        result.details["trial_iqr_ratio"], min(result.details["trial_spread"], result.details["canary_trial_spread"])
    )
