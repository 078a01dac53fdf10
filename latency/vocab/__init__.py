"""The vocabulary every other layer speaks: blocks, architectures, search spaces, the FBNetV2 family as
data, deployment environments and lut's error type. No torch and no table here (import-linter checks)."""

from latency.vocab.arch import Arch
from latency.vocab.blocks import BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.errors import LutError
from latency.vocab.family import blocks_of, get_arch, list_models, model_info, resolve_arch
from latency.vocab.space import Space, SpacePoint, get_space

__all__ = [
    "Arch",
    "BlockSpec",
    "Conditions",
    "LutError",
    "Space",
    "SpacePoint",
    "blocks_of",
    "get_arch",
    "get_space",
    "list_models",
    "model_info",
    "resolve_arch",
]
