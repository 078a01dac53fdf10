"""`lut estimate`, `calibrate`, `validate`, `rank`, `sample`, `space show`: real processes, real
measurements with the quick protocol, one table shared through the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latency.models import blocks_of, list_models
from latency.space import get_space
from lut_db import LutStore

ENV = {**os.environ, "LUT_PROTOCOL": "quick"}


def lut(*args: str, db: str | None = None) -> subprocess.CompletedProcess:
    extra = ["--db", db] if db else []
    return subprocess.run(
        [sys.executable, "-m", "latency.cli", *args, *extra],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
        timeout=900,
    )


def ok(proc: subprocess.CompletedProcess) -> dict | list:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("estimate") / "lut.sqlite")


def test_estimate_on_a_fresh_table_measures_then_answers(db: str) -> None:
    out = ok(lut("estimate", "dmasking_f3", "--json", db=db))
    assert {"model", "device", "backend", "latency_ms", "sum_ms", "interval_ms", "calibrated", "blocks"} <= set(out)
    assert out["model"] == "dmasking_f3" and out["device"] == "cpu" and out["backend"] == "torch"
    assert out["calibrated"] is False and out["latency_ms"] == pytest.approx(out["sum_ms"])
    low, high = out["interval_ms"]
    assert low <= out["latency_ms"] <= high
    assert [b["key"] for b in out["blocks"]] == [s.key for s in blocks_of("dmasking_f3")]
    assert all(b["source"] == "measured" and b["latency_ms"] > 0 for b in out["blocks"])
    assert sum(b["latency_ms"] for b in out["blocks"]) == pytest.approx(out["sum_ms"])
    table = lut("estimate", "dmasking_f3", "--breakdown", db=db).stdout
    assert "uncalibrated" in table and "stem_k3_s2_c3-8-8_se0_hswish_192x192_b1_fp32" in table


def test_missing_blocks_with_no_profile_or_strict_are_an_error(db: str) -> None:
    for flag in ("--no-profile", "--strict"):
        proc = lut("estimate", "dmasking_l3", flag, db=db)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "blocks of dmasking_l3 are not in the table" in proc.stderr
        assert "lut profile --device cpu --backend torch" in proc.stderr and "--models dmasking_l3" in proc.stderr


def test_calibrate_then_estimates_say_so(db: str) -> None:
    out = ok(lut("calibrate", "--models", "dmasking_f1,dmasking_f2,dmasking_f3", "--random", "3", "--json", db=db))
    assert out["runs"] == 6 and out["model"] in ("scale", "per_block", "traffic")
    assert {"cv_rmspe", "cv_mape", "cv_within_10pct", "residual_q05", "residual_q95"} <= set(out["metrics"])
    estimate = ok(lut("estimate", "dmasking_f3", "--json", db=db))
    assert estimate["calibrated"] is True and estimate["calibration"]["model"] == out["model"]
    assert estimate["latency_ms"] != pytest.approx(estimate["sum_ms"], rel=1e-9)


def test_validate_reports_the_field_metrics_and_draws_them(db: str, tmp_path: Path) -> None:
    plot = tmp_path / "validate.png"
    out = ok(
        lut("validate", "--models", "dmasking_f1,dmasking_f4", "--random", "2", "--plot", str(plot), "--json", db=db)
    )
    assert {"n", "within_10pct", "rmspe", "mape", "kendall_tau", "spearman_rho", "rows", "plain"} <= set(out)
    assert out["n"] == 4 and len(out["rows"]) == 4 and 0 <= out["within_10pct"] <= 1
    f1 = next(r for r in out["rows"] if r["name"] == "dmasking_f1")
    assert f1["in_calibration"] is True and f1["family"] is True
    assert f1["error"] == pytest.approx(f1["estimated_then_ms"] / f1["measured_ms"] - 1)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


def test_rank_orders_the_family_with_pareto_and_budget(db: str, tmp_path: Path) -> None:
    plot = tmp_path / "rank.png"
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


def test_sample_writes_files_the_rest_of_lut_accepts(db: str, tmp_path: Path) -> None:
    out = ok(lut("sample", "--n", "3", "--seed", "7", "--out", str(tmp_path / "s"), "--json"))
    files = [Path(f) for f in out["files"]]
    assert len(files) == 3 and all(f.is_file() for f in files)
    again = ok(lut("sample", "--n", "3", "--seed", "7", "--out", str(tmp_path / "t"), "--json"))
    assert [Path(f).read_text() for f in again["files"]] == [f.read_text() for f in files]  # seeded
    estimate = ok(lut("estimate", str(files[0]), "--json", db=db))
    assert estimate["model"] == files[0].stem and estimate["latency_ms"] > 0
    blocks = ok(lut("blocks", str(files[0]), "--json"))
    assert len(blocks) == len(get_space().blocks)


def test_space_show(db: str) -> None:
    out = ok(lut("space", "show", "--json"))
    assert out["name"] == "fbnetv2_f4" and out["resolutions"] == [128, 160, 192, 224]
    assert out["size"] == get_space().size and out["grid_blocks"] == 1321
    assert "dmasking_f4 is the point" in lut("space", "show").stdout
    unknown = lut("space", "show", "nas101")
    assert unknown.returncode == 2 and "Unknown search space 'nas101'" in unknown.stderr


def test_profiling_a_space_within_a_budget_measures_corners_and_predicts_the_rest(tmp_path: Path) -> None:
    db = str(tmp_path / "space.sqlite")
    out = ok(lut("profile", "--space", "fbnetv2_f1", "--budget-min", "0.5", "--json", db=db))
    grid = len(get_space("fbnetv2_f1").all_specs())
    assert out["grid"] == grid and out["measured_now"] > 0
    assert out["measured_now"] + out["predicted"] == grid
    assert 0 < out["predictor"]["cv_median_error"] < 1
    with LutStore(db) as store:
        predicted = store.measurements(device="cpu", source="predicted")
        assert len(predicted) == out["predicted"]
        assert all(r.expected_error and r.expected_error > 0 and r.n == 0 for r in predicted)
    estimate = ok(lut("estimate", "dmasking_f2", "--no-profile", "--json", db=db))
    assert {b["source"] for b in estimate["blocks"]} <= {"measured", "predicted"}
