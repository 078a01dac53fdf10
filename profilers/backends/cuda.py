"""PyTorch on a CUDA GPU: CUDA events on the GPU timeline, cuDNN autotuning inside the warm-up,
CUDA-graph replay by default (one graph per block or network), eager launches as an option."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

from profilers.backends.base import Backend, Runner
from profilers.backends.torch_cpu import built_module, seeded_input
from profilers.stats import median_ci_halfwidth
from profilers.targets import Target

CHUNK = 25  # calls queued between two synchronisations


def nvidia_smi(index: int) -> dict[str, str]:
    """Name, driver, clocks, temperature and power of GPU `index` (empty when nvidia-smi is absent)."""
    fields = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw,pstate"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(zip(fields.split(","), (v.strip() for v in out.split(",")), strict=False))


class TorchCUDA(Backend):
    name = "torch-cuda"
    distribution = "torch"
    preload_modules = ("torch", "latency.nn.layers", "latency.nn.fbnet")  # CUDA starts in the worker
    host_heap = False  # blocks live in device memory

    @property
    def index(self) -> int:
        return int(self.options.get("index", 0))

    @property
    def graph(self) -> bool:
        return bool(self.options.get("graph", True))

    def setup(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU is visible to this process")
        torch.cuda.set_device(self.index)
        torch.backends.cudnn.benchmark = True  # autotuned during the warm-up, not the timing
        torch.set_grad_enabled(False)
        self._torch = torch

    def prepare(self, target: Target) -> Runner:
        torch = self._torch
        device = f"cuda:{self.index}"
        module, x = built_module(target, device), seeded_input(target, device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # cuDNN picks its kernels here, before any capture
                module(x)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        if not self.graph:

            def eager() -> object:
                with torch.inference_mode():
                    return module(x)

            return eager
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            output = module(x)
        buffers = (module, x, output)  # the graph replays on these: keep them alive with it

        def replay() -> object:
            graph.replay()
            return buffers

        return replay

    def warm_up(self, run: Runner, runs: int, seconds: float, before_call: Callable[[], object] | None = None) -> int:
        done = super().warm_up(run, runs, seconds)
        self._torch.cuda.synchronize()
        return done

    def time_calls(
        self,
        run: Runner,
        min_runs: int,
        min_time_s: float,
        max_time_s: float,
        ci_target: float,
        before_call: Callable[[], object] | None = None,
    ) -> list[float]:
        """GPU time of each call from CUDA events, queued in chunks between synchronisations (device
        memory: `before_call`, a host-heap step, does not apply)."""
        torch = self._torch
        samples: list[float] = []
        started = time.perf_counter()  # budgets are wall time, as on the CPU
        while True:
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(CHUNK)
            ]
            for start, end in events:
                start.record()
                run()
                end.record()
            torch.cuda.synchronize()
            samples.extend(start.elapsed_time(end) * 1e3 for start, end in events)  # ms -> us
            elapsed_s = time.perf_counter() - started
            enough = len(samples) >= min_runs and elapsed_s >= min_time_s
            if enough and (elapsed_s >= max_time_s or median_ci_halfwidth(samples) <= ci_target):
                return samples

    def environment(self) -> dict[str, Any]:
        torch = self._torch
        props = torch.cuda.get_device_properties(self.index)
        return {
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            **nvidia_smi(self.index),
        }

    def protocol_details(self) -> dict[str, Any]:
        return {"cuda_graph": self.graph, "cudnn_benchmark": True, "timer": "cuda events", "l2_flush": False}
