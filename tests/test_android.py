"""Android over adb: parsing the real tools' outputs, choosing a phone, and the whole orchestration
(discovery, push, run, parse, thermal gating, store) against a stand-in adb that emulates one phone.

Only the phone is a stand-in: `tests/stand_in/adb.py` answers like adb and runs what is pushed on
this host; `tests/stand_in/executor_runner.py` checks that what was pushed is an ExecuTorch program
and logs like the real runner, with the stand-in phone's own times. Everything in profilers/ and
latency/ is the real code (the `lut` app runs in this process, tests/cli.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from latency.vocab.conditions import Conditions
from latency.vocab.family import blocks_of
from latency.vocab.space import get_space
from lut_db import LutStore
from profilers.android import (
    Adb,
    big_core_mask,
    choose_phone,
    parse_devices,
    parse_runner_output,
    parse_thermal_status,
)
from profilers.errors import BlockFailed, ProfilerError
from tests.cli import TINY_SPACE, Ran
from tests.cli import lut as run_lut
from tests.test_estimate import fill

STAND_IN = Path(__file__).parent / "stand_in"
HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None

# Recorded from adb 1.0.41 and a Pixel 7 (serials changed).
DEVICES = """List of devices attached
2A111FDH2004R5         device usb:1-1 product:panther model:Pixel_7 device:panther transport_id:3
R58N12ABCDE            unauthorized usb:1-2 transport_id:4
emulator-5554          offline transport_id:5

"""
# ExecuTorch's executor_runner (examples/portable/executor_runner) log lines.
RUNNER_LOG = """I 00:00:00.001203 executorch:executor_runner.cpp:236] Model file /data/local/tmp/lut/a.pte is loaded.
I 00:00:00.001298 executorch:executor_runner.cpp:246] Using method forward
I 00:00:00.004108 executorch:executor_runner.cpp:378] Model loaded in 2.765000 ms.
I 00:00:00.006511 executorch:executor_runner.cpp:690] Iteration 1 of 5: 2.381000 ms
I 00:00:00.007650 executorch:executor_runner.cpp:690] Iteration 2 of 5: 1.121000 ms
I 00:00:00.008760 executorch:executor_runner.cpp:690] Iteration 3 of 5: 1.093000 ms
I 00:00:00.009871 executorch:executor_runner.cpp:690] Iteration 4 of 5: 1.101000 ms
I 00:00:00.010982 executorch:executor_runner.cpp:690] Iteration 5 of 5: 1.098000 ms
I 00:00:00.011001 executorch:executor_runner.cpp:698] Model executed successfully 5 time(s) in 6.794000 ms.
I 00:00:00.011020 executorch:executor_runner.cpp:705] 1 outputs:
"""


def test_devices_output_is_parsed_with_states_and_models() -> None:
    phones = parse_devices(DEVICES)
    assert [(p.serial, p.state, p.model) for p in phones] == [
        ("2A111FDH2004R5", "device", "Pixel_7"),
        ("R58N12ABCDE", "unauthorized", ""),
        ("emulator-5554", "offline", ""),
    ]
    assert parse_devices("List of devices attached\n\n") == []


def test_runner_log_is_parsed_and_warmups_dropped() -> None:
    assert parse_runner_output(RUNNER_LOG, warmups=1) == pytest.approx([1121.0, 1093.0, 1101.0, 1098.0])
    old = "I 00:00:00.01 executorch:executor_runner.cpp:200] Model executed successfully 5 time(s) in 6.7 ms."
    with pytest.raises(BlockFailed, match="only a total time"):
        parse_runner_output(old, 1)
    with pytest.raises(BlockFailed, match=r"printed no timings: .*Aborted"):
        parse_runner_output("E 00:00:00.1 executorch:method.cpp:1] Execution failed\nF 00:00:00.2 x] Aborted", 0)


def test_thermal_status_and_big_cores() -> None:
    assert parse_thermal_status("IsStatusOverride: false\nThermal Status: 2\nCached temperatures:") == 2
    assert parse_thermal_status("nothing") is None
    pixel7 = {0: 1803000, 1: 1803000, 2: 1803000, 3: 1803000, 4: 2348000, 5: 2348000, 6: 2850000, 7: 2850000}
    assert big_core_mask(pixel7) == ("c0", 2)
    assert big_core_mask({0: 2000000, 1: 2000000}) == ("3", 2)


PIXEL = {
    "serial": "2A111FDH2004R5",
    "state": "device",
    "model": "Pixel_7",
    "product": "panther",
    "props": {
        "ro.product.model": "Pixel 7",
        "ro.soc.model": "GS201",
        "ro.product.cpu.abi": "arm64-v8a",
        "ro.build.fingerprint": "google/panther/panther:14/UQ1A.240205.004/11269751:user/release-keys",
    },
    "max_freqs_khz": [1803000, 1803000, 1803000, 1803000, 2348000, 2348000, 2850000, 2850000],
}


@pytest.fixture
def fake_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put the stand-in adb first on PATH; returns a function that sets the phones it emulates."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "adb"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN / "adb.py"}" "$@"\n')
    wrapper.chmod(0o755)
    config = tmp_path / "adb.json"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_CONFIG", str(config))

    def set_devices(*devices: dict) -> Path:
        config.write_text(
            json.dumps({"root": str(tmp_path / "phones"), "log": str(tmp_path / "adb.log"), "devices": list(devices)})
        )
        return tmp_path / "adb.log"

    set_devices()
    return set_devices


def test_choosing_a_phone(fake_adb) -> None:
    fake_adb(PIXEL, {"serial": "R58N12ABCDE", "state": "unauthorized"})
    adb = Adb()
    assert choose_phone(adb, "pixel", None).serial == PIXEL["serial"]
    with pytest.raises(ProfilerError, match=r"R58N12ABCDE .*unauthorized.*not ready"):
        choose_phone(adb, "pixel", "R58N12ABCDE")
    with pytest.raises(ProfilerError, match="No phone with serial XYZ is connected"):
        choose_phone(adb, "pixel", "XYZ")
    fake_adb(PIXEL, {**PIXEL, "serial": "OTHER"})
    with pytest.raises(ProfilerError, match=r"Several phones match device 'pixel'.*pick one with --serial"):
        choose_phone(adb, "pixel", None)
    fake_adb({"serial": "R58N12ABCDE", "state": "unauthorized"}, {"serial": "emulator-5554", "state": "offline"})
    with pytest.raises(
        ProfilerError,
        match=r"No ready phone matches device 'pixel' \(connected: R58N12ABCDE .*"
        r"unauthorized.*emulator-5554 .*offline",
    ):
        choose_phone(adb, "pixel", None)
    fake_adb()
    with pytest.raises(ProfilerError, match="No Android device is connected: connect a phone over USB"):
        choose_phone(adb, "pixel", None)


# Few blocks, quick to export: each is lowered to a .pte on this host before the phone runs it.
PHONE_ARCH = {
    "resolution": 32,
    "blocks": [
        {"op": "conv_k3_hs", "c_out": 8, "stride": 2},
        {"op": "ir_k5", "c_out": 8, "mid": 8},
        {"op": "ir_pool_hs", "c_out": 64, "mid": 48},
        {"op": "fc", "c_out": 10},
    ],
}


def lut(*args: str, env: dict | None = None) -> Ran:
    return run_lut(*args, env=env)


def test_no_phone_is_one_clear_sentence(fake_adb, tmp_path: Path) -> None:
    proc = lut("profile", "--device", "pixel", "--models", "dmasking_f1", "--db", str(tmp_path / "t.sqlite"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "No Android device is connected: connect a phone over USB with USB debugging on" in proc.stderr


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb is not installed (.ci/run installs it)")
def test_no_phone_with_the_real_adb(tmp_path: Path) -> None:
    proc = lut("profile", "--device", "pixel", "--models", "dmasking_f1", "--db", str(tmp_path / "t.sqlite"))
    assert proc.returncode == 1 and "No Android device is connected" in proc.stderr


def runner_binary(tmp_path: Path) -> Path:
    runner = tmp_path / "executor_runner"
    runner.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN / "executor_runner.py"}" "$@"\n')
    runner.chmod(0o755)
    return runner


@pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch is not installed (pip install 'lut[executorch]')")
def test_profiling_a_phone_end_to_end(fake_adb, tmp_path: Path) -> None:
    log = fake_adb({**PIXEL, "thermal": [2, 1]})  # hot at first: lut must wait
    db = str(tmp_path / "t.sqlite")
    arch = PHONE_ARCH
    specs = blocks_of(arch)
    crash = hashlib.sha256(specs[1].key.encode()).hexdigest()[:20]  # the runner aborts on this block
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(arch))
    env = {"LUT_THERMAL_POLL_S": "0.05", "FAKE_RUNNER_CRASH": crash}
    proc = lut(
        "profile",
        "--device",
        "pixel",
        "--arch",
        str(path),
        "--runner",
        str(runner_binary(tmp_path)),
        "--protocol",
        "quick",
        "--db",
        db,
        "--json",
        env=env,
    )
    assert proc.returncode == 1, proc.stderr  # one block failed; the others are stored
    summary = json.loads(proc.stdout)
    assert list(summary["failed"]) == [specs[1].key] and "Aborted" in summary["failed"][specs[1].key]
    assert summary["measured"] == 3 and summary["backend"] == "executorch"
    with LutStore(db) as store:
        device = store.device("pixel")
        assert device.kind == "android"
        assert device.fingerprint["model"] == "Pixel 7" and device.fingerprint["soc"] == "GS201"
        assert device.fingerprint["big_core_mask"] == "c0"
        assert device.fingerprint["build_fingerprint"].startswith("google/panther/panther:14")
        rows = store.measurements(Conditions("pixel"))
        assert len(rows) == 3 and specs[1].key not in {r.block_key for r in rows}
        assert all(r.stats.median_us > 0 and r.provenance.protocol["taskset_mask"] == "c0" for r in rows)
        assert all("temperatures_c" in r.provenance.environment for r in rows)
    ran = dict(line.split() for line in (tmp_path / "phones" / PIXEL["serial"] / "runs.log").read_text().splitlines())
    for row in rows:  # each block's time is the stand-in phone's for its own program, read back from the log
        phone_ms = float(ran[f"{hashlib.sha256(row.block_key.encode()).hexdigest()[:20]}.pte"])
        assert row.stats.median_us == pytest.approx(phone_ms * 1e3, rel=0.02)
    calls = [json.loads(line) for line in Path(log).read_text().splitlines()]
    device_calls = [c for c in calls if c[:1] != ["devices"]]
    assert device_calls and all(c[:2] == ["-s", PIXEL["serial"]] for c in device_calls)  # always -s SERIAL
    shells = [" ".join(c[3:]) for c in device_calls if c[2] == "shell"]
    runs = [s for s in shells if "executor_runner --model_path" in s]
    assert runs and all(s.startswith("taskset c0 ") and "--cpu_threads=1" in s for s in runs)
    first_run = shells.index(runs[0])
    assert sum("dumpsys thermalservice" in s for s in shells[:first_run]) >= 3  # waited while hot
    pushes = [c for c in device_calls if c[2] == "push"]
    assert len([p for p in pushes if p[-1].endswith(".pte")]) == 5  # each block and the canary, once


@pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch is not installed (pip install 'lut[executorch]')")
def test_a_new_phone_from_a_few_whole_network_runs(fake_adb, tmp_path: Path) -> None:
    """The README's quick way to a new phone: the host's ExecuTorch table (made up here; `lut profile
    --device cpu --backend executorch` writes it) and N whole networks run on the phone, no block."""
    fake_adb(PIXEL)
    db = str(tmp_path / "t.sqlite")
    space = get_space(str(TINY_SPACE))
    with LutStore(db) as store:
        fill(store, space.all_specs(), backend="executorch")
    runner = str(runner_binary(tmp_path))
    common = ("--device", "pixel", "--runner", runner, "--protocol", "quick", "--db", db)
    proc = lut(
        "calibrate",
        *("--from", "cpu", "--from-backend", "executorch", "--runs", "4", "--models", "none"),
        *("--space", str(TINY_SPACE), "--json"),
        *common,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["transferred_from"] == ["cpu/executorch, 1 thread(s)"] and out["runs"] == 4
    assert out["rows_written"] == len({s.key for s in space.all_specs()})
    assert out["e2e_profiled"]["measured"] == 4 and out["e2e_profiled"]["backend"] == "executorch"
    ran = (tmp_path / "phones" / PIXEL["serial"] / "runs.log").read_text().splitlines()
    assert len({line.split()[0] for line in ran}) == 5  # four whole networks and the canary: no block ran
    with LutStore(db) as store:
        runs = store.e2e_runs(Conditions("pixel", "executorch"), tag="transfer")
        rows = store.measurements(Conditions("pixel", "executorch"))
    assert len(runs) == 4 and all(r.stats.median_us > 0 and r.provenance.canary_us for r in runs)
    assert rows and {r.source for r in rows} == {"transferred"} and all(r.expected_error > 0 for r in rows)
    unseen = tmp_path / "unseen.json"  # an architecture the phone never ran
    unseen.write_text(space.sampled_archs(6, seed=7)[5].to_json())
    estimate = lut("estimate", str(unseen), "--device", "pixel", "--no-profile", "--json", "--db", db)
    assert estimate.returncode == 0, estimate.stderr
    answer = json.loads(estimate.stdout)
    assert answer["latency_ms"] > 0 and answer["calibration"]["transferred_from"] == "cpu/executorch, 1 thread(s)"
    assert answer["calibration"]["transfer_runs"] == 4 and {b["source"] for b in answer["blocks"]} == {"transferred"}


@pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch is not installed (pip install 'lut[executorch]')")
def test_a_phone_runs_the_int8_programs_the_host_quantized(fake_adb, tmp_path: Path) -> None:
    from profilers.backends.executorch_cpu import program_bytes
    from profilers.targets import parse_target

    fake_adb(PIXEL)
    db = str(tmp_path / "t.sqlite")
    se_block = {"op": "ir_k3_sehsig_hs", "c_out": 8, "mid": 16}  # its program leaves ops outside the delegate
    blocks = PHONE_ARCH["blocks"]
    arch = {**PHONE_ARCH, "blocks": [*blocks[:2], se_block, *blocks[2:]]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(arch))
    args = ["profile", "--device", "pixel", "--arch", str(path), "--dtype", "int8", "--runner"]
    proc = lut(*args, str(runner_binary(tmp_path)), "--protocol", "quick", "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    keys = {s.key for s in blocks_of(arch, dtype="int8")}
    with LutStore(db) as store:
        rows = store.measurements(Conditions("pixel", "executorch", dtype="int8"))
    assert {r.block_key for r in rows} == keys and all(r.stats.median_us > 0 for r in rows)
    # What the phone ran is the host's quantized program of each block: the stand-in runner's time follows
    # the size of the program it was given (tests/stand_in/executor_runner.py).
    for row in rows:
        program_ms = 0.05 + len(program_bytes(parse_target(row.block_key))) / 20_000
        assert row.stats.median_us == pytest.approx(program_ms * 1e3, rel=0.02)
    # and each row keeps what that program runs outside the XNNPACK delegate (the squeeze-excite block's copies).
    outside = {r.block_key: r.provenance.protocol["outside_delegate"] for r in rows}
    assert [k for k, ops in outside.items() if ops] == [k for k in keys if k.startswith("ir_") and "_se0_" not in k]
    ir = next(k for k in keys if k.startswith("ir_k5"))
    assert len(program_bytes(parse_target(ir))) != len(program_bytes(parse_target(ir.replace("_int8", "_fp32"))))
