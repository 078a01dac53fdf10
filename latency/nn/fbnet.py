"""The FBNetV2 network: the built blocks of an architecture, in order, and `fbnetv2()`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from latency.nn.checkpoint import CheckpointError, download_checkpoint, load_official_checkpoint
from latency.nn.layers import build_block
from latency.vocab.arch import Arch
from latency.vocab.family import list_models, model_info, resolve_arch


class FBNetV2(nn.Module):
    """Stem, ir/skip blocks, head and classifier, each built from its BlockSpec.

    `blocks[i]` is `build_block(arch.specs()[i])`, so the model is exactly the composition of the blocks
    the lookup table times (dropout, active in training only, sits before the classifier).
    """

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        self.blocks = nn.ModuleList(build_block(spec) for spec in arch.specs())
        self.dropout = nn.Dropout(arch.dropout) if arch.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *features, classifier = self.blocks
        for block in features:
            x = block(x)
        return classifier(self.dropout(x))


def fbnetv2(
    name: str | Path | Arch | dict[str, Any],
    pretrained: bool = False,
    weights: str | Path | None = None,
    progress: bool = True,
) -> FBNetV2:
    """Build a family member by name (or any architecture) in eval mode.

    `pretrained=True` loads the official checkpoint (downloaded once into the torch hub cache);
    `weights=PATH` loads a local checkpoint file in the official layout instead.
    """
    arch = resolve_arch(name)
    model = FBNetV2(arch)
    if weights is not None:
        model.load_state_dict(load_official_checkpoint(weights, arch, model))
    elif pretrained:
        if arch.name not in list_models():
            raise CheckpointError(f"'{arch.name}' has no official checkpoint; pass weights=PATH to load your own.")
        path = download_checkpoint(model_info(arch.name), progress=progress)
        model.load_state_dict(load_official_checkpoint(path, arch, model, trusted=True))
    return model.eval()
