"""A stand-in for ExecuTorch's executor_runner built for a phone: runs the .pte on this host
through ExecuTorch's runtime and logs like the real one (`Iteration i of N: X ms`, then the
total). $FAKE_RUNNER_CRASH makes it abort on models whose path contains that text."""

from __future__ import annotations

import os
import sys
import time


def flag(argv: list[str], name: str, default: str) -> str:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return default


def log(message: str) -> None:
    print(f"I 00:00:{time.monotonic() % 60:09.6f} executorch:executor_runner.cpp:512] {message}", flush=True)


def main(argv: list[str]) -> int:
    # ExecuTorch's compiled module directly (torch first, as its wrapper requires): the real runner is
    # a native binary that starts in milliseconds, and the Python wrapper would add 3 s of imports.
    import torch
    from executorch.extension.pybindings import _C

    model = flag(argv, "model_path", "model.pte")
    executions = int(flag(argv, "num_executions", "1"))
    crash = os.environ.get("FAKE_RUNNER_CRASH")
    if crash and crash in model:
        print("E 00:00:00.000100 executorch:method.cpp:1010] Execution failed: 0x12", flush=True)
        print("F 00:00:00.000200 executorch:executor_runner.cpp:520] Aborted", flush=True)
        os.abort()
    torch.set_num_threads(1)
    module = _C._load_for_executorch(model)
    shape = tuple(module.method_meta("forward").input_tensor_meta(0).sizes())
    inputs = (torch.ones(shape),)  # the real runner feeds ones
    total = 0.0
    for i in range(executions):
        start = time.perf_counter()
        module.run_method("forward", inputs)
        elapsed = (time.perf_counter() - start) * 1e3
        total += elapsed
        log(f"Iteration {i + 1} of {executions}: {elapsed:f} ms")
    log(f"Model executed successfully {executions} time(s) in {total:f} ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
