"""The SQLite table under several OS processes: concurrent writers, a writer killed mid-write, import cost."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from lut_db import LutStore

ROOT = Path(__file__).resolve().parent.parent

# A worker: opens the (possibly not yet created) table, registers the shared device, then writes
# `count` distinct blocks and measurements, one transaction each, printing each committed index.
WORKER = """
import sys
from datetime import datetime, timezone
from lut_db import LutStore, MeasurementRecord

path, worker, count, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "wait"
if wait:
    print("ready", flush=True)
    sys.stdin.readline()
store = LutStore(path)
store.get_or_create_device("shared", "cpu", {"worker": worker}, {"cpu": "same"})
for i in range(count):
    key = f"ir_k3_s1_c{worker + 1}-{i + 1}-8_se0_relu_8x8_b1_fp32"
    fields = dict(kind="ir", c_in=worker + 1, mid=i + 1, c_out=8, kernel=3, stride=1, se=0, act="relu", h=8, w=8)
    store.upsert_blocks([{**fields, "key": key, "batch": 1, "dtype": "fp32", "bias": False, "flops": i, "params": i}])
    t = float(i + 1)
    store.put_measurement(MeasurementRecord(
        key, "shared", "torch_cpu", "2.13.0", 1, "fp32", 1, t, t, t, 0.0, t, 0.0, t, 50, 3, None, None,
        {"worker": worker}, {}, datetime.now(timezone.utc), True,
    ))
    print(i, flush=True)
store.close()
"""


def _spawn(script: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_four_processes_write_concurrently(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    db = tmp_path / "shared.sqlite"
    procs = [_spawn(script, str(db), str(w), "200", "wait") for w in range(4)]
    for proc in procs:  # all interpreters up before any opens the table: schema creation races too
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split() == [str(i) for i in range(200)]
    with LutStore(db) as store:
        rows = store.measurements(device="shared")
        assert len(rows) == 800 and len({r.block_key for r in rows}) == 800
        assert {r.protocol["worker"] for r in rows} == {0, 1, 2, 3}
        assert [d.n_measurements for d in store.devices()] == [800]


def test_sigkill_mid_write_loses_nothing_committed(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    db = tmp_path / "killed.sqlite"
    proc = _spawn(script, str(db), "0", "100000", "go")
    reported = []
    target = random.Random(os.getpid()).randint(80, 160)  # a different moment on each run
    while len(reported) < target:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        reported.append(int(line))
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    reported += [int(x) for x in out.split()]  # printed before the kill landed
    assert proc.returncode == -signal.SIGKILL
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with LutStore(db) as store:
        stored = {r.median_us for r in store.measurements(device="shared")}
        assert {float(i + 1) for i in reported} <= stored
        assert len(stored) <= len(reported) + 1  # at most the row being written when killed
        assert len(store.to_pandas("blocks")) >= len(stored)


def test_importing_lut_db_imports_neither_torch_nor_pandas() -> None:
    code = "import sys, lut_db, lut_db.store; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
