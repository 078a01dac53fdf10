"""The device registry: a device name -> what it is, which backends it has, how to describe it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from profilers.errors import ProfilerError
from profilers.host import host_environment, host_fingerprint, host_identity


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


HOST_CPU = Device(name="cpu", kind="cpu", backends=("torch", "onnxruntime"), default_backend="torch")


def resolve_device(name: str) -> Device:
    """The device called `name`: `cpu` is this host."""
    if name == "cpu":
        return HOST_CPU
    raise ProfilerError(f"Unknown device '{name}'; known devices: cpu.", exit_code=2)


def is_local(name: str) -> bool:
    """Whether blocks for `name` can be measured from here now (else they are predicted)."""
    try:
        return resolve_device(name).local
    except ProfilerError:
        return False  # a device known only from the table (an imported phone, say)
