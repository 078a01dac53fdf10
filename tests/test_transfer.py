"""Transfer calibration: the fit and the job on made-up devices with known relations (no measuring here)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sqlalchemy import text

from latency.estimate.correction import VARIANTS, block_features
from latency.estimate.estimator import Estimator
from latency.estimate.fitting import CalibrationError, Sample, error_metrics
from latency.estimate.transfer import fit_transfer
from latency.jobs.transfer import TRANSFER_TAG, transfer_archs, transfer_from_runs
from latency.vocab.conditions import Conditions
from latency.vocab.space import get_space
from lut_db import LutStore
from search_cost import LatencyCost
from tests.cli import TINY_SPACE, lut
from tests.test_estimate import fake_latency_us, fill, stored_run

SPACE = get_space("fbnetv2_f4")
TINY_SEARCH_SPACE = get_space(str(TINY_SPACE))


def source_ms(spec) -> float:
    return fake_latency_us(spec) / 1e3


def target_ms(specs, rng: np.random.Generator, noise: float) -> float:
    """A device 1.8x slower per unit of the source's time, with a per-block and a per-network cost the
    source does not have, and run-to-run noise."""
    exact = sum(1.8 * source_ms(s) + 0.5 for s in specs) + 3.0
    return exact * (1 + noise * rng.standard_normal())


def networks(n: int, seed: int) -> list[list]:
    """The blocks of `n` architectures sampled from the space."""
    return [arch.specs() for arch in SPACE.sampled_archs(n, seed=seed)]


def samples(nets, times, source=source_ms) -> list[Sample]:
    out = []
    for i, (specs, time_ms) in enumerate(zip(nets, times, strict=True)):
        features = np.sum([block_features(s, source(s)) for s in specs], axis=0)
        out.append(Sample(f"net{i}", features, time_ms))
    return out


def held_out_metrics(correction, nets, times) -> dict:
    estimates = np.array([correction.intercept + correction.block_ms(s.features) for s in samples(nets, times)])
    return error_metrics(estimates, np.array(times))


def test_ten_runs_carry_a_table_to_another_device() -> None:
    rng = np.random.default_rng(0)
    fit_nets, check_nets = networks(10, seed=1), networks(30, seed=2)
    correction = fit_transfer(samples(fit_nets, [target_ms(n, rng, 0.01) for n in fit_nets]))
    metrics = held_out_metrics(correction, check_nets, [target_ms(n, rng, 0.01) for n in check_nets])
    assert metrics["within_10pct"] == 1.0 and metrics["rmspe"] < 0.03 and metrics["kendall_tau"] >= 0.85
    assert correction.metrics["cv_n"] == 10 and correction.metrics["cv_rmspe"] < 0.05
    # the plain ratio of the source would be off by the per-block cost it does not know of
    plain = 1.8 * np.array([sum(source_ms(s) for s in n) for n in check_nets])
    truth = np.array([target_ms(n, rng, 0.0) for n in check_nets])
    assert np.sqrt(np.mean((plain / truth - 1) ** 2)) > 2 * metrics["rmspe"]


def uneven_source_ms(spec) -> float:
    """A source whose kernels run some shapes 3x faster than others: its time is not its work's."""
    return source_ms(spec) * (1 + 2 * (int(hashlib.sha256(spec.key.encode()).hexdigest(), 16) % 2))


def test_a_device_that_is_only_slower_keeps_the_prior() -> None:
    """Five runs of a device that is the source 2.5x slower: the source's time, not the average with the
    work's fit (the default), since its leave-one-out errors are clearly lower."""
    rng = np.random.default_rng(3)
    nets = networks(5, seed=4)
    times = [2.5 * sum(uneven_source_ms(s) for s in n) * (1 + 0.005 * rng.standard_normal()) for n in nets]
    correction = fit_transfer(samples(nets, times, uneven_source_ms))
    assert correction.variant == "scale"
    assert correction.coef[0] == pytest.approx(2.5, rel=0.02)
    assert abs(correction.intercept) < 0.02 * np.mean(times)


def test_few_noisy_runs_average_the_source_and_the_work() -> None:
    """Ten runs of a device whose time follows half the source's and half the work, with this host's
    run-to-run noise (10%): no candidate is clearly better than the average, which is kept."""
    rng = np.random.default_rng(9)
    nets = networks(10, seed=10)

    def half_and_half_ms(specs) -> float:
        exact = sum(0.5 * uneven_source_ms(s) + 0.5 * source_ms(s) for s in specs)
        return exact * (1 + 0.1 * rng.standard_normal())

    correction = fit_transfer(samples(nets, [half_and_half_ms(n) for n in nets], uneven_source_ms))
    assert correction.variant == "combined"
    assert set(VARIANTS["combined"]) == {"latency_ms", "flops_m", "blocks"}
    assert correction.coef[0] > 0 and correction.coef[1] > 0  # the source's time and the work both count


def test_a_device_that_follows_the_work_not_the_source_is_fitted_on_multiply_adds() -> None:
    """Another runtime's kernels: the target's time follows each block's multiply-adds and a per-block
    cost, unrelated to how the source ran the block. The fit must find the work, not scale the source."""
    rng = np.random.default_rng(6)

    def work_ms(specs) -> float:
        return (sum(0.004 * s.flops_m + 0.05 for s in specs) + 0.4) * (1 + 0.01 * rng.standard_normal())

    fit_nets, check_nets = networks(10, seed=7), networks(30, seed=8)
    correction = fit_transfer(samples(fit_nets, [work_ms(n) for n in fit_nets], uneven_source_ms))
    assert "flops_m" in VARIANTS[correction.variant]
    check_times = [work_ms(n) for n in check_nets]
    check = samples(check_nets, check_times, uneven_source_ms)
    estimates = np.array([correction.intercept + correction.block_ms(s.features) for s in check])
    metrics = error_metrics(estimates, np.array(check_times))
    assert metrics["within_10pct"] >= 0.9 and metrics["kendall_tau"] >= 0.85
    # the source's time alone at its median ratio ranks them worse
    ratio = np.median([t / s.features[0] for t, s in zip(check_times, check, strict=True)])
    plain = error_metrics(np.array([ratio * s.features[0] for s in check]), np.array(check_times))
    assert plain["rmspe"] > 2 * metrics["rmspe"]


def test_a_negative_fixed_cost_is_not_fitted() -> None:
    """Runs that a line with a negative intercept fits best (a noisy few) leave the intercept at 0, so that a
    network smaller than any run is still estimated above zero."""
    nets = networks(6, seed=3)
    times = [0.5 * sum(source_ms(s) for s in n) - 0.4 for n in nets]
    correction = fit_transfer(samples(nets, times), None)
    assert correction.intercept == 0.0 and correction.coef[0] > 0
    tiny = nets[0][:2]
    features = np.sum([block_features(s, source_ms(s)) for s in tiny], axis=0)
    assert correction.block_ms(features) + correction.intercept > 0


def test_an_interval_stays_above_zero_when_a_held_out_prediction_does_not() -> None:
    from latency.estimate import fitting

    metrics = fitting.held_out_metrics(np.array([-0.2, 2.0, 3.3, 3.9]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert -1 < metrics["residual_q05"] < 0 < metrics["residual_q95"]  # the transferred rows' p10 and p90
    assert metrics["residual_q95"] > 100  # the run predicted below zero: as wide as such a fit deserves


def test_too_few_runs_are_refused() -> None:
    with pytest.raises(CalibrationError, match="at least 3 end-to-end runs"):
        fit_transfer(samples(networks(2, seed=5), [10.0, 12.0]))


# ---- the job: a target's table from the source's table and its stored runs (no measuring here) -------
TARGET = Conditions("board", "executorch")
SOURCE = Conditions("cpu", "torch")
TARGET_CANARY_US = 40.0


def put_runs(store: LutStore, archs, rng: np.random.Generator) -> None:
    """The target's transfer runs, as profile_archs stores them (1% noise, the canary 2% about its median)."""
    store.get_or_create_device(TARGET.device, "android", {"model": "Board"}, {"model": "Board"})
    for arch in archs:
        time_us = target_ms(arch.specs(), rng, 0.01) * 1e3
        canary_us = TARGET_CANARY_US * rng.uniform(0.98, 1.02)
        store.put_e2e_run(stored_run(arch, time_us, canary_us, TRANSFER_TAG, TARGET, backend_version="1.5.1"))


def test_a_transfer_writes_the_targets_table_and_estimates_say_so(tmp_path) -> None:
    rng = np.random.default_rng(7)
    fit_archs, check_archs = SPACE.sampled_archs(10, seed=11), SPACE.sampled_archs(20, seed=12)
    db = str(tmp_path / "lut.sqlite")
    with LutStore(db) as store:
        # the source: a table of the networks' blocks and of the test space (LatencyCost needs a whole space)
        fill(store, [s for a in fit_archs + check_archs for s in a.specs()] + TINY_SEARCH_SPACE.all_specs())
        put_runs(store, fit_archs, rng)
        report = transfer_from_runs(store, TARGET, [SOURCE])
        assert report.runs == 10 and report.rows == len(store.measured_keys(SOURCE))
        rows = store.measurements(TARGET)
        assert {r.source for r in rows} == {"transferred"} and len(rows) == report.rows
        assert all(r.expected_error > 0 and r.stats.p10_us <= r.stats.median_us <= r.stats.p90_us for r in rows)
        target = Estimator(TARGET, store=store)
        assert target.table_canary_us == pytest.approx(TARGET_CANARY_US, rel=0.02)  # the runs' median canary
        estimates = [target.estimate(a) for a in check_archs]
        runs = store.e2e_runs(TARGET, tag=TRANSFER_TAG)
        # the fit reproduces its own runs as measured
        fitted = [target.estimate(r.arch).latency_ms / (r.stats.median_us / 1e3) for r in runs]
        assert np.median(fitted) == pytest.approx(1.0, abs=0.01)
    # the held-out networks are where the device puts them
    truth = np.array([target_ms(a.specs(), rng, 0.0) for a in check_archs])
    metrics = error_metrics(np.array([e.latency_ms for e in estimates]), truth)
    assert metrics["within_10pct"] == 1.0 and metrics["rmspe"] < 0.03 and metrics["kendall_tau"] >= 0.85
    assert estimates[0].calibration["transferred_from"] == "cpu/torch, 1 thread(s)"
    assert estimates[0].calibration["transfer_runs"] == 10
    assert all(b.source == "transferred" for b in estimates[0].blocks)
    space = TINY_SEARCH_SPACE
    cost = LatencyCost(space, conditions=TARGET, db=db)  # the search's cost is the same function
    point = space.sample(1, seed=13)[0]
    expected = Estimator(TARGET, db=db).estimate(space.arch(point)).latency_ms
    assert cost(*cost.one_hot(point)).item() == pytest.approx(expected, rel=1e-6)
    arch = tmp_path / "arch.json"
    arch.write_text(space.arch(point).to_json())
    shown = lut("estimate", str(arch), "--device", "board", "--backend", "executorch", "--no-profile", "--db", db)
    assert shown.returncode == 0, shown.stderr
    assert "transferred from cpu/torch, 1 thread(s) on 10 end-to-end runs of board" in " ".join(shown.stdout.split())


def test_a_transfer_without_runs_says_how_to_take_them(tmp_path) -> None:
    with LutStore(str(tmp_path / "lut.sqlite")) as store:
        fill(store, SPACE.arch(SPACE.sample(1, seed=0)[0]).specs())
        store.get_or_create_device(TARGET.device, "android", {}, {"model": "Board"})
        with pytest.raises(CalibrationError, match="lut calibrate --device board --from SOURCE --runs N"):
            transfer_from_runs(store, TARGET, [SOURCE])


def test_two_threads_from_one_on_this_host_through_the_command(tmp_path) -> None:
    """A real pair of this host's conditions (1 -> 2 threads), measured: the source's blocks timed inside
    the networks (lut profile's default), five whole-network runs on the target, its table transferred."""
    db = str(tmp_path / "lut.sqlite")
    archs = transfer_archs(5, seed=0, space=str(TINY_SPACE), models=())
    files = []
    for arch in archs:
        files += ["--arch", str(tmp_path / f"{arch.name}.json")]
        (tmp_path / f"{arch.name}.json").write_text(arch.to_json())
    lut("profile", *files, "--threads", "1", "--protocol", "quick", "--db", db, check=True)
    out = lut(
        "calibrate",
        *("--device", "cpu", "--threads", "2", "--from", "cpu", "--from-threads", "1", "--runs", "5"),
        *("--models", "none", "--space", str(TINY_SPACE), "--protocol", "quick", "--json", "--db", db),
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["runs"] == 5 and report["transferred_from"] == ["cpu/torch, 1 thread(s)"]
    with LutStore(db) as store:
        rows = store.measurements(Conditions("cpu", "torch", threads=2))
        assert rows and {r.source for r in rows} == {"transferred"}
        assert len(store.e2e_runs(Conditions("cpu", "torch", threads=2), tag=TRANSFER_TAG)) == 5
    shown = json.loads(
        lut(
            "estimate", str(tmp_path / f"{archs[0].name}.json"), "--threads", "2", "--no-profile", "--json", "--db", db
        ).stdout
    )
    assert shown["calibration"]["transferred_from"] == "cpu/torch, 1 thread(s)" and shown["latency_ms"] > 0

    # sources that cannot be: refused in one sentence before any network runs, the table as it was
    def counts() -> tuple[int, ...]:
        with LutStore(db) as store, store.engine.connect() as conn:
            return tuple(
                conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("e2e_runs", "fits", "measurements")
            )

    before = counts()
    common = ["calibrate", "--device", "cpu", "--threads", "2", "--runs", "5", "--models", "none"]
    common += ["--space", str(TINY_SPACE), "--protocol", "quick", "--db", db]
    for extra, said in [
        (["--from", "cpu", "--from-threads", "2"], "--from cpu is the target itself (cpu/torch, 2 thread(s))"),
        (["--from", "cpu", "--from-backend", "tflite"], "Unknown backend 'tflite'; known backends: torch"),
        (["--from", "pixel", "--from-threads", "1"], "The table has no measured rows for the source pixel/torch"),
        (["--from", "cpu/0"], "'cpu/0' is not a device name"),
        (["--from", "cpu", "--from-threads", "1", "--runs", "100000"], "Invalid value for '--runs'"),
    ]:
        refused = lut(*common, *extra)
        assert refused.returncode == 2 and said in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert counts() == before


def test_a_source_on_this_host_that_lacks_networks_is_filled_first_or_named(tmp_path) -> None:
    """The newcomer's case: the source profiled for two of the five networks the transfer runs. With
    --no-profile the transfer stops before running anything on the target, naming what is missing; without,
    it measures the source's missing blocks first and then transfers on all five runs."""
    db = str(tmp_path / "lut.sqlite")
    archs = transfer_archs(5, seed=0, space=str(TINY_SPACE), models=())
    for arch in archs:
        (tmp_path / f"{arch.name}.json").write_text(arch.to_json())
    profiled = [f for arch in archs[:2] for f in ("--arch", str(tmp_path / f"{arch.name}.json"))]
    lut("profile", *profiled, "--threads", "1", "--protocol", "quick", "--db", db, check=True)
    source = Conditions("cpu", "torch", threads=1)
    lacking = [a for a in archs if Estimator(source, db=db).missing(a)]
    assert len(lacking) >= 1
    common = ["calibrate", "--device", "cpu", "--threads", "2", "--from", "cpu", "--from-threads", "1", "--runs", "5"]
    common += ["--models", "none", "--space", str(TINY_SPACE), "--protocol", "quick", "--db", db]
    refused = lut(*common, "--no-profile")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"lacks blocks of {len(lacking)} of the 5 networks the transfer runs" in refused.stderr
    assert "this command without --no-profile" in refused.stderr
    with LutStore(db) as store:
        assert store.e2e_runs(Conditions("cpu", "torch", threads=2)) == []  # nothing ran on the target
    report = json.loads(lut(*common, "--json", check=True).stdout)
    assert report["runs"] == 5  # every run is covered by the source's table now
    assert all(not Estimator(source, db=db).missing(a) for a in archs)
