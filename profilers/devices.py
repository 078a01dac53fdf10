"""The device registry: a device name -> what it is, which backends it has, how to describe it,
and which workers measure on it.

`cpu` is this host; `cuda` / `cuda:N` a GPU of this host; any other name an Android phone.
"""

from __future__ import annotations

import os
import re
import socket
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from latency.vocab.blocks import QUANTIZED_DTYPES
from latency.vocab.conditions import Conditions, is_device_name
from latency.vocab.deploy_env import DeployEnv
from profilers.android import Adb, AndroidWorker, choose_phone, export_pte, read_phone, thermal
from profilers.backends import backend_class
from profilers.backends.cuda import nvidia_smi
from profilers.errors import ProfilerError
from profilers.host import host_environment, host_fingerprint, host_identity
from profilers.worker import WorkerPool

QUANTIZED_BACKENDS = ("executorch",)  # the backends that lower a quantized network (int8)


@dataclass(frozen=True)
class Device:
    """A place blocks run: its table name, kind and the backends it offers."""

    name: str
    kind: str
    backends: tuple[str, ...]
    default_backend: str
    local: bool = True  # measurable from this process now (missing blocks are measured, not predicted)
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    def fingerprint(self) -> dict[str, Any]:
        return host_fingerprint()

    def unit(self) -> str:
        """The physical unit measured (one job at a time on each, whatever number of farm workers point at it):
        this host's CPU, one GPU of it, one phone."""
        return f"{socket.gethostname()}/{self.name}"

    def identity(self) -> dict[str, Any]:
        return host_identity()

    def environment(self) -> dict[str, Any]:
        return host_environment()

    def check_backend(self, backend: str) -> None:
        if backend not in self.backends:
            raise ProfilerError(
                f"Device '{self.name}' has no backend '{backend}'; its backends: {', '.join(self.backends)}.",
                exit_code=2,
            )

    def max_threads(self) -> int | None:
        """The most runtime threads that make sense here: the host's cores (None: unknown until reached)."""
        return os.cpu_count()

    def check_threads(self, threads: int) -> None:
        limit = self.max_threads()
        if threads < 1:
            raise ProfilerError(f"--threads must be at least 1, not {threads}.", exit_code=2)
        if limit is not None and threads > limit:
            raise ProfilerError(
                f"--threads {threads} does not fit {self.name}: it has {limit} cores; use 1 to {limit}.", exit_code=2
            )

    def implementation(self, backend: str) -> tuple[str, dict[str, Any]]:
        """The registered backend implementation that runs `backend` here, and its options."""
        return backend, dict(self.options)

    @property
    def host_process(self) -> bool:
        """Whether networks run in a process on this host, whose environment a deployment sets."""
        return True

    def workers(
        self,
        backend: str,
        threads: int,
        launches: int,
        deploy_env: DeployEnv | None = None,
        preloaded: bool = False,
    ) -> AbstractContextManager[Any]:
        """A context manager giving the workers (one per independent launch) to measure with; tuned for
        stable block numbers, or set up as `deploy_env` runs networks; `preloaded`: forked from a zygote."""
        implementation, options = self.implementation(backend)
        return WorkerPool(implementation, threads, launches, options, deploy_env, preloaded)


@dataclass(frozen=True)
class CudaDevice(Device):
    """A GPU of this host. Backend `torch` replays a CUDA graph per block, `torch-eager` launches."""

    index: int = 0

    def implementation(self, backend: str) -> tuple[str, dict[str, Any]]:
        return "torch-cuda", {"index": self.index, "graph": backend == "torch"}

    def _properties(self) -> dict[str, Any]:
        import torch

        props = torch.cuda.get_device_properties(self.index)
        return {
            "gpu": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
        }

    def fingerprint(self) -> dict[str, Any]:
        import torch

        smi = nvidia_smi(self.index)
        return {
            **self.identity(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver": smi.get("driver_version"),
            "max_sm_clock_mhz": smi.get("clocks.max.sm"),
            "host": host_fingerprint(),
        }

    def identity(self) -> dict[str, Any]:
        return self._properties()

    def environment(self) -> dict[str, Any]:
        return {**host_environment(), **nvidia_smi(self.index)}


@dataclass(frozen=True)
class AndroidDevice(Device):
    """A phone over adb, measured with ExecuTorch (XNNPACK) through the user's runner binary.

    Nothing touches adb until the phone is needed: estimating from an imported table works offline.
    """

    serial: str | None = None
    runner: str | None = None

    def max_threads(self) -> int | None:
        return None  # the phone's cores are known once adb reaches it; its runner caps threads itself

    def implementation(self, backend: str) -> tuple[str, dict[str, Any]]:
        return "executorch", {}  # blocks are exported on this host with ExecuTorch

    @cached_property
    def _connection(self) -> tuple[Any, Any]:
        adb = Adb()
        phone = choose_phone(adb, self.name, self.serial)
        adb.serial = phone.serial
        return adb, read_phone(adb, phone)

    def fingerprint(self) -> dict[str, Any]:
        return self._connection[1].to_dict()

    def identity(self) -> dict[str, Any]:
        return self._connection[1].identity()

    def environment(self) -> dict[str, Any]:
        adb, phone = self._connection
        return {"serial": phone.serial, **thermal(adb)}  # units of one model share a table: which one ran it

    def unit(self) -> str:
        return self._connection[1].serial

    @property
    def host_process(self) -> bool:
        return False  # the runner runs on the phone, as the runtime runs there by default

    def workers(
        self,
        backend: str,
        threads: int,
        launches: int,
        deploy_env: DeployEnv | None = None,
        preloaded: bool = False,
    ) -> AbstractContextManager[Any]:
        from pathlib import Path

        adb, phone = self._connection
        runner = self.runner or os.environ.get("LUT_ANDROID_RUNNER")
        if not runner:
            raise ProfilerError(
                "No ExecuTorch runner for the phone: build executor_runner for arm64 (see the README, 'Android "
                "phones') and pass --runner PATH or set LUT_ANDROID_RUNNER."
            )
        if not Path(runner).is_file():
            raise ProfilerError(f"The runner {runner} does not exist.")
        return AndroidWorker(
            adb, phone, Path(runner), threads, export_pte, backend_class("executorch").installed_version()
        )


HOST_CPU = Device(name="cpu", kind="cpu", backends=("torch", "onnxruntime", "executorch"), default_backend="torch")
CUDA_BACKENDS = ("torch", "torch-eager")  # torch: CUDA-graph replay (the default); torch-eager: kernel by kernel
PHONE_BACKENDS = ("executorch",)
# Each kind of device with the backends it offers, the first its default (what `--backend` help lists).
DEVICE_BACKENDS = {"cpu": HOST_CPU.backends, "cuda[:N]": CUDA_BACKENDS, "a phone": PHONE_BACKENDS}
_CUDA = re.compile(r"cuda(?::(\d+))?")


def _cuda_device(name: str, index: int) -> CudaDevice:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        raise ProfilerError("Device 'cuda' needs PyTorch.", exit_code=2) from None
    if not torch.cuda.is_available():
        build = "a CPU-only PyTorch build" if torch.version.cuda is None else "no visible CUDA GPU"
        raise ProfilerError(f"Device '{name}' is not available: this machine has {build}.")
    count = torch.cuda.device_count()
    if index >= count:
        raise ProfilerError(f"Device '{name}' is not available: this machine has {count} CUDA GPU(s).")
    return CudaDevice(name=name, kind="cuda", backends=CUDA_BACKENDS, default_backend=CUDA_BACKENDS[0], index=index)


def check_device_name(name: str) -> None:
    """A name `--device` takes, else one sentence (a device that is not attached here may still be named)."""
    if not is_device_name(name):
        raise ProfilerError(f"'{name}' is not a device name: use cpu, cuda[:N], or a phone's name.", exit_code=2)


def backend_of(conditions: Conditions) -> str:
    """The backend `conditions` name, else the device's default: the one rule for a missing backend, whether
    a command measures, queues or estimates (`--backend` names another)."""
    return conditions.backend or resolve_device(conditions.device).default_backend


def with_backend(conditions: Conditions) -> Conditions:
    """`conditions` with their backend resolved (backend_of), and a dtype that backend cannot run refused."""
    resolved = conditions.with_backend(backend_of(conditions))
    check_dtype(backend_of(resolved), resolved.dtype)
    return resolved


def check_dtype(backend: str, dtype: str) -> None:
    """Refuse a quantized dtype on a backend that does not lower quantized networks, naming the one that does."""
    if dtype in QUANTIZED_DTYPES and backend not in QUANTIZED_BACKENDS:
        raise ProfilerError(
            f"{dtype} runs on the {', '.join(QUANTIZED_BACKENDS)} backend (XNNPACK's quantized kernels, as phones "
            f"run it), not on {backend}: add --backend {QUANTIZED_BACKENDS[0]}.",
            exit_code=2,
        )


def resolve_device(name: str, serial: str | None = None, runner: str | None = None) -> Device:
    """The device called `name`: `cpu` is this host, `cuda[:N]` one of its GPUs, and any other name
    an Android phone over adb (`pixel` picks the connected Pixel; `serial` picks one explicitly)."""
    if name == "cpu":
        return HOST_CPU
    if match := _CUDA.fullmatch(name):
        return _cuda_device(name, int(match.group(1) or 0))
    if name.startswith("cuda"):
        raise ProfilerError(f"'{name}' is not a GPU name: use cuda or cuda:N (N a number).", exit_code=2)
    check_device_name(name)
    return AndroidDevice(
        name=name,
        kind="android",
        backends=PHONE_BACKENDS,
        default_backend=PHONE_BACKENDS[0],
        local=False,
        serial=serial,
        runner=runner,
    )


def is_local(name: str) -> bool:
    """Whether blocks for `name` can be measured from here now (else they are predicted)."""
    try:
        return resolve_device(name).local
    except ProfilerError:
        return False  # a device known only from the table (an imported phone, say)
