"""ONNX Runtime, CPU execution provider: each block exported to ONNX, threads set explicitly."""

from __future__ import annotations

import importlib.util
import io
import warnings
from typing import Any

from profilers.backends.base import Backend, Runner
from profilers.backends.torch_cpu import built_module, seeded_input
from profilers.errors import BlockFailed, ProfilerError
from profilers.targets import Target

OPSET = 17


def export_onnx(target: Target) -> bytes:
    """The block (or network) as an ONNX model (TorchScript exporter: 10x faster than dynamo)."""
    import torch

    module, x = built_module(target), seeded_input(target)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=OPSET, input_names=["x"])
    return buffer.getvalue()


class OnnxRuntimeCPU(Backend):
    name = "onnxruntime"
    extra = "onnx"
    distribution = "onnxruntime"
    preload_modules = ("torch", "torch.onnx", "onnx", "onnxruntime", "latency.nn.layers", "latency.nn.fbnet")

    @classmethod
    def check_available(cls) -> None:
        missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise ProfilerError(
                f"The onnxruntime backend needs {' and '.join(missing)}, which are not installed; "
                "install them with: pip install 'lut[onnx]'."
            )

    def setup(self) -> None:
        import onnxruntime
        import torch

        torch.set_num_threads(1)  # torch only exports here; ORT does the timed work
        self._ort = onnxruntime

    def _session_options(self) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if self.threads == 1 else "1")
        return options

    def prepare(self, target: Target) -> Runner:
        try:
            model = export_onnx(target)
        except Exception as exc:  # the exporter raises many types
            raise BlockFailed(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
        session = self._ort.InferenceSession(model, self._session_options(), providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: seeded_input(target).numpy()}

        def run() -> object:
            return session.run(None, feeds)

        return run

    def protocol_details(self) -> dict[str, Any]:
        return {
            "onnx_opset": OPSET,
            "execution_provider": "CPUExecutionProvider",
            "graph_optimization": "all",
            "allow_spinning": self.threads > 1,
        }
