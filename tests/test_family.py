"""The FBNetV2 family: ground-truth FLOPs/params, building, composition, unavailable models."""

from __future__ import annotations

import pytest
import torch

from latency.nn.fbnet import fbnetv2
from latency.nn.layers import build_block
from latency.vocab.family import ModelUnavailableError, UnknownModelError, blocks_of, list_models, model_info

from .conftest import randomize_model

# ../shared/fbnetv2/README.md: FLOPs (M) and params (M) to the third decimal, and mobile-vision's
# torch parameter counts (every nn.Parameter).
GROUND_TRUTH = {
    "dmasking_f1": (128, 56.411, 5.999, 6_024_744),
    "dmasking_f2": (160, 85.441, 5.999, 6_024_744),
    "dmasking_f3": (192, 121.824, 6.900, 6_924_840),
    "dmasking_f4": (224, 238.352, 6.995, 7_022_880),
    "dmasking_l1": (224, 326.023, 8.497, 8_538_792),
    "dmasking_l2": (256, 423.913, 8.497, 8_538_792),
    "dmasking_l3": (288, 753.164, 9.394, 9_464_040),
}
UNAVAILABLE = {"dmasking_p1": (2.64, 73.9), "dmasking_p2": (2.99, 74.8), "dmasking_p3": (4.00, 75.9)}


def test_family_lists_ten_models_seven_available() -> None:
    assert list_models() == [*GROUND_TRUTH, *UNAVAILABLE]
    assert list_models(available_only=True) == list(GROUND_TRUTH)


@pytest.mark.parametrize("name", GROUND_TRUTH)
def test_flops_and_params_match_ground_truth(name: str) -> None:
    resolution, flops_m, params_m, _ = GROUND_TRUTH[name]
    info = model_info(name)
    assert info.resolution == resolution
    assert round(info.flops_m, 3) == flops_m
    assert round(info.params_m, 3) == params_m
    specs = blocks_of(name)
    assert round(sum(s.flops for s in specs) / 1e6, 3) == flops_m


@pytest.mark.parametrize("name", GROUND_TRUTH)
def test_model_classifies_at_its_resolution(name: str) -> None:
    resolution, *_, torch_params = GROUND_TRUTH[name]
    model = fbnetv2(name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == torch_params
    with torch.inference_mode():
        logits = model(torch.randn(1, 3, resolution, resolution))
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()


def test_seed_table_copy_errors_are_corrected_and_kept_visible() -> None:
    for name, right in (("dmasking_f2", 160), ("dmasking_f3", 192)):
        info = model_info(name)
        assert info.resolution == right
        assert info.published.resolution == 224 and info.published_mismatch
    assert not model_info("dmasking_f1").published_mismatch
    assert model_info("dmasking_f3").published.flops_m == 126


@pytest.mark.parametrize("name", ["dmasking_f1", "dmasking_l3"])
def test_composed_blocks_equal_the_whole_model(name: str) -> None:
    model = randomize_model(fbnetv2(name), seed=1)
    state = model.state_dict()
    blocks = []
    for i, spec in enumerate(blocks_of(name)):
        block = build_block(spec).eval()
        prefix = f"blocks.{i}."
        block.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        blocks.append(block)
    x = torch.randn(2, 3, model.arch.resolution, model.arch.resolution, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x)
        y = x
        for block in blocks:
            y = block(y)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", UNAVAILABLE)
def test_unavailable_models_are_listed_but_refused(name: str) -> None:
    info = model_info(name)
    params_m, top1 = UNAVAILABLE[name]
    assert (info.available, info.resolution, info.params_m, info.top1) == (False, 288, params_m, top1)
    assert info.flops_m is None
    for action in (lambda: fbnetv2(name), lambda: blocks_of(name), info.arch):
        with pytest.raises(ModelUnavailableError, match=f"{name} cannot be used: no public architecture"):
            action()


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError, match=r"known models: dmasking_f1, .*dmasking_p3") as excinfo:
        blocks_of("dmasking_f9")
    assert excinfo.value.exit_code == 2
