"""Backend registry: name -> class. Backend modules import their runtime lazily."""

from __future__ import annotations

from importlib import import_module

from profilers.backends.base import Backend
from profilers.errors import ProfilerError

# name -> "module:Class"; imported on first use.
BACKENDS: dict[str, str] = {
    "torch": "profilers.backends.torch_cpu:TorchCPU",
    "onnxruntime": "profilers.backends.onnxruntime_cpu:OnnxRuntimeCPU",
    "torch-cuda": "profilers.backends.cuda:TorchCUDA",
    "executorch": "profilers.backends.executorch_cpu:ExecuTorchCPU",
}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ProfilerError(f"Unknown backend '{name}'; known backends: {', '.join(BACKENDS)}.", exit_code=2)
    module, cls = BACKENDS[name].split(":")
    return getattr(import_module(module), cls)
