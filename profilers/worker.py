"""Each backend runs in its own worker process; the parent talks to it over a pipe.

One process per backend keeps runtimes' thread pools apart (an XNNPACK pool beside a torch block
made the torch block 50x slower here) and lets a crashing runtime take down only its worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import IO, Any

from profilers.backends import backend_class
from profilers.errors import BlockFailed, ProfilerError
from profilers.targets import parse_target

READY_TIMEOUT_S = 180.0
# glibc hands large buffers back to the kernel after each call by default (mmap/munmap, heap trim),
# so every run of a block with big activations page-faults afresh: measured here, that made
# the same block 1.3-2x slower at random between passes. Keep freed memory in the heap instead
# (32 MiB is glibc's largest mmap threshold).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
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


@dataclass(frozen=True)
class Timing:
    samples_us: list[float]
    warmup_runs: int


def _serve(conn: Connection, backend_name: str, threads: int, options: dict[str, Any]) -> None:
    backend = backend_class(backend_name)(threads, options)
    try:
        backend.setup()
        conn.send(
            (
                "ready",
                {
                    "backend_version": backend.version(),
                    "environment": {**backend.environment(), "malloc": {k: os.environ.get(k) for k in MALLOC_ENV}},
                    "protocol": backend.protocol_details(),
                    "pid": os.getpid(),
                },
            )
        )
    except Exception as exc:
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    runners: dict[str, Any] = {}
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
            conn.send(("ok", None))
            continue
        _, key, plan = message
        try:
            if key not in runners:
                runners[key] = backend.prepare(parse_target(key))
            run = runners[key]
            warmups = backend.warm_up(run, plan.warmup_runs, plan.warmup_s)
            samples = backend.time_calls(run, plan.min_runs, plan.min_time_s, plan.max_time_s, plan.ci_target)
            conn.send(("ok", Timing(samples, warmups)))
        except BlockFailed as exc:
            conn.send(("failed", str(exc)))
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            conn.send(("failed", f"{type(exc).__name__}: {exc} (at {os.path.basename(last.filename)}:{last.lineno})"))


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
    """Parent-side handle of one backend worker process (a context manager)."""

    def __init__(self, backend_name: str, threads: int = 1, options: dict[str, Any] | None = None) -> None:
        self.backend_name = backend_name
        self.threads = threads
        self.options = dict(options or {})
        self.info: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Worker:
        return self.launch().wait_ready()

    def launch(self) -> Worker:
        """Start the process without waiting for it (start several, then `wait_ready` each)."""
        backend_class(self.backend_name).check_available()
        # A fresh interpreter (not fork, not multiprocessing's spawn, which re-imports __main__):
        # no runtime thread pools inherited, and any caller's script works.
        parent, child = socket.socketpair()
        env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        args = [str(child.fileno()), self.backend_name, str(self.threads), json.dumps(self.options)]
        self._process = subprocess.Popen(
            [sys.executable, "-c", _ENTRY, *args],
            pass_fds=[child.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        child.close()
        self._conn = Connection(parent.detach())
        return self

    def wait_ready(self) -> Worker:
        status, payload = self._receive(READY_TIMEOUT_S)
        if status != "ready":
            self.stop()
            raise ProfilerError(f"The {self.backend_name} backend could not start: {payload}.")
        self.info = payload
        return self

    def log_tail(self, lines: int = 3) -> str:
        """The last lines the worker printed (for crash reports)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

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
            self._process.wait(timeout=10)
            raise WorkerCrashed(self._death_note()) from None

    def _death_note(self) -> str:
        assert self._process is not None
        tail = self.log_tail()
        return f"the {self.backend_name} worker died (exit code {self._process.returncode})" + (
            f": {tail}" if tail else ""
        )

    def measure(self, key: str, plan: TimingPlan) -> Timing:
        """Time one target (a block key or an `arch:` key); BlockFailed when it cannot run,
        WorkerCrashed when the worker died."""
        assert self._conn is not None
        self._conn.send(("measure", key, plan))
        status, payload = self._receive()
        if status == "failed":
            raise BlockFailed(payload)
        return payload

    def forget(self, keys: list[str]) -> None:
        """Free the prepared blocks (models, sessions) the worker holds for these keys."""
        assert self._conn is not None
        self._conn.send(("forget", keys))
        self._receive()

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

    def __init__(self, backend_name: str, threads: int, size: int, options: dict[str, Any] | None = None) -> None:
        self.workers = [Worker(backend_name, threads, options) for _ in range(size)]

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
