"""Workers forked from a process that imported the runtime once (a zygote, as Android starts its apps).

A fresh interpreter imports torch for every worker: a second on a workstation, but a minute or more on
a loaded 2-core machine, where a smoke test that starts dozens of workers spent most of its time there.
A zygote is started once per runtime and environment, imports the runtime and nothing else (no thread
pool, no tensor), and forks a worker on request; the worker then runs exactly as a fresh one does
(profilers.worker.main). Forked workers share the zygote's memory layout, which the standard protocol's
independent launches are there to vary, so only protocols that ask for it (`quick`) use zygotes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO, Any

from profilers.backends import backend_class
from profilers.errors import ProfilerError

READY_TIMEOUT_S = 600.0  # importing torch alone took 60-110 s here on a loaded 2-core machine
# The zygote's entry hands it the worker's main (the worker imports this module, not the other way round).
_ENTRY = "import sys; from profilers.worker import main; from profilers.zygote import serve; serve(sys.argv[1:], main)"
_MESSAGE_BYTES = 1 << 20
# Variables read while a process starts (the C library's allocator, the dynamic loader, OpenMP, Python's
# own): a zygote serves one set of them. The rest of a worker's environment is set after the fork, so that
# a variable that changes between calls (a test's name, a poll interval) needs no new zygote. The thread
# counts are among the rest: every backend sets its threads through its runtime's own call in the worker
# (torch.set_num_threads sets OpenMP's and MKL's), which overrides what OpenMP read at start-up.
_THREAD_COUNTS = {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}
_STARTUP = re.compile(r"MALLOC_\w+|GLIBC_TUNABLES|LD_\w+|OMP_\w+|GOMP_\w+|KMP_\w+|MKL_\w+|PYTHON\w*")


def start_python(code: str, fd: int, args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """A fresh interpreter running `code` with `fd` passed (its first argument) and output sent to `log`."""
    return subprocess.Popen(
        [sys.executable, "-c", code, str(fd), *args],
        pass_fds=[fd],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        # Ctrl-C is lut's to handle (store what is final, or finish a farm job), not the workers' to die of
        start_new_session=True,
    )


def log_tail(log: IO[bytes], lines: int = 3) -> str:
    """The last lines a process printed to `log`, joined on one line (for crash reports)."""
    log.seek(0)
    text = log.read().decode(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


class ForkedProcess:
    """A worker forked by a zygote; the subset of subprocess.Popen that Worker uses. Its exit code comes
    from the zygote, whose child it is."""

    def __init__(self, pid: int, zygote: Zygote) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._zygote = zygote

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)


class Zygote:
    """Parent-side handle of one zygote process: the runtime of `backend_name`, imported in `env`."""

    def __init__(self, backend_name: str, env: dict[str, str]) -> None:
        self.backend_name = backend_name
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self._process = start_python(_ENTRY, theirs.fileno(), [backend_name], env, self._log)
        theirs.close()
        self._socket = ours
        self._lock = threading.Lock()
        self._socket.settimeout(READY_TIMEOUT_S)
        try:
            ready = self._socket.recv(_MESSAGE_BYTES)
        except TimeoutError:
            ready = b""
        self._socket.settimeout(None)
        if not ready:
            printed = log_tail(self._log) or "no output"  # read before close() closes the log
            self.close()
            raise ProfilerError(f"The {backend_name} runtime could not be loaded to start workers: {printed}")

    def _ask(self, request: list[Any], fds: list[int] | None = None) -> Any:
        with self._lock:
            socket.send_fds(self._socket, [json.dumps(request).encode()], fds or [])
            reply = self._socket.recv(_MESSAGE_BYTES)
        if not reply:
            raise OSError("the zygote is gone")
        return json.loads(reply)

    def fork(self, conn_fd: int, log_fd: int, args: list[str], env: dict[str, str]) -> ForkedProcess:
        """A worker running profilers.worker.main(FD, *args) on `conn_fd` in `env`, printing to `log_fd`."""
        return ForkedProcess(self._ask(["fork", [args, env]], [conn_fd, log_fd]), self)

    def returncode(self, pid: int) -> int | None:
        return self._ask(["status", pid])

    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        self._socket.close()  # the zygote reads EOF and exits; its workers live on until their parents stop
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


# (backend, environment) -> its running zygote; one per process that starts workers.
_ZYGOTES: dict[tuple[str, tuple[tuple[str, str], ...]], Zygote] = {}
_ZYGOTES_LOCK = threading.Lock()


def zygote_for(backend_name: str, env: dict[str, str]) -> Zygote:
    """The running zygote for this runtime and the startup variables of `env`, started on first use."""
    startup = sorted((k, v) for k, v in env.items() if _STARTUP.fullmatch(k) and k not in _THREAD_COUNTS)
    key = (backend_name, tuple(startup))
    with _ZYGOTES_LOCK:
        zygote = _ZYGOTES.get(key)
        if zygote is None or not zygote.alive():
            if not _ZYGOTES:
                atexit.register(close_zygotes)
            zygote = _ZYGOTES[key] = Zygote(backend_name, env)
        return zygote


def close_zygotes() -> None:
    with _ZYGOTES_LOCK:
        for zygote in _ZYGOTES.values():
            zygote.close()
        _ZYGOTES.clear()


def serve(argv: list[str], worker_main: Callable[[list[str]], None]) -> None:
    """Entry point of the zygote process; argv: FD BACKEND. Imports the runtime, then forks on request, each
    child running `worker_main` (profilers.worker.main)."""
    sock = socket.socket(fileno=int(argv[0]))
    backend_class(argv[1]).preload()
    sock.send(json.dumps({"pid": os.getpid()}).encode())
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, _MESSAGE_BYTES, 2)
        except OSError:
            return
        if not message:  # the parent is gone
            return
        command, argument = json.loads(message)
        if command == "fork":
            pid = os.fork()
            if pid == 0:
                _run_worker(sock, fds, argument, worker_main)
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps(pid).encode())
        elif command == "status":
            try:
                done, status = os.waitpid(argument, os.WNOHANG)
            except ChildProcessError:  # reaped before
                done, status = argument, 0
            sock.send(json.dumps(os.waitstatus_to_exitcode(status) if done else None).encode())


def _run_worker(sock: socket.socket, fds: list[int], request: list[Any], worker_main: Any) -> None:
    """In the forked child: become the worker, then exit without running the zygote's cleanup."""
    code = 0
    try:
        sock.close()
        args, env = request
        os.environ.clear()
        os.environ.update(env)
        conn_fd, log_fd = fds
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        worker_main([str(conn_fd), *args])
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
