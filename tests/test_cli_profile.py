"""`lut profile`, `lut devices`, `lut export`/`import`: the app in this process (tests/cli.py) and, where
the process is what is tested (concurrency, SIGKILL), real processes; a real SQLite file.

The quick protocol keeps these fast; the measurement path is the same as the standard one.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latency.vocab.conditions import Conditions
from latency.vocab.family import blocks_of, resolve_arch
from latency.vocab.space import SpacePoint, get_space
from lut_db import LutStore
from profilers.targets import ArchTarget
from tests.cli import TINY_SPACE, Ran
from tests.cli import lut as run_lut

LUT = [sys.executable, "-m", "latency.cli"]
# The smallest architecture there is (stem, one ir block, head, classifier).
SE_BLOCK = {"op": "ir_k3_sehsig_hs", "c_out": 8, "mid": 16}
FOUR_BLOCKS = {
    "resolution": 32,
    "blocks": [
        {"op": "conv_k3_hs", "c_out": 8, "stride": 2},
        {"op": "ir_k3", "c_out": 8, "mid": 16},
        {"op": "ir_pool_hs", "c_out": 32},
        {"op": "fc", "c_out": 10},
    ],
}


def lut(*args: str, check: bool = True, env: dict | None = None) -> Ran:
    return run_lut(*args, env=env, check=check)


def unique_keys(*models: str) -> set[str]:
    return {s.key for m in models for s in blocks_of(m)}


def test_profile_fills_the_table_then_measures_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    first = json.loads(lut("profile", "--models", "dmasking_f1", "--protocol", "quick", "--db", db, "--json").stdout)
    expected = unique_keys("dmasking_f1")
    assert first["requested"] == len(expected) == first["measured"] and first["already_present"] == 0
    with LutStore(db) as store:
        assert store.measured_keys(Conditions("cpu", "torch")) == expected
        rows = store.measurements(Conditions("cpu"))
        assert all(
            r.stats.median_us > 0 and r.stats.trials == 3 and r.stats.p10_us <= r.stats.median_us <= r.stats.p90_us
            for r in rows
        )
        assert all(r.provenance.canary_ratio and r.provenance.protocol["name"] == "quick" for r in rows)
        assert {r.backend_version for r in rows} == {first["backend_version"]}
    second = json.loads(lut("profile", "--models", "dmasking_f1", "--protocol", "quick", "--db", db, "--json").stdout)
    assert second["measured"] == 0 and second["already_present"] == len(expected)
    table = lut("profile", "--models", "dmasking_f1", "--protocol", "quick", "--db", db).stdout
    assert f"0 measured, {len(expected)} already in the table" in table


def test_arch_file_threads_and_force(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(FOUR_BLOCKS))
    out = json.loads(
        lut("profile", "--arch", str(arch), "--threads", "2", "--protocol", "quick", "--db", db, "--json").stdout
    )
    assert out["measured"] == 4 and out["threads"] == 2
    forced = json.loads(
        lut(
            "profile", "--arch", str(arch), "--threads", "2", "--force", "--protocol", "quick", "--db", db, "--json"
        ).stdout
    )
    assert forced["measured"] == 4
    with LutStore(db) as store:
        assert len(store.measurements(Conditions("cpu", threads=2))) == 4  # upserted, not duplicated
        assert store.measured_keys(Conditions("cpu", "torch")) == set()


def tiny_archs(folder: Path) -> list[Path]:
    """Three small points of the test space: they share some blocks and differ in others."""
    space = get_space(str(TINY_SPACE))
    paths = []
    points = [SpacePoint(0, (0, 0), (0, 0)), SpacePoint(0, (0, 1), (2, 0)), SpacePoint(0, (2, 2), (1, 1))]
    for i, point in enumerate(points):
        path = folder / f"tiny{i}.json"
        path.write_text(space.arch(point).to_json())
        paths.append(path)
    return paths


def arch_keys(*paths: Path) -> set[str]:
    return {s.key for p in paths for s in blocks_of(p)}


def test_concurrent_profiles_lose_nothing(tmp_path: Path) -> None:
    # Two processes (four writers at the store's level: tests/test_store_sqlite.py); each `lut` process
    # here imports torch for its worker, minutes for four on a slow 2-core CI machine.
    db = str(tmp_path / "lut.sqlite")
    a, b, _ = tiny_archs(tmp_path)
    archs = [a, b]
    assert arch_keys(a) & arch_keys(b) and arch_keys(a) ^ arch_keys(b)  # overlapping on purpose
    procs = [
        subprocess.Popen(
            [*LUT, "profile", "--arch", str(arch), "--protocol", "quick", "--db", db, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arch in archs
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert "database is locked" not in stderr
    with LutStore(db) as store:
        assert store.measured_keys(Conditions("cpu", "torch")) == arch_keys(*archs)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def count_rows(db: str) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT count(*) FROM measurements").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_midway_then_resume_measures_only_what_is_missing(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    args = ["profile", "--models", "dmasking_f1", "--isolated", "--protocol", "quick", "--db", db, "--json"]
    proc = subprocess.Popen([*LUT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # A fresh process imports torch and starts its workers first: minutes on a loaded 2-core CI machine.
    deadline = time.monotonic() + 600
    while count_rows(db) < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    assert count_rows(db) >= 8, "no 8 blocks stored in 10 minutes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = count_rows(db)
    total = len(unique_keys("dmasking_f1"))
    assert 8 <= stored < total
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = json.loads(lut(*args).stdout)
    assert resumed["already_present"] == stored and resumed["measured"] == total - stored
    assert count_rows(db) == total


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--device", "tpu 0"], 2, "'tpu 0' is not a device name: use cpu, cuda[:N], or a phone's name"),
        (["--backend", "tflite"], 2, "Device 'cpu' has no backend 'tflite'; its backends: torch"),
        (["--models", "dmasking_p2"], 2, "dmasking_p2 cannot be used: no public architecture"),
        (["--models", "resnet50"], 2, "Unknown model 'resnet50'; known models:"),
        (["--protocol", "slow"], 2, "Unknown protocol 'slow'"),
        (["--db", "mysql+nodriver://x/y"], 1, "Cannot open the lut database"),
    ],
)
def test_bad_input_exits_with_one_sentence(args: list[str], code: int, message: str, tmp_path: Path) -> None:
    base = ["profile", "--models", "dmasking_f1", "--db", str(tmp_path / "t.sqlite")]
    proc = lut(*base, *args, check=False)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_file_that_is_not_a_lut_table_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    proc = lut("profile", "--models", "dmasking_f1", "--db", str(path), check=False)
    assert proc.returncode == 1 and "is not a lut database" in proc.stderr
    assert path.read_bytes() == before


def test_devices_export_and_import(tmp_path: Path) -> None:
    db, copy, csv = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite"), tmp_path / "cpu.csv"
    arch = tiny_archs(tmp_path)[2]
    lut("profile", "--arch", str(arch), "--protocol", "quick", "--db", db)
    devices = json.loads(lut("devices", "--db", db, "--json").stdout)
    assert [d["name"] for d in devices] == ["cpu"] and devices[0]["measurements"] == len(arch_keys(arch))
    assert devices[0]["fingerprint"]["logical_cpus"] == os.cpu_count()
    exported = json.loads(lut("export", "--device", "cpu", "--out", str(csv), "--db", db, "--json").stdout)
    assert exported["rows"] == devices[0]["measurements"]
    imported = json.loads(lut("import", str(csv), "--db", copy, "--json").stdout)
    assert imported["rows"] == exported["rows"]
    with LutStore(db) as a, LutStore(copy) as b:
        assert (
            a.to_pandas()
            .sort_values("block_key")
            .reset_index(drop=True)
            .equals(b.to_pandas().sort_values("block_key").reset_index(drop=True))
        )
    missing = lut("export", "--device", "pixel", "--out", str(csv), "--db", db, check=False)
    assert missing.returncode == 1 and "Device 'pixel' is not in" in missing.stderr


@pytest.mark.parametrize("backend", ["onnxruntime", "executorch"])
def test_profile_with_other_host_backends(backend: str, tmp_path: Path) -> None:
    pytest.importorskip(backend)
    db = str(tmp_path / "lut.sqlite")
    arch = tmp_path / "four.json"  # few blocks: each is exported first (a minute each on a slow CI machine)
    arch.write_text(json.dumps(FOUR_BLOCKS))
    out = json.loads(
        lut("profile", "--arch", str(arch), "--backend", backend, "--protocol", "quick", "--db", db, "--json").stdout
    )
    assert out["backend"] == backend and out["measured"] == len(arch_keys(arch)) and not out["failed"]
    with LutStore(db) as store:
        rows = store.measurements(Conditions("cpu"))
        assert {r.conditions.backend for r in rows} == {backend} and all(r.stats.median_us > 0 for r in rows)


def test_int8_blocks_are_quantized_lowered_timed_and_estimated_from_int8_rows_only(tmp_path: Path) -> None:
    pytest.importorskip("executorch")
    from profilers.backends.executorch_cpu import outside_delegate, program_path

    db = str(tmp_path / "lut.sqlite")
    arch = tmp_path / "four.json"  # with squeeze-excite: its program runs ops outside the XNNPACK delegate
    arch.write_text(
        json.dumps({**FOUR_BLOCKS, "blocks": [FOUR_BLOCKS["blocks"][0], SE_BLOCK, *FOUR_BLOCKS["blocks"][2:]]})
    )
    refused = lut("profile", "--arch", str(arch), "--dtype", "int8", "--protocol", "quick", "--db", db, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "int8 runs on the executorch backend (XNNPACK's quantized kernels, as phones run it), not on torch" in (
        refused.stderr
    )
    common = ["--arch", str(arch), "--backend", "executorch", "--protocol", "quick", "--db", db, "--json"]
    for dtype in ("fp32", "int8"):  # the same blocks in both: an estimate must take its own dtype's rows
        out = json.loads(lut("profile", *common, "--dtype", dtype).stdout)
        assert out["measured"] == len(arch_keys(arch)) and not out["failed"]
    with LutStore(db) as store:
        int8 = store.measurements(Conditions("cpu", "executorch", dtype="int8"))
        assert len(int8) == len(arch_keys(arch)) and all(r.block_key.endswith("_int8") for r in int8)
        assert all(r.stats.median_us > 0 and r.conditions.dtype == "int8" for r in int8)
    estimate = json.loads(
        lut(
            "estimate", str(arch), "--backend", "executorch", "--dtype", "int8", "--no-profile", "--json", "--db", db
        ).stdout
    )
    assert {b["key"] for b in estimate["blocks"]} == {r.block_key for r in int8} and estimate["dtype"] == "int8"
    assert estimate["sum_ms"] == pytest.approx(sum(r.stats.median_us for r in int8) / 1e3)
    # What did not lower: read from each row's program, kept with the row, shown by blocks and estimate.
    outside = {r.block_key: r.provenance.protocol["outside_delegate"] for r in int8}
    se_key = next(k for k in outside if k.startswith("ir_k3") and "_se0_" not in k)
    assert outside[se_key] and all(n > 0 for n in outside[se_key].values())
    assert not outside[next(k for k in outside if k.startswith("stem_"))]  # a plain conv lowers whole
    assert {b["key"]: b.get("outside_delegate", {}) for b in estimate["blocks"]} == outside
    assert estimate["outside_delegate_blocks"] == sum(map(bool, outside.values()))
    table = ["--device", "cpu", "--backend", "executorch", "--db", db]
    shown = json.loads(lut("blocks", str(arch), "--dtype", "int8", *table, "--json").stdout)
    assert {b["key"]: b["outside_delegate"] for b in shown} == outside
    assert {b["key"]: b["source"] for b in shown} == dict.fromkeys(outside, "measured")
    human = lut(
        "estimate", str(arch), "--backend", "executorch", "--dtype", "int8", "--no-profile", "--breakdown", "--db", db
    )
    op = next(iter(outside[se_key]))
    assert "outside delegate" in human.stdout and op in human.stdout
    assert f"{estimate['outside_delegate_blocks']} of 4 blocks run ops outside the delegate" in human.stdout
    # The whole network timed as a deployment runs it: quantized the same way, one program, its run int8.
    timed = json.loads(
        lut(
            "time", str(arch), "--backend", "executorch", "--dtype", "int8", "--protocol", "quick", "--db", db, "--json"
        ).stdout
    )
    assert timed["dtype"] == "int8" and timed["measured_ms"] > 0
    assert timed["estimated_ms"] == pytest.approx(estimate["latency_ms"])
    network = ArchTarget(resolve_arch(str(arch)), dtype="int8")
    assert program_path(network).exists() and outside_delegate(program_path(network).read_bytes())
    with LutStore(db) as store:
        (run,) = store.e2e_runs(Conditions("cpu", "executorch", dtype="int8"))
        assert run.stats.median_us == pytest.approx(timed["measured_ms"] * 1e3)
        assert run.provenance.protocol["outside_delegate"] == outside_delegate(program_path(network).read_bytes())
