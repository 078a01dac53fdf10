"""Official checkpoints: names, layout, download and the errors a user sees."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from latency.nn import fbnet as fbnet_module
from latency.nn.checkpoint import CheckpointError, checkpoint_cache_path, ours_to_official
from latency.nn.fbnet import fbnetv2
from latency.vocab.family import get_arch, list_models, model_info

from .conftest import randomize_model

OFFICIAL_KEYS = json.loads((Path(__file__).parent / "data" / "official_keys.json").read_text())


@pytest.mark.parametrize("name", list_models(available_only=True))
def test_official_names_and_shapes_match_the_real_checkpoints(name: str) -> None:
    model = fbnetv2(name)
    official = ours_to_official(model.state_dict(), get_arch(name))
    assert sorted((k, list(v.shape)) for k, v in official.items()) == sorted(map(tuple, OFFICIAL_KEYS[name]))


def write_official(path: Path, model: torch.nn.Module, name: str, ema: bool = True) -> Path:
    state = {f"module.{k}": v for k, v in ours_to_official(model.state_dict(), get_arch(name)).items()}
    if ema:
        # A training checkpoint: the EMA weights are the ones to use, not the raw ones.
        raw = {k: torch.zeros_like(v) for k, v in state.items()}
        torch.save({"model_ema": state, "state_dict": raw, "iteration": 1000}, path)
    else:
        torch.save({"model_ema": None, "state_dict": state}, path)
    return path


@pytest.mark.parametrize(("name", "ema"), [("dmasking_f1", True), ("dmasking_l3", False)])
def test_local_checkpoint_in_official_layout_loads(name: str, ema: bool, tmp_path: Path) -> None:
    source = randomize_model(fbnetv2(name), seed=3)
    path = write_official(tmp_path / "model.pth", source, name, ema=ema)
    loaded = fbnetv2(name, weights=path)
    res = source.arch.resolution
    x = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_pretrained_downloads_into_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = randomize_model(fbnetv2("dmasking_f1"), seed=4)
    served = tmp_path / "served" / "job_f1" / "model.pth"  # official URLs end in <job>/model.pth
    served.parent.mkdir(parents=True)
    write_official(served, source, "dmasking_f1")
    info = dataclasses.replace(model_info("dmasking_f1"), checkpoint_url=served.as_uri())
    monkeypatch.setattr(fbnet_module, "model_info", lambda name: info)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    model = fbnetv2("dmasking_f1", pretrained=True, progress=False)
    cached = checkpoint_cache_path(info)
    assert cached.is_file() and str(cached).startswith(str(tmp_path / "hub"))
    assert cached.name == "dmasking_f1-job_f1.pth"
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    # A second call reads the cache: the source may be gone.
    served.unlink()
    fbnetv2("dmasking_f1", pretrained=True, progress=False)


def test_no_network_gives_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = dataclasses.replace(model_info("dmasking_f1"), checkpoint_url="http://127.0.0.1:9/x/job/model.pth")
    monkeypatch.setattr(fbnet_module, "model_info", lambda name: info)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(
        CheckpointError,
        match=r"Could not download the dmasking_f1 checkpoint from http://127\.0\.0\.1"
        r".*pass weights=PATH",
    ) as excinfo:
        fbnetv2("dmasking_f1", pretrained=True, progress=False)
    assert "\n" not in str(excinfo.value)


def test_wrong_model_names_every_kind_of_mismatch(tmp_path: Path) -> None:
    path = write_official(tmp_path / "f1.pth", fbnetv2("dmasking_f1"), "dmasking_f1")
    with pytest.raises(CheckpointError) as excinfo:
        fbnetv2("dmasking_f4", weights=path)
    message = str(excinfo.value)
    assert message.startswith(f"Checkpoint {path} does not fit dmasking_f4: ")
    assert "tensors missing (backbone.stages." in message
    shape_error = "backbone.stages.xif0_0.conv.weight is [8, 3, 3, 3] in the file but [16, 3, 3, 3] in the model"
    assert f"of the wrong shape ({shape_error}" in message


def test_truncated_state_dict_lists_missing_tensors(tmp_path: Path) -> None:
    model = fbnetv2("dmasking_f1")
    state = ours_to_official(model.state_dict(), get_arch("dmasking_f1"))
    del state["head.conv.bias"]
    state["backbone.stages.xif9_0.conv.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"1 tensors missing \(head.conv.bias\); 1 unexpected \(backbone"):
        fbnetv2("dmasking_f1", weights=tmp_path / "cut.pth")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"not a checkpoint at all", "is not a readable PyTorch checkpoint"),
        ({"optimizer": {}}, "has neither a 'model_ema' nor a 'state_dict' entry .*optimizer"),
        ([1, 2, 3], "holds a list, not a dict"),
        ({"state_dict": {"a": 1}}, "is not a mapping of names to tensors"),
    ],
)
def test_bad_files_get_one_sentence_naming_the_file(content: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as excinfo:
        fbnetv2("dmasking_f1", weights=path)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_untrusted_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "hook": dataclasses.replace}, path)
    with pytest.raises(CheckpointError, match=r"objects other than tensors \(dataclasses.replace\)"):
        fbnetv2("dmasking_f1", weights=path)


def test_arch_without_official_checkpoint(tmp_path: Path) -> None:
    arch = dataclasses.replace(get_arch("dmasking_f1"), name="mine")
    with pytest.raises(CheckpointError, match="'mine' has no official checkpoint"):
        fbnetv2(arch, pretrained=True)
