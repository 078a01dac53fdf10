"""The deployment environment: how the user's own process runs a network, which end-to-end times refer to.

Block workers tune their process for stable numbers (glibc keeps freed memory in the heap, see
profilers/worker.py); a user's process does not, and runs whole networks measurably slower than the
tuned workers (docs/design.md). So an end-to-end time used as truth (calibration, validation, `lut time`)
is taken in a process set up as the deployment runs it, and every run and calibration
records which deployment that was: `default` (the runtime's defaults: a plain process), a preset, or
explicit variables such as `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from latency.vocab.errors import LutError

# What block workers set so that freed memory stays in the heap (32 MiB is glibc's largest mmap threshold).
TUNED_MALLOC: tuple[tuple[str, str], ...] = (
    ("MALLOC_MMAP_THRESHOLD_", str(32 << 20)),
    ("MALLOC_TRIM_THRESHOLD_", str(1 << 30)),
)
PRESETS: dict[str, tuple[tuple[str, str], ...]] = {"default": (), "tuned-malloc": TUNED_MALLOC}
# Variables that tune a process rather than describe the user's machine: a deployment starts without them
# (lut's own workers or the caller's shell may have set them) and sets only its own.
_TUNING = re.compile(r"MALLOC_\w+|GLIBC_TUNABLES|OMP_NUM_THREADS|MKL_NUM_THREADS|LD_PRELOAD")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, order=True)
class DeployEnv:
    """Environment variables set on top of a plain process; none is the runtime's default."""

    variables: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The canonical text stored with runs and fits: a preset's name, else `VAR=VALUE,...`."""
        for preset, variables in PRESETS.items():
            if variables == self.variables:
                return preset
        return ",".join(f"{k}={v}" for k, v in self.variables)

    @classmethod
    def parse(cls, text: str) -> DeployEnv:
        """`default`, a preset's name, or comma-separated `VAR=VALUE` pairs."""
        text = text.strip()
        if text in PRESETS:
            return cls(PRESETS[text])
        pairs: dict[str, str] = {}
        for item in text.split(","):
            name, sep, value = item.strip().partition("=")
            if not sep or not _VARIABLE.fullmatch(name) or "\0" in value:
                raise LutError(
                    f"'{text}' is not a deployment environment: use {', '.join(PRESETS)}, or VAR=VALUE pairs "
                    "separated by commas (e.g. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2).",
                    exit_code=2,
                )
            pairs[name] = value
        return cls(tuple(sorted(pairs.items())))

    def process_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment of a process that runs this deployment, from the caller's."""
        return {**{k: v for k, v in base.items() if not _TUNING.fullmatch(k)}, **dict(self.variables)}


DEFAULT = DeployEnv()
