"""LatencyCost: exact expectation, one-hot equality with the Estimator, gradients."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from latency.estimate.estimator import Estimator
from latency.estimate.fitting import fit_correction
from latency.vocab.family import get_arch
from latency.vocab.space import SpacePoint, get_space
from lut_db import LutStore
from search_cost import LatencyCost

from .test_estimate import fill, store_fit, synthetic_samples

SPACE = get_space()


@pytest.fixture(scope="module")
def calibrated_store(tmp_path_factory: pytest.TempPathFactory) -> LutStore:
    path = tmp_path_factory.mktemp("cost") / "lut.sqlite"
    store = LutStore(str(path))
    fill(store, SPACE.all_specs())
    raw = Estimator("cpu", store=store, use_calibration=False)
    archs = SPACE.sampled_archs(10, seed=3)
    correction = fit_correction(synthetic_samples(archs, raw, overhead_ms=0.07, scale=1.1), raw.table_canary_us)
    store_fit(store, correction, 10)
    return store


@pytest.fixture(scope="module")
def cost(calibrated_store: LutStore) -> LatencyCost:
    return LatencyCost(SPACE, estimator=Estimator("cpu", store=calibrated_store))


def test_one_hot_equals_the_estimate(cost: LatencyCost, calibrated_store: LutStore) -> None:
    estimator = Estimator("cpu", store=calibrated_store)
    assert estimator.calibrated and cost.calibrated
    points = [SPACE.point_of(get_arch("dmasking_f4")), *SPACE.sample(20, seed=11)]
    for point in points:
        widths, resolution = cost.one_hot(point)
        expected = estimator.estimate(SPACE.arch(point)).latency_ms
        assert cost(widths, resolution).item() == pytest.approx(expected, rel=1e-6)
        arch_specs = SPACE.arch(point).specs()
        assert cost.expected_flops(widths, resolution).item() == pytest.approx(
            sum(s.flops_m for s in arch_specs), rel=1e-6
        )
        assert cost.expected_params(widths, resolution).item() == pytest.approx(
            sum(s.params_m for s in arch_specs), rel=1e-6
        )


def test_expectation_is_exact_for_independent_choices(cost: LatencyCost, calibrated_store: LutStore) -> None:
    """Brute force: mass on two options of four dimensions (16 architectures), enumerated."""
    estimator = Estimator("cpu", store=calibrated_store)
    base = SPACE.point_of(get_arch("dmasking_f4"))
    widths, resolution = cost.one_hot(base)
    rng = np.random.default_rng(0)
    searched = ["width:g1", "width:g2", "mid:5"]  # g1 -> g2 is an input-output (bilinear) pair
    split = {}
    for name in searched:
        p = float(rng.uniform(0.2, 0.8))
        tensor = torch.zeros_like(widths[name])
        tensor[0], tensor[-1] = p, 1 - p
        widths[name] = tensor
        split[name] = ((0, p), (tensor.numel() - 1, 1 - p))
    p_res = float(rng.uniform(0.2, 0.8))
    resolution = torch.zeros(len(SPACE.resolutions), dtype=torch.float64)
    resolution[0], resolution[-1] = p_res, 1 - p_res
    brute = 0.0
    names = cost.dimension_names
    for choice in itertools.product(*split.values(), ((0, p_res), (len(SPACE.resolutions) - 1, 1 - p_res))):
        values = dict(zip([*searched, "resolution"], choice, strict=True))
        weight = np.prod([p for _, p in values.values()])
        index = {n: (values[n][0] if n in values else int(widths[n].argmax())) for n in names}
        groups = tuple(index[f"width:{g}"] for g in SPACE.groups)
        mids = tuple(index[f"mid:{b}"] for b in SPACE.mid_blocks)
        point = SpacePoint(values["resolution"][0], groups, mids)
        brute += weight * estimator.estimate(SPACE.arch(point)).latency_ms
    assert cost(widths, resolution).item() == pytest.approx(brute, rel=1e-9)


def random_probs(cost: LatencyCost, batch: tuple[int, ...] = (), seed: int = 0) -> tuple[dict, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    widths = {}
    for name, n in SPACE.dimensions:
        logits = torch.randn(*batch, n, generator=gen, dtype=torch.float64)
        widths[name] = torch.softmax(logits, dim=-1).requires_grad_()
    resolution = widths.pop("resolution")
    return widths, resolution


def test_gradients_reach_every_probability_and_pass_gradcheck(cost: LatencyCost) -> None:
    widths, resolution = random_probs(cost)
    value = cost(widths, resolution)
    value.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        for p in [*widths.values(), resolution]
    )
    names = cost.dimension_names
    inputs = (*[widths[n].detach().requires_grad_() for n in names], resolution.detach().requires_grad_())

    def function(*tensors: torch.Tensor) -> torch.Tensor:
        return cost(list(tensors[:-1]), tensors[-1])

    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6)


def test_a_batch_of_probability_sets(cost: LatencyCost) -> None:
    widths, resolution = random_probs(cost, batch=(5,), seed=2)
    batched = cost(widths, resolution)
    assert batched.shape == (5,)
    for i in range(5):
        single = cost({k: v[i] for k, v in widths.items()}, resolution[i])
        assert batched[i].item() == pytest.approx(single.item(), rel=1e-12)


def test_wrong_inputs_are_named(cost: LatencyCost) -> None:
    widths, resolution = random_probs(cost)
    widths.pop("mid:3")
    with pytest.raises(KeyError, match="mid:3"):
        cost(widths, resolution)
    with pytest.raises(ValueError, match="expected 25 width probability tensors"):
        cost([resolution], resolution)


def test_needs_a_filled_space(tmp_path: Path) -> None:
    with LutStore(str(tmp_path / "empty.sqlite")) as store, pytest.raises(Exception, match="lut profile --space"):
        LatencyCost(SPACE, estimator=Estimator("cpu", store=store))


def test_gradient_descent_meets_a_latency_target(cost: LatencyCost, calibrated_store: LutStore) -> None:
    from search_cost.descent import argmax_point, descend

    estimator = Estimator("cpu", store=calibrated_store)
    f4 = estimator.estimate(get_arch("dmasking_f4")).latency_ms
    target = 0.6 * f4
    logits = descend(cost, target, steps=400, log_every=0)
    probs = {name: torch.softmax(v / 0.05, -1) for name, v in logits.items()}  # the final temperature
    resolution = probs.pop("resolution")
    assert cost(probs, resolution).item() == pytest.approx(target, rel=0.03)
    chosen = estimator.estimate(SPACE.arch(argmax_point(cost, logits))).latency_ms
    assert chosen == pytest.approx(target, rel=0.05)  # annealed to one-hot: the argmax meets it too


def test_an_int8_cost_is_the_int8_estimate_and_differentiable(tmp_path: Path) -> None:
    from latency.vocab.conditions import Conditions

    int8 = Conditions("cpu", "executorch", dtype="int8")
    store = LutStore(str(tmp_path / "lut.sqlite"))
    fill(store, SPACE.all_specs(dtype="int8"), backend="executorch")
    fill(store, SPACE.all_specs(), backend="executorch", scale=3.0)  # fp32 beside it, three times slower
    cost = LatencyCost(SPACE, estimator=Estimator(int8, store=store))
    estimator = Estimator(int8, store=store)
    for point in SPACE.sample(5, seed=2):
        widths, resolution = cost.one_hot(point)
        estimate = estimator.estimate(SPACE.arch(point))
        assert all(b.key.endswith("_int8") for b in estimate.blocks)
        assert cost(widths, resolution).item() == pytest.approx(estimate.latency_ms, rel=1e-6)
    widths = {k: torch.full_like(v, 1 / v.numel(), requires_grad=True) for k, v in cost.one_hot(point)[0].items()}
    resolution = torch.full((len(SPACE.resolutions),), 1 / len(SPACE.resolutions), requires_grad=True)
    cost(widths, resolution).backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in widths.values())
    assert resolution.grad is not None and resolution.grad.abs().sum() > 0
