"""`lut estimate`, `calibrate`, `validate`, `rank`, `sample`, `space show`: the real app run in this
process (tests/cli.py), real measurements with the quick protocol, one table shared through the module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latency.vocab.conditions import Conditions
from latency.vocab.family import blocks_of, list_models
from latency.vocab.space import get_space
from lut_db import LutStore
from profilers.worker import MALLOC_ENV
from tests.cli import QUICK, TINY_SPACE, Ran
from tests.cli import lut as run_lut
from tests.test_estimate import fake_latency_us, fill


def lut(*args: str, db: str | None = None) -> Ran:
    return run_lut(*args, *(["--db", db] if db else []), env=QUICK)


def ok(proc: Ran) -> dict | list:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("estimate") / "lut.sqlite")


@pytest.fixture(scope="module")
def calibration(db: str) -> Ran:
    """The shared table calibrated once (it measures what it lacks), for every test that needs it."""
    return lut("calibrate", "--models", "dmasking_f3", "--random", "5", "--space", str(TINY_SPACE), "--json", db=db)


def test_estimate_on_a_fresh_table_measures_then_answers(db: str) -> None:
    out = ok(lut("estimate", "dmasking_f3", "--json", db=db))
    assert {"model", "device", "backend", "latency_ms", "sum_ms", "interval_ms", "calibrated", "blocks"} <= set(out)
    assert out["model"] == "dmasking_f3" and out["device"] == "cpu" and out["backend"] == "torch"
    assert out["calibrated"] is False and out["latency_ms"] == pytest.approx(out["sum_ms"])
    low, high = out["interval_ms"]
    assert low <= out["latency_ms"] <= high
    assert [b["key"] for b in out["blocks"]] == [s.key for s in blocks_of("dmasking_f3")]
    assert all(b["source"] == "measured" and b["latency_ms"] > 0 for b in out["blocks"])
    assert out["warm_heap_blocks"] == 0 and out["deploy_env"] == "default"
    with LutStore(db) as store:  # every block timed on a cold heap, and the rows say so
        assert all(r.provenance.protocol["cold_heap"] is True for r in store.measurements(Conditions("cpu")))
    assert sum(b["latency_ms"] for b in out["blocks"]) == pytest.approx(out["sum_ms"])
    table = lut("estimate", "dmasking_f3", "--breakdown", db=db).stdout
    assert "uncalibrated" in table and "stem_k3_s2_c3-8-8_se0_hswish_192x192_b1_fp32" in table
    first = f"dmasking_f3 on cpu (torch, 1 thread(s), batch 1, fp32): {out['latency_ms']:.3f} ms (interval "
    assert table.startswith(first) and "[" not in table.splitlines()[0]  # plain text: no markup leaks


def test_missing_blocks_with_no_profile_or_strict_are_an_error(db: str) -> None:
    for flag in ("--no-profile", "--strict"):
        proc = lut("estimate", "dmasking_l3", flag, db=db)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "blocks of dmasking_l3 are not in the table" in proc.stderr
        assert "lut profile --device cpu --backend torch" in proc.stderr and "--models dmasking_l3" in proc.stderr


def test_calibrate_then_estimates_say_so(db: str, calibration: Ran) -> None:
    out = ok(calibration)
    # stderr is a pipe here, not a terminal: progress comes as plain lines, from the start to the end
    assert "calibrating cpu: 0/" in calibration.stderr and " done, " in calibration.stderr
    # dmasking_f3's blocks were timed inside it (the estimate above, when it ran first), the sampled
    # networks' alone: one run of a kind cannot carry a scale of its own, so the fit is made on the five
    # sampled ones and corrects blocks timed alone only
    assert out["runs"] == out["metrics"]["cv_n"] and out["model"] != "per_kind"
    assert {"cv_rmspe", "cv_mape", "cv_within_10pct", "residual_q05", "residual_q95"} <= set(out["metrics"])
    estimate = ok(lut("estimate", "dmasking_f3", "--json", db=db))
    assert estimate["calibrated"] is True and estimate["calibration"]["model"] == out["model"]
    if estimate["uncorrected_blocks"]:  # f3 timed in context, the fit on runs timed alone: its plain sum
        assert out["contexts"] == ["alone"] and estimate["uncorrected_blocks"] == len(estimate["blocks"])
        assert out["runs"] == 5  # f3's run left out of the fit
        assert estimate["latency_ms"] == pytest.approx(estimate["sum_ms"] + out["intercept"], rel=1e-9)
    else:
        assert estimate["latency_ms"] != pytest.approx(estimate["sum_ms"], rel=1e-9)


@pytest.mark.usefixtures("calibration")
def test_validate_reports_the_field_metrics_and_draws_them(db: str, tmp_path: Path) -> None:
    plot = tmp_path / "validate.png"
    out = ok(
        lut(
            "validate",
            *("--models", "dmasking_f3", "--random", "3", "--space", str(TINY_SPACE)),
            *("--plot", str(plot), "--json"),
            db=db,
        )
    )
    top = {"n", "within_10pct", "rmspe", "mape", "median_error", "kendall_tau", "spearman_rho", "rows"}
    assert top | {"at_run_speed", "repeatability", "interval_coverage"} <= set(out)
    assert out["n"] == 4 and len(out["rows"]) == 4
    # the headline is what a user sees: each estimate against its run as measured
    assert out["within_10pct"] == pytest.approx(sum(abs(r["error"]) <= 0.10 for r in out["rows"]) / 4)
    f3 = next(r for r in out["rows"] if r["name"] == "dmasking_f3")
    assert f3["in_calibration"] is True and f3["family"] is True
    assert f3["error"] == pytest.approx(f3["estimated_ms"] / f3["measured_ms"] - 1)
    assert f3["error_at_run_speed"] == pytest.approx(f3["estimated_then_ms"] / f3["measured_ms"] - 1)
    errors = sorted(r["estimated_ms"] / r["measured_ms"] - 1 for r in out["rows"])
    assert out["median_error"] == pytest.approx((errors[1] + errors[2]) / 2)
    assert out["at_run_speed"]["n"] == 4
    # the quick protocol times a network's trials in one process: no fresh-process repeats to show
    assert all(r["process_medians_ms"] == [] for r in out["rows"]) and out["repeatability"]["networks"] == 0
    # The estimate of f3 timed its blocks inside it (when it ran first): the report says so, row by row; the
    # sampled networks' blocks were timed alone for this validation.
    with LutStore(db) as store:
        rows = store.measurement_map(Conditions("cpu", "torch"))
        keys = {s.key for s in blocks_of("dmasking_f3")}
        inside = sum("dmasking_f3" in rows[k].provenance.environment.get("appearance_networks", ()) for k in keys)
    assert f3["blocks_timed_inside_it"] == inside
    assert all(r["blocks_timed_inside_it"] == 0 for r in out["rows"] if not r["family"])
    held_out = [r for r in out["rows"] if not r["in_calibration"] and not r["blocks_timed_inside_it"]]
    assert held_out and out["held_out"]["n"] == len(held_out)  # neither calibrated on nor timed in context
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000
    # for a person: the comparison as measured first, the view at the run's speed after it (the runs are stored)
    shown = lut("validate", "--models", "dmasking_f3", "--random", "3", "--space", str(TINY_SPACE), db=db)
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    first = next(i for i, line in enumerate(lines) if line.startswith("as measured: n=4"))
    assert f"within 10%: {out['within_10pct']:.0%} RMSPE {out['rmspe']:.1%}" in lines[first]
    later = " ".join(lines[first + 1 :])
    assert "restated at its run's speed" in later and "noise floor" not in later  # quick: one process per run


@pytest.mark.usefixtures("calibration")
def test_time_measures_as_a_users_process_and_prints_the_estimate_beside(db: str) -> None:
    out = ok(lut("time", "dmasking_f3", "--json", db=db))
    assert out["name"] == "dmasking_f3" and out["deploy_env"] == "default" and out["trials"] == 3
    assert out["p10_ms"] <= out["measured_ms"] <= out["p90_ms"] and out["calls"] >= 9
    assert out["calibrated"] is True and out["estimated_ms"] > 0 and out["estimated_then_ms"] > 0
    assert out["difference"] == pytest.approx(out["measured_ms"] / out["estimated_ms"] - 1)  # what a user sees
    assert out["difference_at_run_speed"] == pytest.approx(out["measured_ms"] / out["estimated_then_ms"] - 1)
    with LutStore(db) as store:  # f3's blocks were timed inside it (the estimate before): the report says so
        rows = store.measurement_map(Conditions("cpu", "torch"))
        inside = sum(
            "dmasking_f3" in rows[s.key].provenance.environment.get("appearance_networks", ())
            for s in blocks_of("dmasking_f3")
        )
    assert out["blocks_timed_inside_it"] == inside
    with LutStore(db) as store:
        runs = [r for r in store.e2e_runs(Conditions("cpu"), tag="time") if r.arch_name == "dmasking_f3"]
        calibration = store.e2e_runs(Conditions("cpu"), tag="calibration")
    # A plain process: none of the block workers' allocator settings; the canary timed beside it.
    assert len(runs) == 1 and runs[0].deploy_env == "default" and runs[0].provenance.protocol["deploy_env"] == "default"
    assert (
        runs[0].provenance.environment["malloc"] == {k: None for k in MALLOC_ENV} and runs[0].provenance.canary_us > 0
    )
    assert calibration and all(r.deploy_env == "default" for r in calibration)
    assert not any(value for r in calibration for value in r.provenance.environment["malloc"].values())


@pytest.mark.usefixtures("calibration")
def test_a_calibration_serves_only_its_own_deployment(db: str) -> None:
    tuned = ok(lut("estimate", "dmasking_f3", "--deploy-env", "tuned-malloc", "--json", db=db))
    assert tuned["calibrated"] is False and tuned["other_calibrations"] == ["default"]
    assert tuned["latency_ms"] == pytest.approx(tuned["sum_ms"])
    hint = lut("estimate", "dmasking_f3", "--deploy-env", "tuned-malloc", db=db).stdout
    assert "lut calibrate --device cpu --deploy-env tuned-malloc" in hint and "is for deployment 'default'" in hint
    bad = lut("time", "dmasking_f1", "--deploy-env", "tuned", db=db)
    assert bad.returncode == 2 and "is not a deployment environment" in bad.stderr and "Traceback" not in bad.stderr


def test_rank_orders_the_family_with_pareto_and_budget(tmp_path: Path) -> None:
    plot = tmp_path / "rank.png"
    db = str(tmp_path / "family.sqlite")  # made-up times for the whole family: ranking is what is tested here
    with LutStore(db) as store:
        fill(store, [s for m in list_models(available_only=True) for s in blocks_of(m)])
    f3 = ok(lut("estimate", "dmasking_f3", "--json", db=db))["latency_ms"]
    out = ok(lut("rank", "--budget-ms", f"{f3 * 1.01:.4f}", "--plot", str(plot), "--json", db=db))
    rows = out["rows"]
    assert {r["name"] for r in rows} == set(list_models(available_only=True))
    latencies = [r["latency_ms"]["cpu"] for r in rows]
    assert latencies == sorted(latencies) and [r["rank"]["cpu"] for r in rows] == list(range(1, 8))
    assert all({"flops_m", "params_m", "top1", "pareto"} <= set(r) for r in rows)
    assert rows[0]["pareto"]["cpu"] is True  # the fastest is never dominated
    fitting = [r for r in rows if r["latency_ms"]["cpu"] <= f3 * 1.01]
    assert out["best_under_budget"]["cpu"] == max(fitting, key=lambda r: r["top1"])["name"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    bad = lut("rank", "--budget-ms", "-3", db=db)
    assert bad.returncode == 2 and "--budget-ms must be positive" in bad.stderr


def test_an_int8_ranking_has_fp32_beside_it_and_names_the_models_that_move(tmp_path: Path) -> None:
    # Made-up ExecuTorch tables: int8 quarters a block's time, but the late blocks (14x14 and smaller, where
    # squeeze-excite and hard-swish sit) gain nothing, so a model with more of its time there falls behind.
    db = str(tmp_path / "family.sqlite")
    models = list_models(available_only=True)
    specs = {dtype: [s for m in models for s in blocks_of(m, dtype=dtype)] for dtype in ("fp32", "int8")}

    def int8_factor(spec) -> float:
        return 1.0 if spec.input_shape[-1] <= 14 else 0.25

    with LutStore(db) as store:
        fill(store, specs["fp32"], backend="executorch")
        for factor in (0.25, 1.0):
            fill(store, [s for s in specs["int8"] if int8_factor(s) == factor], backend="executorch", scale=factor)
    out = ok(lut("rank", "--backend", "executorch", "--dtype", "int8", "--no-profile", "--json", db=db))
    assert out["columns"] == ["cpu int8", "cpu fp32"]
    expected = {
        dtype: {
            m: sum(fake_latency_us(s) * (int8_factor(s) if dtype == "int8" else 1) for s in blocks_of(m, dtype=dtype))
            for m in models
        }
        for dtype in ("int8", "fp32")
    }
    for row in out["rows"]:
        for dtype in ("int8", "fp32"):
            assert row["latency_ms"][f"cpu {dtype}"] == pytest.approx(expected[dtype][row["name"]] / 1e3)
    order = {dtype: sorted(models, key=expected[dtype].get) for dtype in ("int8", "fp32")}
    moved = {m for m in models if order["int8"].index(m) != order["fp32"].index(m)}
    assert moved and {c["name"] for c in out["rank_changes"]} == moved
    assert [r["name"] for r in out["rows"]] == order["int8"]  # ordered by the dtype asked for
    human = lut("rank", "--backend", "executorch", "--dtype", "int8", "--no-profile", db=db)
    assert "cpu int8 (ms)" in human.stdout and "rank cpu fp32" in human.stdout
    assert "lut calibrate --device cpu --backend executorch --dtype int8" in human.stdout


def test_sample_writes_files_the_rest_of_lut_accepts(db: str, tmp_path: Path) -> None:
    sample = ("sample", "--n", "3", "--seed", "7", "--space", str(TINY_SPACE), "--json", "--out")
    out = ok(lut(*sample, str(tmp_path / "s")))
    files = [Path(f) for f in out["files"]]
    assert len(files) == 3 and all(f.is_file() for f in files)
    again = ok(lut(*sample, str(tmp_path / "t")))
    assert [Path(f).read_text() for f in again["files"]] == [f.read_text() for f in files]  # seeded
    estimate = ok(lut("estimate", str(files[0]), "--json", db=db))
    assert estimate["model"] == files[0].stem and estimate["latency_ms"] > 0
    blocks = ok(lut("blocks", str(files[0]), "--json"))
    assert len(blocks) == len(get_space(str(TINY_SPACE)).blocks)


def test_space_show(db: str) -> None:
    out = ok(lut("space", "show", "--json"))
    assert out["name"] == "fbnetv2_f4" and out["resolutions"] == [128, 160, 192, 224]
    assert out["size"] == get_space().size and out["grid_blocks"] == 1321
    assert "family models in it: dmasking_f4 (" in lut("space", "show").stdout
    l1 = lut("space", "show", "fbnetv2_l1").stdout.split("family models in it: ")[1]
    assert "dmasking_l1 (" in l1 and "dmasking_l2 (" in l1 and "dmasking_f4" not in l1
    unknown = lut("space", "show", "nas101")
    assert unknown.returncode == 2 and "Unknown search space 'nas101'" in unknown.stderr
    assert ok(lut("space", "show", str(TINY_SPACE), "--json"))["name"] == "tiny"  # a space file of one's own
    missing = lut("space", "show", "/nonexistent/space.json")
    assert missing.returncode == 2 and "/nonexistent/space.json: cannot read a search space" in missing.stderr


def test_profiling_a_space_within_a_budget_measures_corners_and_predicts_the_rest(tmp_path: Path) -> None:
    db = str(tmp_path / "space.sqlite")
    space = get_space(str(TINY_SPACE))  # a space file of one's own: 17 corners, 43 blocks
    out = ok(lut("profile", "--space", str(TINY_SPACE), "--budget-min", "0.05", "--json", db=db))
    grid = len(space.all_specs())
    assert out["grid"] == grid and out["measured_now"] >= 17  # the corners, always in full
    assert out["in_context"] is True and out["networks"] >= 8  # torch on this host: inside networks of the space
    assert out["measured_now"] + out["predicted"] == grid and out["predicted"] > 0
    assert 0 < out["predictor"]["cv_median_error"] < 1
    with LutStore(db) as store:
        predicted = store.measurements(Conditions("cpu"), source="predicted")
        assert len(predicted) == out["predicted"]
        assert all(r.expected_error and r.expected_error > 0 and r.stats.n == 0 for r in predicted)
        source_of = {r.block_key: r.source for r in store.measurements(Conditions("cpu"))}
    # a point that holds a predicted shape (which shapes the budget reached in context depends on the host's speed)
    point = space.points_holding({predicted[0].block_key})[0]
    holder = tmp_path / "holder.json"
    holder.write_text(space.arch(point).to_json())
    estimate = ok(lut("estimate", str(holder), "--no-profile", "--json", db=db))
    # each block answered from its own row, the predicted one among them
    assert [b["source"] for b in estimate["blocks"]] == [source_of[b["key"]] for b in estimate["blocks"]]
    assert "predicted" in {b["source"] for b in estimate["blocks"]}
