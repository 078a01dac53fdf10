"""Estimator and calibration arithmetic on tables with known entries (no measuring here).

The entries are written through the real store; what is checked is that the estimate, the
vectorised paths and the calibration do exactly what they claim with those numbers.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from latency.estimate.correction import FEATURES, Correction, block_features
from latency.estimate.estimator import Estimator, MissingBlocksError
from latency.estimate.fitting import Sample, error_metrics, fit_correction, run_contexts, samples_from_runs
from latency.jobs.measure import block_row
from latency.jobs.rank import pareto_front, rank_family
from latency.vocab.blocks import CONTEXT_ALONE, CONTEXT_NETWORK
from latency.vocab.conditions import Conditions
from latency.vocab.family import blocks_of, get_arch
from latency.vocab.space import get_space
from lut_db import E2ERecord, FitRecord, LutStore
from tests.records import CPU_TORCH, measurement, run

CANARY_US = 200.0


def fake_latency_us(spec) -> float:
    """A deterministic stand-in for a device: FLOPs-proportional plus a fixed cost."""
    return 5.0 + spec.flops / 2e3


def fill(
    store: LutStore,
    specs,
    device: str = "cpu",
    scale: float = 1.0,
    canary_us: float = CANARY_US,
    backend: str = "torch",
    context: str = CONTEXT_ALONE,
) -> None:
    store.get_or_create_device(device, "cpu", {"what": device}, {"what": device})
    store.upsert_blocks(block_row(s) for s in specs)
    rows = []
    for spec in {s.key: s for s in specs}.values():
        median = fake_latency_us(spec) * scale
        rows.append(
            measurement(
                spec.key,
                median,
                Conditions(device, backend, 1, spec.batch, spec.dtype),
                canary_ratio=median / canary_us,
                canary_us=canary_us,
                protocol={} if context == CONTEXT_ALONE else {"context": context},
                measured_at=datetime.now(timezone.utc),
            )
        )
    store.put_measurements(rows)  # one transaction: a space has a thousand blocks


@pytest.fixture
def store(tmp_path: Path) -> LutStore:
    with LutStore(str(tmp_path / "lut.sqlite")) as s:
        yield s


def test_uncalibrated_estimate_is_the_sum_of_block_medians(store: LutStore) -> None:
    specs = blocks_of("dmasking_f1")
    fill(store, specs)
    est = Estimator("cpu", store=store).estimate("dmasking_f1")
    expected = sum(fake_latency_us(s) for s in specs) / 1e3
    assert not est.calibrated and est.backend == "torch"
    assert est.latency_ms == pytest.approx(expected) and est.sum_ms == pytest.approx(expected)
    assert est.interval_ms == pytest.approx((expected * 0.95, expected * 1.1))
    assert [b.key for b in est.blocks] == [s.key for s in specs]
    assert {b.source for b in est.blocks} == {"measured"}
    data = est.to_dict()
    assert {"model", "device", "backend", "latency_ms", "sum_ms", "interval_ms", "calibrated", "blocks"} <= set(data)
    assert set(data["blocks"][0]) == {"key", "latency_ms", "source", "kind"}


def test_missing_blocks_are_listed_with_the_command_to_measure_them(store: LutStore) -> None:
    fill(store, blocks_of("dmasking_f1")[:-2])
    estimator = Estimator("cpu", store=store)
    assert [s.kind for s in estimator.missing("dmasking_f1")] == ["head", "classifier"]
    with pytest.raises(
        MissingBlocksError,
        match=r"2 blocks of dmasking_f1 are not in the table .*"
        r"`lut profile --device cpu --backend torch .* --models dmasking_f1`",
    ) as info:
        estimator.estimate("dmasking_f1")
    assert len(info.value.keys) == 2


def synthetic_samples(archs, estimator: Estimator, overhead_ms: float, scale: float) -> list[Sample]:
    """End-to-end times made from a known correction: scale x block sum + a fixed cost per block."""
    samples = []
    for arch in archs:
        specs = arch.specs()
        feats = np.sum([block_features(s, estimator.entry(s).median_us / 1e3) for s in specs], axis=0)
        measured = scale * feats[0] + overhead_ms * feats[FEATURES.index("blocks")]
        samples.append(Sample(arch.name, feats, measured))
    return samples


def store_fit(store: LutStore, correction, n_samples: int) -> None:
    """The correction stored as cpu/torch's calibration, as `lut calibrate` stores it."""
    store.put_fit(
        FitRecord(
            conditions=CPU_TORCH,
            backend_version="2.13.0",
            purpose="calibration",
            params=correction.to_params(),
            metrics=correction.metrics,
            n_samples=n_samples,
            fitted_at=datetime.now(timezone.utc),
        )
    )


def test_calibration_recovers_a_known_correction_and_the_estimator_applies_it(store: LutStore) -> None:
    space = get_space()
    archs = [get_arch("dmasking_f4"), *space.sampled_archs(12, seed=5)]
    fill(store, space.all_specs())  # the whole grid, for the vectorised path
    raw = Estimator("cpu", store=store, use_calibration=False)
    samples = synthetic_samples(archs, raw, overhead_ms=0.05, scale=1.2)
    correction = fit_correction(samples, raw.table_canary_us)
    assert correction.variant in ("per_block", "traffic")
    assert correction.metrics["cv_rmspe"] < 1e-6 and correction.metrics["cv_within_10pct"] == 1.0
    weights = correction.weights
    assert weights[0] == pytest.approx(1.2) and weights[FEATURES.index("blocks")] + correction.intercept / 22 == (
        pytest.approx(0.05, abs=1e-6)
    )
    store_fit(store, correction, len(samples))
    calibrated = Estimator("cpu", store=store)
    for arch, sample in zip(archs, samples, strict=True):
        est = calibrated.estimate(arch)
        assert est.calibrated and est.latency_ms == pytest.approx(sample.measured_ms, rel=1e-9)
        assert est.interval_ms[0] <= est.latency_ms <= est.interval_ms[1]
    # Many at once: the same numbers, by the list path and by the space's index path.
    many = calibrated.estimate_many(archs)
    assert many == pytest.approx([s.measured_ms for s in samples], rel=1e-9)
    indices = np.array([[p.resolution, *p.widths, *p.mids] for p in map(space.point_of, archs)])
    assert calibrated.estimate_space(space, indices) == pytest.approx(many, rel=1e-9)


def stored_run(
    arch,
    median_us: float,
    canary_us: float,
    tag: str,
    conditions: Conditions = CPU_TORCH,
    backend_version: str = "2.13.0",
    **fields,
) -> E2ERecord:
    """An end-to-end run of `arch` as the store keeps it (three trials, made-up spread; cpu/torch unless
    `conditions` say otherwise)."""
    return run(
        arch.name,
        arch.to_json(),
        median_us,
        tag,
        conditions,
        backend_version=backend_version,
        canary_us=canary_us,
        **fields,
    )


def test_a_calibration_reproduces_its_own_runs_whatever_their_canary(store: LutStore) -> None:
    # The runs' canary reads 15% above the table's, as a canary timed another way did (issue 25): the fit
    # must still learn the runs' times as measured, not times shrunk by that ratio.
    archs = get_space().sampled_archs(12, seed=6)
    fill(store, [s for a in archs for s in a.specs()])
    raw = Estimator("cpu", store=store, use_calibration=False)
    rng = np.random.default_rng(3)
    for arch in archs:
        truth_ms = 1.1 * raw.estimate(arch).sum_ms + 0.3
        measured_us = truth_ms * 1e3 * rng.normal(1.0, 0.02)
        store.put_e2e_run(stored_run(arch, measured_us, CANARY_US * rng.uniform(1.05, 1.25), "calibration"))
    runs = store.e2e_runs(Conditions("cpu", "torch"), tag="calibration")
    correction = fit_correction(samples_from_runs(runs, raw), raw.table_canary_us)
    assert correction.metrics["in_sample_median_ratio"] == pytest.approx(1.0, abs=0.03)
    store_fit(store, correction, len(runs))
    calibrated = Estimator("cpu", store=store)
    ratios = [calibrated.estimate(r.arch).latency_ms / (r.stats.median_us / 1e3) for r in runs]
    assert np.median(ratios) == pytest.approx(1.0, abs=0.03) and min(ratios) > 0.93 and max(ratios) < 1.07


def two_context_truth(arch, estimator: Estimator, alone_scale: float) -> float:
    """A deployment whose time is the blocks timed inside networks as they are, those timed alone times
    `alone_scale` (they sum high), plus 0.05 ms per block."""
    total = 0.0
    for spec in arch.specs():
        entry = estimator.entry(spec)
        total += entry.median_us / 1e3 * (alone_scale if entry.context == CONTEXT_ALONE else 1.0) + 0.05
    return total


def test_calibration_on_blocks_timed_both_ways_fits_a_scale_for_each(store: LutStore) -> None:
    space = get_space()
    archs = space.sampled_archs(16, seed=3)
    specs = list({s.key: s for a in archs for s in a.specs()}.values())
    in_network = {s.key for a in archs[:8] for s in a.specs()}  # the first half's blocks timed in context
    fill(store, [s for s in specs if s.key in in_network], context=CONTEXT_NETWORK)
    fill(store, [s for s in specs if s.key not in in_network])
    raw = Estimator("cpu", store=store, use_calibration=False)
    assert {raw.entry(s).context for s in specs} == {CONTEXT_ALONE, CONTEXT_NETWORK}
    samples = [
        Sample(
            a.name,
            np.sum([block_features(s, raw.entry(s).median_us / 1e3, raw.entry(s).context) for s in a.specs()], axis=0),
            two_context_truth(a, raw, alone_scale=0.7),
        )
        for a in archs
    ]
    correction = fit_correction(samples, raw.table_canary_us)
    assert correction.variant == "per_kind" and set(correction.contexts) == {CONTEXT_ALONE, CONTEXT_NETWORK}
    weights = correction.weights
    assert weights[FEATURES.index("latency_ms")] == pytest.approx(1.0)
    assert weights[FEATURES.index("latency_ms")] + weights[FEATURES.index("alone_ms")] == pytest.approx(0.7)
    store_fit(store, correction, len(samples))
    calibrated = Estimator("cpu", store=store)
    for arch, sample in zip(archs, samples, strict=True):
        est = calibrated.estimate(arch)
        assert est.latency_ms == pytest.approx(sample.measured_ms, rel=1e-6) and est.uncorrected_blocks == 0
    assert calibrated.estimate(archs[-1]).alone_blocks > 0  # the table holds both: each estimate says so
    # A single scale would carry one kind's correction onto the other: it is not offered on such runs.
    assert set(correction.metrics) & {"cv_rmspe_scale", "cv_rmspe_per_block"} == set()
    # Two runs of one kind cannot carry a scale of their own: the fit is made on the other kind's runs.
    kinds = run_contexts(samples)
    alone = [s for s, kind in zip(samples, kinds, strict=True) if kind == CONTEXT_ALONE]
    few = [s for s, kind in zip(samples, kinds, strict=True) if kind == CONTEXT_NETWORK][:2] + alone
    fallback = fit_correction(few, raw.table_canary_us)
    assert len(alone) >= 5 and fallback.variant != "per_kind" and fallback.contexts == (CONTEXT_ALONE,)
    assert fallback.metrics["cv_n"] == len(alone)


def test_a_calibration_leaves_blocks_timed_where_its_runs_were_not_at_their_plain_time(store: LutStore) -> None:
    space = get_space()
    archs = [get_arch("dmasking_f4"), *space.sampled_archs(12, seed=5)]
    fill(store, space.all_specs())  # every block timed alone
    raw = Estimator("cpu", store=store, use_calibration=False)
    samples = synthetic_samples(archs, raw, overhead_ms=0.0, scale=0.7)
    correction = fit_correction(samples, raw.table_canary_us)
    assert correction.contexts == (CONTEXT_ALONE,)
    store_fit(store, correction, len(samples))
    # The family's first network timed in context afterwards: the fit says nothing about its blocks.
    f1 = get_arch("dmasking_f1")
    fill(store, f1.specs(), context=CONTEXT_NETWORK)
    calibrated = Estimator("cpu", store=store)
    est = calibrated.estimate(f1)
    assert est.calibrated and est.uncorrected_blocks == len(est.blocks)
    assert est.latency_ms == pytest.approx(est.sum_ms + correction.intercept, rel=1e-9)
    assert est.to_dict()["calibration"]["contexts"] == [CONTEXT_ALONE]
    corrected = calibrated.estimate(archs[1])  # timed alone, as the fit's runs: corrected as before
    assert corrected.uncorrected_blocks == 0 and corrected.latency_ms == pytest.approx(samples[1].measured_ms, rel=1e-6)
    mixed = [f1, *archs[:4]]  # the list path and the space's index path agree with it, block for block
    many = calibrated.estimate_many(mixed)
    assert many == pytest.approx([calibrated.estimate(a).latency_ms for a in mixed], rel=1e-9)
    # A fit stored before blocks were timed in context (no `contexts`) corrects blocks timed alone only.
    params = {k: v for k, v in correction.to_params().items() if k != "contexts"}
    assert Correction.from_params(params, {}).contexts == (CONTEXT_ALONE,)


def test_a_calibration_never_fits_a_negative_fixed_cost(store: LutStore) -> None:
    """Runs that a line with a negative intercept fits best (a noisy few) leave the intercept at 0, so that a
    network smaller than every run is still estimated above zero (found by a CLI test estimating a tiny
    sampled network at -0.16 ms after a real calibration)."""
    space = get_space()
    archs = space.sampled_archs(8, seed=12)
    fill(store, [s for a in archs for s in a.specs()])
    raw = Estimator("cpu", store=store, use_calibration=False)
    samples = [Sample(s.name, s.features, 0.6 * s.features[0] - 1.0) for s in synthetic_samples(archs, raw, 0.0, 1.0)]
    correction = fit_correction(samples, raw.table_canary_us)
    assert correction.intercept == 0.0 and correction.metrics["cv_n"] == len(archs)
    tiny = np.sum([block_features(s, raw.entry(s).median_us / 1e3) for s in archs[0].specs()[:2]], axis=0)
    assert correction.block_ms(tiny) + correction.intercept > 0


def test_estimate_space_covers_only_filled_grids(store: LutStore) -> None:
    fill(store, blocks_of("dmasking_f4"))
    with pytest.raises(MissingBlocksError, match="block shapes of space 'fbnetv2_f4' are not in the table"):
        Estimator("cpu", store=store).space_tables(get_space())


def test_error_metrics_match_their_definitions() -> None:
    measured = np.array([10.0, 20.0, 30.0, 40.0])
    estimated = np.array([11.0, 19.0, 36.0, 40.0])
    m = error_metrics(estimated, measured)
    assert m["n"] == 4 and m["within_10pct"] == 0.75
    assert m["mape"] == pytest.approx((0.1 + 0.05 + 0.2 + 0) / 4)
    assert m["rmspe"] == pytest.approx(math.sqrt((0.01 + 0.0025 + 0.04) / 4))
    assert m["kendall_tau"] == 1.0 and m["spearman_rho"] == 1.0
    two = error_metrics(estimated[:2], measured[:2])  # rank correlations undefined: present, None
    assert two["kendall_tau"] is None and two["spearman_rho"] is None and two["n"] == 2


def test_pareto_front_and_budget() -> None:
    points = [("a", 1.0, 70.0), ("b", 2.0, 75.0), ("c", 3.0, 74.0), ("d", 3.0, 78.0), ("e", 2.0, 75.0)]
    assert pareto_front(points) == {"a", "b", "d", "e"}


def test_ranking_over_two_devices_reports_rank_changes(store: LutStore) -> None:
    names = ["dmasking_f1", "dmasking_f2", "dmasking_f3", "dmasking_f4", "dmasking_l1", "dmasking_l2", "dmasking_l3"]
    specs = [s for n in names for s in blocks_of(n)]
    fill(store, specs, device="cpu")
    fill(store, specs, device="phone", backend="executorch")
    estimators = {d: Estimator(d, store=store) for d in ("cpu", "phone")}
    # The phone is the same but 10x slower on dmasking_f4 alone: only f4 and those it passes change rank.

    def estimate(device: str, name: str):
        est = estimators[device].estimate(name)
        if device == "phone" and name == "dmasking_f4":
            return type(est)(**{**est.__dict__, "latency_ms": est.latency_ms * 10})
        return est

    ranking = rank_family(["cpu", "phone"], estimate, budget_ms=1e9)
    assert [r.name for r in ranking.rows] == sorted(names, key=lambda n: estimators["cpu"].estimate(n).latency_ms)
    cpu_order = [r.name for r in ranking.rows]
    phone_order = [n for n in cpu_order if n != "dmasking_f4"] + ["dmasking_f4"]  # f4 alone moved to last
    assert {r.name: r.rank["phone"] for r in ranking.rows} == {n: i + 1 for i, n in enumerate(phone_order)}
    moved = {n for n in cpu_order if cpu_order.index(n) != phone_order.index(n)}
    assert {c["name"] for c in ranking.rank_changes()} == moved and "dmasking_f4" in moved
    assert ranking.best_under_budget("cpu").name == "dmasking_l3"  # every model fits: the most accurate
    # A budget f4 meets on the cpu but not on the phone: the phone's best is chosen without it.
    f4_ms = estimators["cpu"].estimate("dmasking_f4").latency_ms
    tight = rank_family(["cpu", "phone"], estimate, budget_ms=f4_ms)
    for device in ("cpu", "phone"):
        fitting = [r for r in tight.rows if r.latency_ms[device] <= f4_ms]
        assert tight.best_under_budget(device).name == max(fitting, key=lambda r: r.top1).name
    assert ("dmasking_f4" in {r.name for r in tight.rows if r.latency_ms["cpu"] <= f4_ms}) and not any(
        r.name == "dmasking_f4" and r.latency_ms["phone"] <= f4_ms for r in tight.rows
    )


def test_blocks_missing_on_a_phone_are_predicted_from_its_measured_ones(store: LutStore) -> None:
    from latency.jobs.cover import fill_missing

    space = get_space()
    measured = [s for a in space.sampled_archs(12, seed=9) for s in a.specs()]
    fill(store, measured, device="phone", backend="executorch")
    estimator = Estimator("phone", store=store)
    target = get_arch("dmasking_f4")
    absent = estimator.missing(target)
    assert absent  # f4 has shapes the phone never ran
    fill_missing(estimator, [target])  # a phone is not local: predicted, not measured
    est = estimator.estimate(target)
    predicted = [b for b in est.blocks if b.source == "predicted"]
    assert {b.key for b in predicted} == {s.key for s in absent}
    truth = {s.key: fake_latency_us(s) / 1e3 for s in target.specs()}
    for block in predicted:
        assert block.latency_ms == pytest.approx(truth[block.key], rel=0.15)
        assert block.expected_error is not None and block.expected_error > 0
    assert est.latency_ms == pytest.approx(sum(fake_latency_us(s) for s in target.specs()) / 1e3, rel=0.05)
    assert store.measurements(Conditions("phone"), source="predicted") == []  # nothing stored
    assert {estimator.entry(s).context for s in absent} == {CONTEXT_ALONE}  # learnt from blocks timed alone


def test_blocks_predicted_from_blocks_timed_in_context_stand_for_such_blocks(store: LutStore) -> None:
    from latency.jobs.cover import predict_missing

    space = get_space()
    fill(store, [s for a in space.sampled_archs(12, seed=9) for s in a.specs()], context=CONTEXT_NETWORK)
    fill(store, blocks_of("dmasking_f1")[:3])  # a few timed alone beside them
    estimator = Estimator("cpu", store=store)
    absent = estimator.missing(get_arch("dmasking_f4"))
    assert predict_missing(estimator, absent) == len(absent)
    assert {estimator.entry(s).context for s in absent} == {CONTEXT_NETWORK}


def test_too_few_measured_blocks_predict_nothing(store: LutStore) -> None:
    from latency.jobs.cover import fill_missing

    fill(store, blocks_of("dmasking_f1")[:5], device="phone", backend="executorch")
    estimator = Estimator("phone", store=store)
    fill_missing(estimator, [get_arch("dmasking_f1")])
    with pytest.raises(MissingBlocksError):
        estimator.estimate("dmasking_f1")


def test_the_predictor_learns_blocks_at_the_tables_speed_when_the_machine_drifted(store: LutStore) -> None:
    from latency.estimate.predictor import training_set
    from latency.jobs.cover import fill_missing

    space = get_space()
    measured = list({s.key: s for a in space.sampled_archs(12, seed=9) for s in a.specs()}.values())
    # A third of the blocks measured while the whole machine ran 30% slower (its canary too).
    slow = measured[::3]
    fill(store, [s for s in measured if s not in slow], device="phone", backend="executorch")
    fill(store, slow, device="phone", scale=1.3, canary_us=CANARY_US * 1.3, backend="executorch")
    rows = store.measurement_map(Conditions("phone", "executorch"), source="measured")
    specs, latencies_us, reference = training_set(rows)
    assert reference == CANARY_US
    assert latencies_us == pytest.approx([fake_latency_us(s) for s in specs], rel=1e-9)

    estimator = Estimator("phone", store=store)
    target = get_arch("dmasking_f4")
    fill_missing(estimator, [target])
    truth = {s.key: fake_latency_us(s) / 1e3 for s in target.specs()}
    for block in estimator.estimate(target).blocks:
        if block.source == "predicted":
            assert block.latency_ms == pytest.approx(truth[block.key], rel=0.15)
