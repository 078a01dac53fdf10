"""The torch modules: the blocks' layers, the FBNetV2 network built from them, official checkpoints."""

from latency.nn.fbnet import FBNetV2, fbnetv2
from latency.nn.layers import build_block

__all__ = ["FBNetV2", "build_block", "fbnetv2"]
