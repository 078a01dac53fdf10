"""The SQLite table under several OS processes: concurrent writers, a writer killed mid-write, import cost."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from latency.vocab.conditions import Conditions
from lut_db import LutStore

ROOT = Path(__file__).resolve().parent.parent

# A worker: opens the (possibly not yet created) table, registers the shared device, then writes
# `count` distinct blocks and measurements, one transaction each, printing each committed index.
WORKER = """
import sys
from datetime import datetime, timezone
from latency.vocab.conditions import Conditions
from latency.vocab.timing import TimingStats
from lut_db import LutStore, MeasurementRecord
from lut_db.records import Provenance

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
        key, Conditions("shared", "torch_cpu"), "2.13.0", TimingStats(t, t, t, 0.0, t, 0.0, t, 50, 3),
        Provenance(None, None, {"worker": worker}, {}, datetime.now(timezone.utc), True),
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
        rows = store.measurements(Conditions("shared"))
        assert len(rows) == 800 and len({r.block_key for r in rows}) == 800
        assert {r.provenance.protocol["worker"] for r in rows} == {0, 1, 2, 3}
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
        stored = {r.stats.median_us for r in store.measurements(Conditions("shared"))}
        assert {float(i + 1) for i in reported} <= stored
        assert len(stored) <= len(reported) + 1  # at most the row being written when killed
        assert len(store.to_pandas("blocks")) >= len(stored)


def test_importing_lut_db_imports_neither_torch_nor_pandas() -> None:
    code = "import sys, lut_db, lut_db.store; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# Reads the table, then tries one write; run as a user without write access to the table.
READER = """
import sys
from lut_db import LutStore, StoreError
with LutStore(sys.argv[1]) as store:
    print(len(store.measurements()))
    try:
        store.get_or_create_device("another", "cpu", {}, {})
    except StoreError as exc:
        print("refused:", exc)
"""


@pytest.mark.parametrize("locked", ["file", "directory"])
def test_a_read_only_table_is_read_and_a_write_is_refused_in_one_sentence(locked: str) -> None:
    from latency.vocab.family import blocks_of
    from tests.test_estimate import fill

    root = os.geteuid() == 0
    # root may write anything: the reads run as an unprivileged user, in a folder that user can reach
    as_reader = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if root else []
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        folder = base / "table"
        folder.mkdir()
        path = folder / "lut.sqlite"
        specs = blocks_of("dmasking_f1")
        with LutStore(str(path)) as store:
            fill(store, specs)
            rows = len(store.measurements())
        if root:
            os.chown(folder, 65534, 65534)
            os.chown(path, 65534, 65534)
        path.chmod(0o444 if locked == "file" else 0o644)
        folder.chmod(0o755 if locked == "file" else 0o555)
        before = path.read_bytes()
        env = {**os.environ, "HOME": str(base), "XDG_CACHE_HOME": str(base), "PYTHONPATH": str(ROOT)}
        if as_reader:
            reach = subprocess.run([*as_reader, sys.executable, "-c", "import lut_db"], env=env, capture_output=True)
            if reach.returncode != 0:
                pytest.skip("the unprivileged user cannot reach this checkout or its Python")
        read = subprocess.run(
            [*as_reader, sys.executable, "-c", READER, str(path)], capture_output=True, text=True, env=env, timeout=600
        )
        assert read.returncode == 0, read.stderr
        count, refused = read.stdout.splitlines()
        assert int(count) == rows
        assert refused.startswith(f"refused: The lut database sqlite:///{path} is read-only here")
        estimate = subprocess.run(
            [
                *as_reader,
                sys.executable,
                "-m",
                "latency.cli",
                "estimate",
                "dmasking_f1",
                "--no-profile",
                "--json",
                "--db",
                str(path),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=900,
        )
        assert estimate.returncode == 0, estimate.stderr
        assert json.loads(estimate.stdout)["latency_ms"] > 0
        assert path.read_bytes() == before
    finally:
        for p in (base / "table", base):
            with contextlib.suppress(OSError):
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
