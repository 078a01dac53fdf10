"""`lut models` and `lut blocks`: JSON shapes, tables and exit codes, in-process and as a real command."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from latency.cli import app

from .test_arch import TINY
from .test_family import GROUND_TRUTH, UNAVAILABLE

runner = CliRunner()


def test_models_json_has_ten_rows_matching_ground_truth() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [*GROUND_TRUTH, *UNAVAILABLE]
    for row in rows:
        assert {"name", "resolution", "flops_m", "params_m", "top1", "available"} <= set(row)
        if row["name"] in GROUND_TRUTH:
            resolution, flops_m, params_m, _ = GROUND_TRUTH[row["name"]]
            assert row["available"] is True
            assert (row["resolution"], round(row["flops_m"], 3), round(row["params_m"], 3)) == (
                resolution,
                flops_m,
                params_m,
            )
        else:
            assert row["available"] is False and row["flops_m"] is None
            assert (row["params_m"], row["top1"]) == UNAVAILABLE[row["name"]]
    f2 = rows[1]
    assert f2["resolution"] == 160 and f2["published"]["resolution"] == 224


def test_models_table_marks_the_copy_errors() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    line = next(line for line in result.stdout.splitlines() if "dmasking_f3" in line)
    assert "192" in line and "224*" in line and "121.824" in line
    assert "no public arch" in next(line for line in result.stdout.splitlines() if "dmasking_p2" in line)


def test_blocks_json_lists_every_block() -> None:
    result = runner.invoke(app, ["blocks", "dmasking_f1", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert len(rows) == 18 and rows[0]["kind"] == "stem" and rows[-1]["kind"] == "classifier"
    assert rows[0]["input_shape"] == [1, 3, 128, 128] and rows[-1]["output_shape"] == [1, 1000]
    for row in rows:
        assert {"key", "kind", "input_shape", "output_shape", "flops_m", "params_m"} <= set(row)
    assert round(sum(r["flops_m"] for r in rows), 3) == 56.411
    for before, after in itertools.pairwise(rows):
        assert before["output_shape"] == after["input_shape"]


def test_blocks_of_an_arch_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    result = runner.invoke(app, ["blocks", str(path), "--batch", "4"])
    assert result.exit_code == 0
    assert "ir_k5_s2_c8-32-16_se8_hswish_16x16_b4_fp32" in result.stdout


def test_unknown_model_exits_2_listing_names() -> None:
    result = runner.invoke(app, ["blocks", "dmasking_x1"])
    assert result.exit_code == 2
    assert "Unknown model 'dmasking_x1'; known models: dmasking_f1" in result.stderr


def test_unavailable_model_exits_nonzero_with_the_reason() -> None:
    result = runner.invoke(app, ["blocks", "dmasking_p3", "--json"])
    assert result.exit_code != 0 and result.stdout == ""
    assert "dmasking_p3 cannot be used: no public architecture definition exists" in result.stderr


def test_malformed_arch_exits_nonzero_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**TINY, "resolution": -1}))
    result = runner.invoke(app, ["blocks", str(path)])
    assert result.exit_code == 1
    assert "resolution must be positive, got -1" in result.stderr


def test_real_command_prints_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "latency.cli", "blocks", "dmasking_p1"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "dmasking_p1 cannot be used" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
