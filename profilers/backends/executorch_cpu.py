"""ExecuTorch with the XNNPACK delegate on this host: the runtime Android phones use.

Each block is exported (torch.export, XNNPACK partitioner) to a `.pte` program and run through
ExecuTorch's Python runtime in its own worker process (its thread pool must not meet torch's).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from latency.vocab.blocks import QUANTIZED_DTYPES
from latency.vocab.paths import user_cache_dir
from profilers.backends.base import Backend, Runner
from profilers.backends.torch_cpu import built_module, seeded_input
from profilers.errors import BlockFailed, ProfilerError
from profilers.targets import Target, parse_target


def program_bytes(target: Target) -> bytes:
    """The target's `.pte` program, exported once per torch and ExecuTorch version and kept in the user's
    cache (`programs/`): exporting a whole network takes 20-30 s here, and every process of a run, every
    trial and every session needs the same program. Each program's SHA-256 lies beside it (`.sha256`): a
    program whose bytes do not match (damaged, or swapped for another) is exported again, never timed as
    the block. A cache that cannot be written is skipped."""
    path = program_path(target)
    digest_path = path.with_name(f"{path.name}.sha256")
    try:
        program = path.read_bytes()
        if digest_path.read_text().strip() == hashlib.sha256(program).hexdigest():
            return program
    except OSError:
        pass
    program = export_program(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for final, content in ((path, program), (digest_path, hashlib.sha256(program).hexdigest().encode())):
            partial = final.with_name(f"{final.name}.{os.getpid()}.tmp")
            partial.write_bytes(content)
            os.replace(partial, final)  # whole or absent: processes exporting at once each write their own
    except OSError:
        pass
    return program


def program_path(target: Target) -> Path:
    """Where the target's program is cached: named by the target and the versions that lower it."""
    from importlib.metadata import version

    identity = "|".join((target.key, version("torch"), version("executorch")))
    return user_cache_dir() / "programs" / f"{hashlib.sha256(identity.encode()).hexdigest()}.pte"


CALIBRATION_BATCHES = 4  # seeded inputs an int8 program's activation ranges are observed on


def export_program(target: Target) -> bytes:
    """The target lowered to an ExecuTorch program (XNNPACK delegate), as `.pte` bytes; an int8 target
    quantized first as a deployment quantizes it (quantize_program)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module, x = built_module(target), seeded_input(target)
    if target.dtype in QUANTIZED_DTYPES:
        module = quantize_program(module, x)
    exported = torch.export.export(module, (x,))
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    return program.buffer


def quantize_program(module: Any, x: Any) -> Any:
    """`module` quantized to int8 the documented PT2E way: XNNPACKQuantizer's symmetric config, weights per
    channel, activations calibrated on seeded inputs shaped like `x`."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(module, (x,)).module(), quantizer)
    generator = torch.Generator().manual_seed(0)
    for _ in range(CALIBRATION_BATCHES):
        prepared(torch.randn(x.shape, generator=generator, dtype=x.dtype))
    return convert_pt2e(prepared)


def program_lowering(target: Target) -> dict[str, Any]:
    """How the target's program was lowered (`outside_delegate`): read from the program once, seconds for a
    whole network, and kept beside it in the cache, valid while the program's digest is the one read."""
    path = program_path(target)
    kept = path.with_name(f"{path.name}.lowering.json")
    try:
        saved = json.loads(kept.read_text())
        if saved["sha256"] == path.with_name(f"{path.name}.sha256").read_text().strip():
            return saved["lowering"]
    except (OSError, ValueError, KeyError):
        pass
    program = program_bytes(target)
    lowering = {"outside_delegate": outside_delegate(program)}
    partial = kept.with_name(f"{kept.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps({"sha256": hashlib.sha256(program).hexdigest(), "lowering": lowering}))
        os.replace(partial, kept)
    except OSError:
        pass
    return lowering


def outside_delegate(program: bytes) -> dict[str, int]:
    """The operators a lowered program calls outside its delegates (XNNPACK), with how often: each runs on
    ExecuTorch's portable kernels, where a quantized network pays for what XNNPACK did not take. Read from
    the program itself, as the runtime will run it."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    counts: dict[str, int] = {}
    for plan in deserialize_pte_binary(program).program.execution_plan:
        for chain in plan.chains:
            for instruction in chain.instructions:
                call = instruction.instr_args
                if type(call).__name__ == "KernelCall":
                    name = plan.operators[call.op_index].name
                    counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


class ExecuTorchCPU(Backend):
    name = "executorch"
    extra = "executorch"
    distribution = "executorch"
    preload_modules = (
        "torch",
        "executorch.exir",
        "executorch.backends.xnnpack.partition.xnnpack_partitioner",
        "executorch.runtime",
        "latency.nn.layers",
        "latency.nn.fbnet",
    )

    @classmethod
    def check_available(cls) -> None:
        if importlib.util.find_spec("executorch") is None:
            raise ProfilerError(
                "The executorch backend needs ExecuTorch, which is not installed; install it with: "
                "pip install 'lut[executorch]' (executorch 1.5.1 works with torch 2.13.0)."
            )

    def setup(self) -> None:
        import torch
        from executorch.runtime import Runtime

        torch.set_num_threads(1)  # torch only exports here
        self._runtime = Runtime.get()
        self._reset_threads()

    def _reset_threads(self) -> None:
        """Fix the XNNPACK thread pool's size (ExecuTorch's default is a per-device heuristic)."""
        try:
            from executorch.extension.pybindings import portable_lib
        except ImportError:
            return
        reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
        if reset is not None:
            reset(self.threads)
            self._threads_set = True

    def prepare(self, target: Target) -> Runner:
        cached = program_path(target).exists()
        try:
            try:
                program = self._runtime.load_program(program_bytes(target))
            except Exception:
                if not cached:
                    raise
                program_path(target).unlink(missing_ok=True)  # a damaged cached program: export it again
                program = self._runtime.load_program(program_bytes(target))
        except Exception as exc:  # export and lowering raise many types
            raise BlockFailed(f"ExecuTorch export failed: {type(exc).__name__}: {exc}") from exc
        method = program.load_method("forward")
        inputs = [seeded_input(target)]

        def run() -> object:
            # The method points into the program's memory: the closure keeps the program alive too.
            return program, method.execute(inputs)

        return run

    def lowering(self, key: str) -> dict[str, Any]:
        return program_lowering(parse_target(key))

    def environment(self) -> dict[str, Any]:
        return {"xnnpack_threads": self.threads if getattr(self, "_threads_set", False) else "runtime default"}

    def protocol_details(self) -> dict[str, Any]:
        return {"delegate": "XnnpackPartitioner", "runtime": "executorch.runtime (Python)"}
