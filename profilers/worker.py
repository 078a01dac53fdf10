"""Each backend runs in its own worker process; the parent talks to it over a pipe.

One process per backend keeps runtimes' thread pools apart (they slow each other's blocks down
badly: docs/design.md) and lets a crashing runtime take down only its worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import IO, Any

from latency.vocab.deploy_env import TUNED_MALLOC, DeployEnv
from profilers.backends import backend_class
from profilers.errors import BlockFailed, ProfilerError
from profilers.targets import ARCH_PREFIX, ArchTarget, parse_target
from profilers.zygote import ForkedProcess, log_tail, start_python, zygote_for

READY_TIMEOUT_S = 600.0  # importing torch takes well over a minute on a loaded machine (docs/design.md)
# glibc hands large buffers back to the kernel after each call by default (mmap/munmap, heap trim),
# so every run of a block with big activations page-faults afresh, and its time varies at random between
# passes (docs/design.md). Block workers keep freed memory in the heap instead; end-to-end runs taken as
# truth run in the deployment's environment (latency.vocab.deploy_env).
MALLOC_ENV = dict(TUNED_MALLOC)
# Run via -c so that pickled classes resolve to this module, not to __main__.
_ENTRY = "import sys; from profilers.worker import main; main(sys.argv[1:])"


@dataclass(frozen=True)
class TimingPlan:
    """What one visit of a block does: warm up, then time."""

    warmup_runs: int
    warmup_s: float
    min_runs: int
    min_time_s: float
    max_time_s: float
    ci_target: float
    cold_heap: bool = False  # trim the heap before each call of a block (Protocol.cold_heap)
    in_context: bool = False  # a whole network's calls timed block by block (Backend.prepare_parts)


@dataclass(frozen=True)
class Timing:
    samples_us: list[float]
    warmup_runs: int
    part_samples_us: tuple[list[float], ...] = ()  # in context: per block of the network, its times
    lowering: dict[str, Any] = field(default_factory=dict)  # Backend.lowering: how the runtime took the target


def _serve(conn: Connection, backend_name: str, threads: int, options: dict[str, Any]) -> None:
    backend = backend_class(backend_name)(threads, options)
    try:
        backend.setup()
        conn.send(
            (
                "ready",
                {
                    "backend_version": backend.version(),
                    "environment": {
                        **backend.environment(),
                        "malloc": {k: os.environ.get(k) for k in MALLOC_ENV},
                        "ld_preload": os.environ.get("LD_PRELOAD"),
                    },
                    "protocol": backend.protocol_details(),
                    "pid": os.getpid(),
                },
            )
        )
    except Exception as exc:
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    runners: dict[str, Any] = {}
    trimmer = heap_trimmer()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        command = message[0]
        if command == "stop":
            return
        if command == "forget":
            for key in message[1]:
                runners.pop(key, None)
                runners.pop(f"parts:{key}", None)
            conn.send(("ok", None))
            continue
        _, key, plan = message
        try:
            if plan.in_context:
                conn.send(("ok", _time_in_context(backend, runners, key, plan)))
                continue
            if key not in runners:
                runners[key] = backend.prepare(parse_target(key))
            run = runners[key]
            # Whole networks run as the process runs them; only blocks get the cold heap.
            before = trimmer if plan.cold_heap and backend.host_heap and not key.startswith(ARCH_PREFIX) else None
            warmups = backend.warm_up(run, plan.warmup_runs, plan.warmup_s, before)
            samples = backend.time_calls(run, plan.min_runs, plan.min_time_s, plan.max_time_s, plan.ci_target, before)
            conn.send(("ok", Timing(samples, warmups, lowering=backend.lowering(key))))
        except BlockFailed as exc:
            conn.send(("failed", str(exc)))
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            conn.send(("failed", f"{type(exc).__name__}: {exc} (at {os.path.basename(last.filename)}:{last.lineno})"))


def _time_in_context(backend: Any, runners: dict[str, Any], key: str, plan: TimingPlan) -> Timing:
    """A whole network's calls, each timed block by block, in the process as it is (no heap trimming)."""
    target = parse_target(key)
    if not isinstance(target, ArchTarget):
        raise BlockFailed(f"only a whole network's blocks can be timed in context, not '{key}'")
    parts_key = f"parts:{key}"  # forget() drops it with the network's key
    if parts_key not in runners:
        runners[parts_key] = backend.prepare_parts(target)
    run = runners[parts_key]
    warmups = backend.warm_up(run, plan.warmup_runs, plan.warmup_s)
    totals, parts = backend.time_parts(run, plan.min_runs, plan.min_time_s, plan.max_time_s, plan.ci_target)
    return Timing(totals, warmups, tuple(parts))


def heap_trimmer() -> Callable[[], object] | None:
    """A call that returns the process's free heap memory to the kernel (glibc's malloc_trim(0)), or
    None where the C library has none."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


def main(argv: list[str]) -> None:
    """Entry point of the worker process; argv: FD BACKEND THREADS OPTIONS_JSON."""
    fd, backend_name, threads, options = int(argv[0]), argv[1], int(argv[2]), json.loads(argv[3])
    conn = Connection(fd)
    try:
        _serve(conn, backend_name, threads, options)
    finally:
        conn.close()


class WorkerCrashed(Exception):
    """The worker process died (a segfault in a runtime, out of memory, killed)."""


class Worker:
    """Parent-side handle of one backend worker process (a context manager).

    Without `deploy_env` the process is tuned for stable block numbers (the protocol's); with one, it
    is set up as that deployment runs the network (a plain process for `default`), and only the
    runtime's own thread setting fixes the threads.
    """

    def __init__(
        self,
        backend_name: str,
        threads: int = 1,
        options: dict[str, Any] | None = None,
        deploy_env: DeployEnv | None = None,
        preloaded: bool = False,
    ) -> None:
        self.backend_name = backend_name
        self.threads = threads
        self.options = dict(options or {})
        self.deploy_env = deploy_env
        self.preloaded = preloaded
        self.info: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | ForkedProcess | None = None
        self._conn: Connection | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Worker:
        return self.launch().wait_ready()

    def launch(self) -> Worker:
        """Start the process without waiting for it (start several, then `wait_ready` each)."""
        backend_class(self.backend_name).check_available()
        # A fresh interpreter (not fork of this process, not multiprocessing's spawn, which re-imports
        # __main__): no runtime thread pools inherited, and any caller's script works. Or, when asked, a
        # fork of a zygote that imported the runtime in the same environment (profilers.zygote).
        parent, child = socket.socketpair()
        if self.deploy_env is None:
            threads = str(self.threads)
            env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        else:
            env = self.deploy_env.process_env(os.environ)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        args = [self.backend_name, str(self.threads), json.dumps(self.options)]
        if self.preloaded:
            self._process = self._fork(env, child.fileno(), args)
        else:
            self._process = start_python(_ENTRY, child.fileno(), args, env, self._log)
        child.close()
        self._conn = Connection(parent.detach())
        return self

    def _fork(self, env: dict[str, str], conn_fd: int, args: list[str]) -> ForkedProcess:
        assert self._log is not None
        try:
            return zygote_for(self.backend_name, env).fork(conn_fd, self._log.fileno(), args, env)
        except OSError:  # the zygote died (killed, out of memory): start another once
            return zygote_for(self.backend_name, env).fork(conn_fd, self._log.fileno(), args, env)

    def wait_ready(self) -> Worker:
        status, payload = self._receive(READY_TIMEOUT_S)
        if status != "ready":
            self.stop()
            raise ProfilerError(f"The {self.backend_name} backend could not start: {payload}.")
        self.info = payload
        return self

    def log_tail(self, lines: int = 3) -> str:
        """The last lines the worker printed (for crash reports)."""
        return "" if self._log is None else log_tail(self._log, lines)

    def _receive(self, timeout_s: float | None = None) -> tuple[str, Any]:
        assert self._conn is not None and self._process is not None
        while not self._conn.poll(1.0 if timeout_s is None else min(1.0, timeout_s)):
            if self._process.poll() is not None:
                raise WorkerCrashed(self._death_note())
            if timeout_s is not None:
                timeout_s -= 1.0
                if timeout_s <= 0:
                    raise WorkerCrashed(f"the {self.backend_name} worker did not answer in time")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None

    def _death_note(self) -> str:
        assert self._process is not None
        tail = self.log_tail()
        return f"the {self.backend_name} worker died (exit code {self._process.returncode})" + (
            f": {tail}" if tail else ""
        )

    def measure(self, key: str, plan: TimingPlan) -> Timing:
        """Time one target (a block key or an `arch:` key); BlockFailed when it cannot run,
        WorkerCrashed when the worker died."""
        self._send(("measure", key, plan))
        status, payload = self._receive()
        if status == "failed":
            raise BlockFailed(payload)
        return payload

    def forget(self, keys: list[str]) -> None:
        """Free the prepared blocks (models, sessions) the worker holds for these keys."""
        self._send(("forget", keys))
        self._receive()

    def _send(self, message: tuple[Any, ...]) -> None:
        """Send to the worker; one that died since the last answer is reported as a crash, not a broken pipe."""
        assert self._conn is not None and self._process is not None
        try:
            self._conn.send(message)
        except OSError:
            raise self._gone() from None

    def _gone(self) -> WorkerCrashed:
        """The crash of a worker whose pipe closed, once its process has ended (with its exit code)."""
        assert self._process is not None
        self._process.wait(timeout=10)
        return WorkerCrashed(self._death_note())

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):  # the worker may be gone already
                self._conn.send(("stop",))
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerPool:
    """Several workers of one backend, started in parallel (a context manager)."""

    def __init__(
        self,
        backend_name: str,
        threads: int,
        size: int,
        options: dict[str, Any] | None = None,
        deploy_env: DeployEnv | None = None,
        preloaded: bool = False,
    ) -> None:
        self.workers = [Worker(backend_name, threads, options, deploy_env, preloaded) for _ in range(size)]

    def __enter__(self) -> WorkerPool:
        try:
            for worker in self.workers:
                worker.launch()
            for worker in self.workers:
                worker.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()
