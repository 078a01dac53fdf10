"""The DMasking supernet of a search space (FBNetV2's channel and resolution search).

Every block runs once, at the widest option of each of its dimensions, and its output is
multiplied by a mask that is the Gumbel-softmax weighted sum of prefix masks (one per width
option: ones on the first k_i channels). Mid widths are masked the same way after the expansion
and the depthwise conv. The input resolution is searched by subsampling: the batch is resized to
each resolution option, the network runs on each, and the logits are combined with the
resolution's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latency.nn.layers import InvertedResidual, build_block
from latency.vocab.arch import OPS, Arch, LayerDef, head_width, se_width
from latency.vocab.space import STEM_IN_CHANNELS, Space


def prefix_masks(options: tuple[int, ...]) -> torch.Tensor:
    """[options, widest]: row i is ones on the first options[i] channels."""
    widest = max(options)
    return (torch.arange(widest)[None, :] < torch.tensor(options)[:, None]).float()


def mixed_mask(weights: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """sum_i g_i m_i, shaped to multiply an NCHW activation."""
    return (weights @ masks)[None, :, None, None]


class DMaskingSupernet(nn.Module):
    """`forward(x, weights)` with `weights` one probability vector per searched dimension
    (the space's names: `resolution`, `width:g0`, ..., `mid:2`, ...).

    `proxy_resolutions` are the input sizes the proxy task runs at, one per resolution option of
    the space (the latency cost always refers to the space's deployment resolutions).
    """

    def __init__(self, space: Space, num_classes: int, proxy_resolutions: tuple[int, ...]) -> None:
        super().__init__()
        if len(proxy_resolutions) != len(space.resolutions):
            raise ValueError("one proxy resolution per resolution option of the space")
        self.space = space
        self.proxy_resolutions = tuple(proxy_resolutions)
        widest = self._widest_arch(num_classes)
        self.blocks = nn.ModuleList(build_block(spec) for spec in widest.specs())
        for group, options in space.width_groups:
            self.register_buffer(f"mask_{group}", prefix_masks(options))
        for block in space.mid_blocks:
            self.register_buffer(f"mask_mid_{block}", prefix_masks(space.blocks[block].mids or ()))

    def _widest_arch(self, num_classes: int) -> Arch:
        layers, c_in = [], STEM_IN_CHANNELS
        for block in self.space.blocks:
            kind = OPS[block.op].kind
            c_out = max(self.space.widths(block.group)) if block.group else block.c_out
            if kind == "classifier":
                c_out = num_classes
            mid = max(block.mids) if block.mids else None
            if kind == "head":
                mid = head_width(c_in, self.space.width_divisor)
            se = se_width(mid, self.space.width_divisor) if OPS[block.op].se and mid else 0
            layers.append(LayerDef(op=block.op, c_out=c_out, stride=block.stride, mid=mid, se=se))
            c_in = c_out if kind != "classifier" else c_in
        return Arch(
            name=f"{self.space.name}-supernet",
            resolution=max(self.proxy_resolutions),
            layers=tuple(layers),
            width_divisor=self.space.width_divisor,
        )

    def _run_once(self, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        for index, (block, module) in enumerate(zip(self.space.blocks, self.blocks, strict=True)):
            mid = mixed_mask(weights[f"mid:{index}"], getattr(self, f"mask_mid_{index}")) if block.mids else None
            x = module(x, mid) if isinstance(module, InvertedResidual) else module(x)
            if block.group is not None:
                x = x * mixed_mask(weights[f"width:{block.group}"], getattr(self, f"mask_{block.group}"))
        return x

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = None
        for option, size in enumerate(self.proxy_resolutions):
            # Subsample the input to this option's resolution; the network is fully convolutional.
            scaled = x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="nearest")
            term = weights["resolution"][option] * self._run_once(scaled, weights)
            logits = term if logits is None else logits + term
        assert logits is not None
        return logits
