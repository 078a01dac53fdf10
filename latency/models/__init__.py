"""The FBNetV2 family: `fbnetv2(name)` builds one, `blocks_of(name or arch)` cuts it into blocks.

Only `fbnetv2`/`FBNetV2` import torch, and only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latency.models.registry import (
    ModelInfo,
    ModelUnavailableError,
    UnknownModelError,
    blocks_of,
    get_arch,
    list_models,
    model_info,
    resolve_arch,
)

if TYPE_CHECKING:
    from latency.models.fbnet import FBNetV2, fbnetv2

__all__ = [
    "FBNetV2",
    "ModelInfo",
    "ModelUnavailableError",
    "UnknownModelError",
    "blocks_of",
    "fbnetv2",
    "get_arch",
    "list_models",
    "model_info",
    "resolve_arch",
]


def __getattr__(name: str) -> Any:
    if name in ("fbnetv2", "FBNetV2"):
        from latency.models import fbnet

        return getattr(fbnet, name)
    raise AttributeError(f"module 'latency.models' has no attribute '{name}'")
