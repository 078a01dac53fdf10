"""PyTorch modules for each block kind; `build_block(spec)` is the one entry point.

Semantics follow mobile-vision's FBNetV2 builder (see README, "Block semantics").
"""

from __future__ import annotations

import torch
from torch import nn

from latency.vocab.blocks import BlockSpec


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "hswish": nn.Hardswish, "none": nn.Identity}[name]()


class ConvBNAct(nn.Sequential):
    """conv -> BN -> activation (BN and activation optional)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        act: str = "none",
        bn: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=bias)
        if bn:
            self.bn = nn.BatchNorm2d(c_out)
        if act != "none":
            self.act = _activation(act)


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 reduce (bias) -> act -> 1x1 expand (bias) -> hard-sigmoid gate."""

    def __init__(self, channels: int, se_channels: int, act: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, se_channels, 1)
        self.act = _activation(act)
        self.expand = nn.Conv2d(se_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """[1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (no act) -> [+ input]."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.expand = ConvBNAct(spec.c_in, spec.mid, bias=spec.bias, act=spec.act) if spec.has_expand else None
        self.depthwise = ConvBNAct(
            spec.mid, spec.mid, spec.kernel, spec.stride, groups=spec.mid, bias=spec.bias, act=spec.act
        )
        self.se = SqueezeExcite(spec.mid, spec.se, spec.act) if spec.se else None
        self.project = ConvBNAct(spec.mid, spec.c_out, bias=spec.bias)
        self.residual = spec.has_residual

    def forward(self, x: torch.Tensor, mid_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mid_mask` (mid channels, broadcast over the batch and the map) scales the expanded and the
        depthwise channels: DMasking's channel search runs the widest block under a soft mask."""
        y = self.expand(x) if self.expand is not None else x
        if mid_mask is not None and self.expand is not None:
            y = y * mid_mask
        y = self.depthwise(y)
        if mid_mask is not None:
            y = y * mid_mask
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class Skip(nn.Module):
    """Identity when shapes match, else a 1x1 projection (stride s) + BN + ReLU."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.proj = None if spec.is_identity else ConvBNAct(spec.c_in, spec.c_out, 1, spec.stride, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x)


class Head(nn.Sequential):
    """1x1 expand + BN + HSwish -> global pool -> 1x1 conv (no BN) + HSwish."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.expand = ConvBNAct(spec.c_in, spec.mid, bias=spec.bias, act="hswish")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = ConvBNAct(spec.mid, spec.c_out, bias=spec.bias, act="hswish", bn=False)


class Classifier(nn.Sequential):
    """Global pool (a no-op on the pooled head) -> 1x1 conv with bias -> flatten to logits."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(spec.c_in, spec.c_out, 1, bias=True)
        self.flatten = nn.Flatten(1)


def build_block(spec: BlockSpec) -> nn.Module:
    if spec.kind == "stem":
        return ConvBNAct(spec.c_in, spec.c_out, spec.kernel, spec.stride, bias=True, act=spec.act)
    builder = {"ir": InvertedResidual, "skip": Skip, "head": Head, "classifier": Classifier}[spec.kind]
    return builder(spec)
