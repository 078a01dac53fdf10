"""The backend interface: what a worker process needs to run one block and time it."""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from profilers.errors import BlockFailed
from profilers.stats import median_ci_halfwidth
from profilers.targets import ArchTarget, Target

Runner = Callable[[], object]
# Runs a whole network once, block by block; returns the clock (perf_counter_ns) before the first block
# and after each block, so that block i took stamps[i + 1] - stamps[i] in its network's context.
PartsRunner = Callable[[], list[int]]


class Backend(ABC):
    """One runtime on one device. Instances live inside a worker process only.

    `check_available` runs in the parent before a worker starts, so it must stay cheap and must
    not import the runtime (thread pools of two runtimes in one process fight).
    """

    name: ClassVar[str]
    extra: ClassVar[str | None] = None  # the pip extra that installs the runtime
    host_heap: ClassVar[bool] = True  # its blocks' buffers live in the process's heap (cold-heap protocol)
    distribution: ClassVar[str]  # the package whose version keys the rows
    preload_modules: ClassVar[tuple[str, ...]] = ()  # what a zygote imports before it forks workers
    times_in_context: ClassVar[bool] = False  # it can time a network's blocks inside it (prepare_parts)

    def __init__(self, threads: int, options: dict[str, Any] | None = None) -> None:
        self.threads = threads
        self.options = dict(options or {})

    @classmethod
    def check_available(cls) -> None:
        """Raise ProfilerError when the runtime is not installed (most need no check)."""
        return None

    @classmethod
    def preload(cls) -> None:
        """Import the runtime without starting it (in a zygote, profilers.zygote): no thread pool, no tensor."""
        from importlib import import_module

        for module in cls.preload_modules:
            import_module(module)

    @abstractmethod
    def setup(self) -> None:
        """Import the runtime and fix its thread count (called once, in the worker)."""

    @classmethod
    def installed_version(cls) -> str:
        """The runtime's version as installed, read without importing it (parent process)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(cls.distribution)
        except PackageNotFoundError:
            return "unknown"

    def version(self) -> str:
        """The version the worker actually runs (rows are keyed by it)."""
        return self.installed_version()

    @abstractmethod
    def prepare(self, target: Target) -> Runner:
        """A callable that runs the block (or whole network) once on a fixed, seeded input."""

    def prepare_parts(self, target: ArchTarget) -> PartsRunner:
        """A callable that runs the whole network once, timing each of its blocks in place (blocks in
        context); only runtimes that run a network block by block in the host process can."""
        raise BlockFailed(f"the {self.name} backend runs a network as one program: its blocks cannot be timed in it")

    def lowering(self, key: str) -> dict[str, Any]:
        """How the runtime took the target it prepared under `key` (an ExecuTorch program: the ops outside
        its delegate); kept with the target's row."""
        return {}

    def environment(self) -> dict[str, Any]:
        return {}

    def protocol_details(self) -> dict[str, Any]:
        """Backend-specific protocol settings recorded with every row (e.g. CUDA graphs)."""
        return {}

    def time_calls(
        self,
        run: Runner,
        min_runs: int,
        min_time_s: float,
        max_time_s: float,
        ci_target: float,
        before_call: Callable[[], object] | None = None,
    ) -> list[float]:
        """Per-call wall times in microseconds: at least `min_runs` calls and `min_time_s`, then on
        until the median's 95% CI is within `ci_target` or `max_time_s` has passed. `before_call`
        runs before each call, outside the timed span (budgets count it)."""
        clock = time.perf_counter_ns

        def call() -> float:
            if before_call is not None:
                before_call()
            t0 = clock()
            run()
            return (clock() - t0) / 1e3

        return timed_loop(call, min_runs, min_time_s, max_time_s, ci_target)

    def time_parts(
        self, run: PartsRunner, min_runs: int, min_time_s: float, max_time_s: float, ci_target: float
    ) -> tuple[list[float], list[list[float]]]:
        """`time_calls` for a network timed block by block: the per-call totals and, per block, its
        per-call times in microseconds (the blocks' times of one call sum to its total)."""
        calls: list[list[float]] = []

        def call() -> float:
            stamps = run()
            parts = [(b - a) / 1e3 for a, b in itertools.pairwise(stamps)]
            calls.append(parts)
            return sum(parts)

        totals = timed_loop(call, min_runs, min_time_s, max_time_s, ci_target)
        return totals, [list(block) for block in zip(*calls, strict=True)]

    def warm_up(self, run: Runner, runs: int, seconds: float, before_call: Callable[[], object] | None = None) -> int:
        """Run until both `runs` calls and `seconds` have passed; returns the calls made."""
        done = 0
        deadline = time.perf_counter() + seconds
        while done < runs or time.perf_counter() < deadline:
            if before_call is not None:
                before_call()
            run()
            done += 1
        return done


def timed_loop(
    call: Callable[[], float], min_runs: int, min_time_s: float, max_time_s: float, ci_target: float
) -> list[float]:
    """Call `call` (which returns one sample) until at least `min_runs` samples and `min_time_s`
    have passed, then on until the samples' median has a 95% CI within `ci_target` or `max_time_s` ends."""
    samples: list[float] = []
    clock = time.perf_counter_ns
    start = clock()
    deadline_ns = start + int(max_time_s * 1e9)
    floor_ns = start + int(min_time_s * 1e9)
    while True:
        samples.append(call())
        now = clock()
        if len(samples) >= min_runs and now >= floor_ns:
            if now >= deadline_ns:
                break
            # Checking the CI costs a sort: do it every 16 calls.
            if len(samples) % 16 == 0 and median_ci_halfwidth(samples) <= ci_target:
                break
    return samples
