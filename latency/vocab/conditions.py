"""The measurement conditions: everything a latency depends on besides the network itself.

Every row of the table, every end-to-end run and every fit is stored under one set of conditions, and
every job that measures, estimates or fits works under one; this is the value they pass around.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

# A device's name as `--device` takes it (cpu, cuda:0, pixel, galaxy-s24): what a table row, a job and
# a command may name; a name outside it could never be asked for again.
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
MAX_DEVICE_CHARS = 128


# A backend's name, its version and a device's kind (torch, 2.13.0+cpu, android): what rows may say.
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]*")
MAX_LABEL_CHARS = 128


def is_device_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_DEVICE_CHARS and DEVICE_NAME.fullmatch(name) is not None


def is_label(text: object) -> bool:
    return isinstance(text, str) and len(text) <= MAX_LABEL_CHARS and LABEL.fullmatch(text) is not None


@dataclass(frozen=True)
class Conditions:
    """Device, backend, threads, batch and dtype. `backend=None` leaves the backend to be resolved: the
    device's default (profilers.devices.backend_of) when measuring, queueing or estimating, any in a query."""

    device: str = "cpu"
    backend: str | None = None
    threads: int = 1
    batch: int = 1
    dtype: str = "fp32"

    @classmethod
    def of(cls, conditions: Conditions | str) -> Conditions:
        """A device name stands for that device under the default conditions."""
        return cls(device=conditions) if isinstance(conditions, str) else conditions

    def with_backend(self, backend: str) -> Conditions:
        return replace(self, backend=backend)

    def columns(self) -> dict[str, Any]:
        """The five as the table's columns (a record's keyword arguments); the backend must be resolved."""
        if self.backend is None:
            raise ValueError("conditions without a backend cannot be stored; resolve it first")
        return {
            "device": self.device,
            "backend": self.backend,
            "threads": self.threads,
            "batch": self.batch,
            "dtype": self.dtype,
        }
