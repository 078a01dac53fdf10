"""The backend interface: what a worker process needs to run one block and time it."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from profilers.stats import median_ci_halfwidth
from profilers.targets import Target

Runner = Callable[[], object]


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
        samples: list[float] = []
        clock = time.perf_counter_ns
        start = clock()
        deadline_ns = start + int(max_time_s * 1e9)
        floor_ns = start + int(min_time_s * 1e9)
        while True:
            if before_call is not None:
                before_call()
            t0 = clock()
            run()
            t1 = clock()
            samples.append((t1 - t0) / 1e3)
            if len(samples) >= min_runs and t1 >= floor_ns:
                if t1 >= deadline_ns:
                    break
                # Checking the CI costs a sort: do it every 16 calls.
                if len(samples) % 16 == 0 and median_ci_halfwidth(samples) <= ci_target:
                    break
        return samples

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
