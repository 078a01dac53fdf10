"""Official FBNetV2 checkpoints: download, read, and convert mobile-vision's tensor names to ours.

File layout (mobile-vision's `_load_fbnet_state_dict`): `torch.load` gives a dict; its `model_ema`
entry when present and not None, else its `state_dict`; every key may carry a `module.` prefix.
Official names: `backbone.stages.xif{stage}_{index}.<layer>` for stem..head, `head.conv` for the
classifier.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from urllib.error import URLError

import torch

from latency.vocab.arch import Arch
from latency.vocab.errors import LutError
from latency.vocab.family import ModelInfo

# Official layer name -> ours, per block kind (prefix match on whole dotted components).
_LAYER_NAMES: dict[str, dict[str, str]] = {
    "stem": {"conv": "conv", "bn": "bn"},
    "ir": {
        "pw.conv": "expand.conv",
        "pw.bn": "expand.bn",
        "dw.conv": "depthwise.conv",
        "dw.bn": "depthwise.bn",
        "se.se.0.conv": "se.reduce",
        "se.se.1": "se.expand",
        "pwl.conv": "project.conv",
        "pwl.bn": "project.bn",
    },
    "skip": {"conv.conv": "proj.conv", "conv.bn": "proj.bn"},
    "head": {"pw.conv": "expand.conv", "pw.bn": "expand.bn", "pwl.conv": "proj.conv"},
    "classifier": {"conv": "fc"},
}


class CheckpointError(LutError):
    """A checkpoint that cannot be fetched, read, or does not fit the model."""


def block_prefixes(arch: Arch) -> list[str]:
    """The official module prefix of every block, stem to classifier."""
    prefixes = [f"backbone.stages.xif{stage}_{index}." for stage, index in arch.block_stages]
    return [*prefixes, "head."]


def official_to_ours(arch: Arch) -> dict[str, str]:
    """Map every official tensor-name prefix to our `blocks.{i}.<layer>` prefix."""
    mapping = {}
    for i, (prefix, spec) in enumerate(zip(block_prefixes(arch), arch.specs(), strict=True)):
        for official, ours in _LAYER_NAMES[spec.kind].items():
            mapping[f"{prefix}{official}."] = f"blocks.{i}.{ours}."
    return mapping


def _rename(name: str, mapping: dict[str, str]) -> str | None:
    for src, dst in mapping.items():
        if name.startswith(src):
            return dst + name[len(src) :]
    return None


def convert_official_state_dict(
    official: dict[str, torch.Tensor], arch: Arch, expected: dict[str, torch.Size], source: str
) -> dict[str, torch.Tensor]:
    """Rename an official state dict to ours, checking names and shapes against `expected`."""
    mapping = official_to_ours(arch)
    ours: dict[str, torch.Tensor] = {}
    unexpected, wrong_shape, wrong_names = [], [], set()
    for name, tensor in official.items():
        new = _rename(name, mapping)
        if new is None or new not in expected:
            unexpected.append(name)
        elif tuple(tensor.shape) != tuple(expected[new]):
            wrong_shape.append(f"{name} is {list(tensor.shape)} in the file but {list(expected[new])} in the model")
            wrong_names.add(new)
        else:
            ours[new] = tensor
    inverse = {v: k for k, v in mapping.items()}
    missing = [_rename(n, inverse) or n for n in expected if n not in ours and n not in wrong_names]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} of the wrong shape ({_first(wrong_shape)})")
    if problems:
        raise CheckpointError(f"Checkpoint {source} does not fit {arch.name}: {'; '.join(problems)}.")
    return ours


def _first(names: list[str], limit: int = 3) -> str:
    more = f", and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_official_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint file in the official layout, `module.` prefixes stripped.

    Files are read with `weights_only=True`; only `trusted` files (downloaded from the official URL)
    may fall back to full unpickling, which older checkpoints can need.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    try:
        data = _torch_load(path, trusted)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in reason:
            reason = "its pickle stream is corrupt"
        raise CheckpointError(f"Checkpoint file {path} is not a readable PyTorch checkpoint ({reason}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"Checkpoint file {path} holds a {type(data).__name__}, not a dict.")
    if data.get("model_ema") is not None:
        state = data["model_ema"]
    elif data.get("state_dict") is not None:
        state = data["state_dict"]
    else:
        keys = ", ".join(map(str, list(data)[:5])) or "none"
        raise CheckpointError(
            f"Checkpoint file {path} has neither a 'model_ema' nor a 'state_dict' entry (its keys: {keys})."
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"Checkpoint file {path}: its state dict is not a mapping of names to tensors.")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _torch_load(path: Path, trusted: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsupported is None:
            raise
        if not trusted:
            raise CheckpointError(
                f"Checkpoint file {path} holds objects other than tensors ({unsupported.group(1)}) and was not "
                "loaded for safety; re-save its state dict with torch.save."
            ) from None
    return torch.load(path, map_location="cpu", weights_only=False)


def load_official_checkpoint(
    path: str | Path, arch: Arch, model: torch.nn.Module, trusted: bool = False
) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return it as the state dict of `model` (FBNetV2 of `arch`)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    return convert_official_state_dict(read_official_checkpoint(path, trusted), arch, expected, str(path))


def checkpoint_cache_path(info: ModelInfo) -> Path:
    # Every official file is called model.pth: name the cached copy after its job folder.
    assert info.checkpoint_url is not None
    job = info.checkpoint_url.rstrip("/").split("/")[-2]
    return Path(torch.hub.get_dir()) / "checkpoints" / "fbnetv2" / f"{info.name}-{job}.pth"


def download_checkpoint(info: ModelInfo, progress: bool = True) -> Path:
    """The official checkpoint of a family member, downloaded once into the torch hub cache."""
    if not info.checkpoint_url:
        raise CheckpointError(f"{info.name} has no official checkpoint; pass weights=PATH to load your own.")
    target = checkpoint_cache_path(info)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(info.checkpoint_url, str(target), progress=progress)
    except (URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(
            f"Could not download the {info.name} checkpoint from {info.checkpoint_url} ({reason}); "
            f"without network, download it elsewhere and pass weights=PATH (or place it at {target})."
        ) from None
    return target


def ours_to_official(state: dict[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """Our state dict under the official names (the inverse of the conversion)."""
    inverse = {v: k for k, v in official_to_ours(arch).items()}
    official = {}
    for name, tensor in state.items():
        new = _rename(name, inverse)
        if new is None:
            raise CheckpointError(f"Tensor {name} has no official name in {arch.name}.")
        official[new] = tensor
    return official
