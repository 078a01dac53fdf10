"""The FBNetV2 family as data: model metadata, architectures and `blocks_of` (no torch import)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from latency.vocab.arch import Arch
from latency.vocab.blocks import BlockSpec
from latency.vocab.errors import LutError


class UnknownModelError(LutError):
    exit_code = 2


class ModelUnavailableError(LutError):
    exit_code = 2


@dataclass(frozen=True)
class Published:
    """What the FBNetV2 README table printed (kept beside the corrected values)."""

    resolution: int | None = None
    flops_m: float | None = None
    params_m: float | None = None
    top1: float | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    available: bool
    resolution: int
    top1: float
    published: Published
    top5: float | None = None
    published_params_m: float | None = None
    checkpoint_url: str | None = None
    eval_resize: int | None = None
    official_name: str | None = None
    source: str | None = None
    unavailable_reason: str | None = None

    def arch(self) -> Arch:
        return get_arch(self.name)

    def to_dict(self) -> dict[str, Any]:
        """What `lut models --json` and the service's `/api/models` say of the model."""
        return {
            "name": self.name,
            "resolution": self.resolution,
            "flops_m": self.flops_m,
            "params_m": self.params_m,
            "top1": self.top1,
            "available": self.available,
            "published": {k: v for k, v in vars(self.published).items() if v is not None},
            "unavailable_reason": self.unavailable_reason,
        }

    @property
    def flops_m(self) -> float | None:
        """Counted from the block specs; None when no architecture is public."""
        return sum(s.flops for s in self.arch().specs()) / 1e6 if self.available else None

    @property
    def params_m(self) -> float:
        """Counted from the block specs, or the published figure when no architecture is public."""
        if not self.available:
            assert self.published_params_m is not None
            return self.published_params_m
        return sum(s.params for s in self.arch().specs()) / 1e6

    @property
    def published_mismatch(self) -> bool:
        """Whether the README's resolution disagrees with the checkpoint's (a copy error)."""
        return self.published.resolution is not None and self.published.resolution != self.resolution


_DATA = resources.files("latency.vocab")


@cache
def _family() -> dict[str, ModelInfo]:
    raw: dict[str, Any] = json.loads((_DATA / "family.json").read_text())["models"]
    family = {}
    for name, entry in raw.items():
        checkpoint = entry.get("checkpoint", {})
        family[name] = ModelInfo(
            name=name,
            available=entry["available"],
            resolution=entry["resolution"],
            top1=entry["top1"],
            top5=entry.get("top5"),
            published=Published(**entry.get("published", {})),
            published_params_m=entry.get("params_m"),
            checkpoint_url=checkpoint.get("url"),
            eval_resize=checkpoint.get("eval_resize"),
            official_name=checkpoint.get("official_name"),
            source=entry.get("source"),
            unavailable_reason=entry.get("unavailable_reason"),
        )
    return family


def list_models(available_only: bool = False) -> list[str]:
    return [name for name, info in _family().items() if info.available or not available_only]


def expand_models(models: Sequence[str]) -> list[str]:
    """Model names as asked, "all" standing for every available member and "none" for no member; each once."""
    names: list[str] = []
    for model in models:
        if model != "none":
            names.extend(list_models(available_only=True) if model == "all" else [model])
    return list(dict.fromkeys(names))


def family_archs(models: Sequence[str]) -> list[Arch]:
    return [get_arch(name) for name in expand_models(models)]


def model_info(name: str) -> ModelInfo:
    family = _family()
    if name not in family:
        raise UnknownModelError(f"Unknown model '{name}'; known models: {', '.join(family)}.")
    return family[name]


@cache
def get_arch(name: str) -> Arch:
    """The architecture of a family member; unavailable models raise with the reason."""
    info = model_info(name)
    if not info.available:
        raise ModelUnavailableError(f"{name} cannot be used: {info.unavailable_reason}.")
    return Arch.from_json_text((_DATA / "archs" / f"{name}.json").read_text(), f"{name}.json")


def resolve_arch(arch: str | Path | Arch | dict[str, Any]) -> Arch:
    """A family model's name, a path to an ARCH.json file, a parsed dict or an Arch, as an Arch."""
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, dict):
        return Arch.from_dict(arch)
    text = str(arch)
    if isinstance(arch, Path) or text.endswith(".json") or "/" in text:
        return Arch.from_json(text)
    return get_arch(text)


def blocks_of(arch: str | Path | Arch | dict[str, Any], batch: int = 1, dtype: str = "fp32") -> list[BlockSpec]:
    """The ordered block specs, stem to classifier, of a family model's name or an architecture."""
    return resolve_arch(arch).specs(batch=batch, dtype=dtype)
