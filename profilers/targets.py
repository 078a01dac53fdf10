"""What a worker can time: one block (its key) or a whole architecture (an `arch:` key)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from latency.vocab.arch import Arch
from latency.vocab.blocks import BlockSpec

ARCH_PREFIX = "arch:"


@dataclass(frozen=True)
class ArchTarget:
    """A whole network at a batch size and dtype, timed end to end."""

    arch: Arch
    batch: int = 1
    dtype: str = "fp32"

    @property
    def name(self) -> str:
        return self.arch.name

    @property
    def arch_json(self) -> str:
        return json.dumps(self.arch.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        return f"{ARCH_PREFIX}{self.batch}:{self.dtype}:{self.arch_json}"


Target = BlockSpec | ArchTarget


def parse_target(key: str) -> Target:
    if not key.startswith(ARCH_PREFIX):
        return BlockSpec.from_key(key)
    batch, dtype, arch_json = key[len(ARCH_PREFIX) :].split(":", 2)
    return ArchTarget(Arch.from_dict(json.loads(arch_json)), int(batch), dtype)


def label(target: Target) -> str:
    """A short name for progress and error messages."""
    return target.name if isinstance(target, ArchTarget) else target.key
