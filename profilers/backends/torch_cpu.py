"""PyTorch eager on the host CPU."""

from __future__ import annotations

from typing import Any

from profilers.backends.base import Backend, PartsRunner, Runner
from profilers.targets import ArchTarget, Target

# int8 blocks are built in float32 and quantized when exported (profilers.backends.executorch_cpu)
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "float32"}


def input_shape(target: Target) -> tuple[int, ...]:
    if isinstance(target, ArchTarget):
        return (target.batch, target.arch.in_channels, target.arch.resolution, target.arch.resolution)
    return target.input_shape


def seeded_input(target: Target, device: str = "cpu") -> Any:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(input_shape(target), generator=gen)
    return x.to(device=device, dtype=getattr(torch, TORCH_DTYPES[target.dtype]))


def built_module(target: Target, device: str = "cpu") -> Any:
    """The block (or whole network) in eval mode with seeded weights, on `device`, in its dtype."""
    import torch  # here and below: torch and its modules load only in the worker that builds a block

    torch.manual_seed(0)
    if isinstance(target, ArchTarget):
        from latency.nn.fbnet import FBNetV2

        module = FBNetV2(target.arch).eval()
    else:
        from latency.nn.layers import build_block

        module = build_block(target).eval()
    return module.to(device=device, dtype=getattr(torch, TORCH_DTYPES[target.dtype]))


class TorchCPU(Backend):
    name = "torch"
    distribution = "torch"
    preload_modules = ("torch", "latency.nn.layers", "latency.nn.fbnet")
    times_in_context = True

    def setup(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        torch.set_num_interop_threads(1)
        torch.set_grad_enabled(False)

    def prepare(self, target: Target) -> Runner:
        import torch

        module, x = built_module(target), seeded_input(target)

        def run() -> object:
            with torch.inference_mode():
                return module(x)

        return run

    def prepare_parts(self, target: ArchTarget) -> PartsRunner:
        import time

        import torch

        network, x = built_module(target), seeded_input(target)
        *features, classifier = network.blocks
        clock = time.perf_counter_ns

        # FBNetV2.forward with the clock read between blocks (dropout is the identity in eval mode); the
        # context manager's entry and exit fall to the first and last block, so the parts sum to a call.
        def run() -> list[int]:
            stamps = [clock()]
            with torch.inference_mode():
                y = x
                for block in features:
                    y = block(y)
                    stamps.append(clock())
                classifier(y)
            stamps.append(clock())
            return stamps

        return run

    def environment(self) -> dict[str, Any]:
        import torch

        return {"torch_threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.is_available()}
