"""A stand-in for ExecuTorch's executor_runner built for a phone: checks that the file is an
ExecuTorch program and logs like the real one (`Iteration i of N: X ms`, then the total).

The phone is what this replaces, so the times are the stand-in phone's own: a fixed cost plus one
proportional to the program's size (or $PHONE_PROGRAM_MS for every program), times the phone's
$PHONE_SPEED, with a small deterministic jitter; with $PHONE_SLEEP it is busy for that time. It
imports nothing heavy: the real runner is a native binary that starts in milliseconds, and one that
loaded torch for every call made the end-to-end test take half an hour on a slow CI machine. That the
exported programs run in ExecuTorch's runtime is tested on the host (tests/test_cli_profile.py, the
executorch backend).
$FAKE_RUNNER_CRASH makes it abort on models whose path contains that text.
"""

from __future__ import annotations

import math
import os
import sys
import time
import zlib
from pathlib import Path

PROGRAM_ID = b"ET12"  # the flatbuffer file identifier of an ExecuTorch program, bytes 4..8


def flag(argv: list[str], name: str, default: str) -> str:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return default


def log(level: str, message: str) -> None:
    print(f"{level} 00:00:{time.monotonic() % 60:09.6f} executorch:executor_runner.cpp:512] {message}", flush=True)


def main(argv: list[str]) -> int:
    model = flag(argv, "model_path", "model.pte")
    executions = int(flag(argv, "num_executions", "1"))
    crash = os.environ.get("FAKE_RUNNER_CRASH")
    if crash and crash in model:
        log("E", "Execution failed: 0x12")
        log("F", "Aborted")
        os.abort()
    try:
        program = Path(model).read_bytes()
    except OSError as exc:
        log("E", f"Could not load model file {model}: {exc.strerror}")
        return 1
    if program[4:8] != PROGRAM_ID:
        log("E", f"{model} is not an ExecuTorch program (identifier {program[4:8]!r})")
        return 1
    program_ms = float(os.environ.get("PHONE_PROGRAM_MS") or 0.05 + len(program) / 20_000)
    base_ms = program_ms * float(os.environ.get("PHONE_SPEED") or 1.0)
    phase = zlib.crc32(model.encode()) % 97
    started = time.time()
    total = 0.0
    for i in range(executions):
        elapsed = base_ms * (1.0 + 0.01 * math.sin(phase + i))
        total += elapsed
        log("I", f"Iteration {i + 1} of {executions}: {elapsed:f} ms")
    if os.environ.get("PHONE_SLEEP"):
        time.sleep(total / 1e3)
    log("I", f"Model executed successfully {executions} time(s) in {total:f} ms.")
    if "PHONE_ROOT" in os.environ:  # what this phone ran and when, for the tests to compare with what lut stored
        root = Path(os.environ["PHONE_ROOT"])
        with open(root / "runs.log", "a") as runs:
            runs.write(f"{Path(model).name} {base_ms!r}\n")
        with open(root / "spans.log", "a") as spans:
            spans.write(f"{started!r} {time.time()!r} {Path(model).name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
