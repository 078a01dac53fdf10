"""The device farm's throughput and the queue's overhead (latency.jobs.farm.queue).

Throughput: the blocks of a model queued for a phone model, then drained by 1, 2 and 3 workers, each on
its own stand-in phone (tests/stand_in: the runner is busy for the time it reports, so the phones'
emulated device time, not this host, bounds the farm). Blocks per minute from the first worker's start
to the last one's exit, start-up included, and while running (from the first run on a phone to the
last: a farm's workers run for hours); each device count on a fresh queue and table. Every program
takes the same device time (`--program-ms` per execution, times `--speed`), so that the jobs are equal
and the speed-up is the farm's, not the workload's: with the stand-in's default, time growing with the
program's size, the classifier heads of one model take most of the device time and one job bounds the
speed-up (`--program-ms 0` measures that too, and prints the bound).

Units of one model at different speeds (1, 1.15, 1.3 times, programs timed by their size): each block's
stored time against what its own unit's runner reported (speed-free: over that unit's canary), raw and
as estimates read it (at the table's speed through each row's canary).

Overhead: jobs of one block each, for blocks the table already holds, drained by one `cpu` worker: each
job is fetched, opens its device session, finds nothing to measure and finishes, so the wall time per
job is what the queue and the job's handling cost beside measuring. Enqueueing per job is timed too.

Targets (issue 15): under 50 ms of overhead per job; 3 devices at least 2.7 times the blocks per minute
of one.

    python bench/farm.py [--model dmasking_f1] [--speed 1] [--program-ms 150] [--job-size 1] [--jobs 100]
        [--db URL] [--out FILE.json]

Without --db a throw-away PostgreSQL cluster is started from the local server binaries (tests/pg.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latency.estimate.estimator import Estimator  # noqa: E402
from latency.jobs.farm import enqueue_blocks  # noqa: E402
from latency.jobs.measure import collect_specs, profile_blocks  # noqa: E402
from latency.vocab.conditions import Conditions  # noqa: E402
from lut_db import LutStore  # noqa: E402
from profilers.protocol import canary_spec  # noqa: E402
from tests.pg import fresh_schema_url, postgres_url  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STAND_IN = ROOT / "tests" / "stand_in"
LUT = [sys.executable, "-m", "latency.cli"]
PIXEL_PROPS = {
    "ro.product.model": "Pixel 7",
    "ro.soc.model": "GS201",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.build.fingerprint": "google/panther/panther:14/UQ1A.240205.004/11269751:user/release-keys",
}


def stand_in_phones(folder: Path, speeds: list[float], program_ms: float | None) -> tuple[dict[str, str], str]:
    """An environment whose `adb` serves one stand-in Pixel per speed, and the stand-in runner's path."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "adb").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN / "adb.py"}" "$@"\n')
    runner = folder / "executor_runner"
    runner.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN / "executor_runner.py"}" "$@"\n')
    for path in (bin_dir / "adb", runner):
        path.chmod(0o755)
    devices = [
        {
            "serial": f"UNIT{i}",
            "state": "device",
            "model": "Pixel_7",
            "product": "panther",
            "props": PIXEL_PROPS,
            "max_freqs_khz": [1803000] * 4 + [2850000] * 4,
            "speed": speed,
            "sleep": True,
            "program_ms": program_ms,
        }
        for i, speed in enumerate(speeds)
    ]
    config = folder / "adb.json"
    config.write_text(json.dumps({"root": str(folder / "phones"), "log": str(folder / "adb.log"), "devices": devices}))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_ADB_CONFIG": str(config)}
    return env, str(runner)


def drain(url: str, workers: list[list[str]], env: dict[str, str]) -> float:
    """Seconds from starting the workers to the last one's exit."""
    started = time.monotonic()
    procs = [
        subprocess.Popen([*LUT, "worker", "--drain", "--heartbeat-s", "1", "--db", url, *args], env=env)
        for args in workers
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a worker failed: {proc.args}")
    return time.monotonic() - started


def farm_run(server: str, speeds: list[float], program_ms: float | None, args: argparse.Namespace) -> dict[str, Any]:
    """The model's blocks for a phone drained by one worker per stand-in unit of these speeds."""
    specs = collect_specs([args.model])
    phone = Conditions("pixel", "executorch")
    with fresh_schema_url(server) as url, tempfile.TemporaryDirectory() as tmp:
        env, runner = stand_in_phones(Path(tmp), speeds, program_ms)
        with LutStore(url) as store:
            queued = enqueue_blocks(store, phone, specs, "quick", job_size=args.job_size)
        size = args.job_size
        jobs = [[s.key for s in specs][start : start + size] for start in range(0, len(specs), size)]
        assert len(jobs) == len(queued.jobs)
        units = [["--device", "pixel", "--serial", f"UNIT{i}", "--runner", runner] for i in range(len(speeds))]
        seconds = drain(url, units, env)
        with LutStore(url) as store:
            rows = store.measurements(phone)
            estimator = Estimator(phone, store=store, use_calibration=False)
            # What each unit's runner reported, speed-free: a block's time over the canary's on that phone;
            # and when each run began and ended on it.
            truth, spans = {}, []
            for i in range(len(speeds)):
                ran = dict(line.split() for line in phone_log(Path(tmp), i, "runs.log"))
                canary = ran.get(program(canary_spec().key))
                truth.update(
                    {s.key: float(ran[program(s.key)]) / float(canary) for s in specs if program(s.key) in ran}
                )
                spans += [
                    (float(start), float(end), name)
                    for start, end, name in map(str.split, phone_log(Path(tmp), i, "spans.log"))
                ]
            # Device-busy seconds per block, then per job: no farm drains the queue faster than its longest
            # job, so the speed-up is bounded by the total over that job.
            busy: dict[str, float] = {}
            for start, end, name in spans:
                busy[name] = busy.get(name, 0.0) + end - start
            window_s = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)  # first run to last
            job_busy = [sum(busy.get(program(key), 0.0) for key in keys) for keys in jobs]
            table_us = estimator.table_canary_us or 1.0
            by_key = {s.key: s for s in specs}
            raw = [abs(r.stats.median_us / (truth[r.block_key] * table_us) - 1) for r in rows]
            scaled = [
                abs(estimator.entry(by_key[r.block_key]).median_us / (truth[r.block_key] * table_us) - 1) for r in rows
            ]
    assert len(rows) == len(specs), f"{len(rows)} of {len(specs)} blocks stored"
    return {
        "devices": len(speeds),
        "speeds": speeds,
        "units_used": len({r.provenance.environment["serial"] for r in rows}),
        "blocks": len(rows),
        "seconds": round(seconds, 1),
        "blocks_per_min": len(rows) / seconds * 60,
        # without the workers' start-up (an interpreter, the runtime's import, the first export): a farm's
        # workers run for hours, so this is its throughput once running
        "running_blocks_per_min": len(rows) / window_s * 60,
        "jobs": len(jobs),
        "device_busy_s": round(sum(busy.values()), 1),
        "speedup_bound": sum(job_busy) / max(job_busy),
        "max_error_raw": max(raw),
        "max_error_after_canary": max(scaled),
    }


def phone_log(folder: Path, unit: int, name: str) -> list[str]:
    """The lines of a log the stand-in phone UNIT<unit> keeps (none if it ran nothing)."""
    log = folder / "phones" / f"UNIT{unit}" / name
    return log.read_text().splitlines() if log.exists() else []


def program(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:20] + ".pte"


def overhead(server: str, args: argparse.Namespace) -> dict[str, Any]:
    conditions = Conditions("cpu", "torch")
    specs = collect_specs(["all"])[: args.jobs]
    with fresh_schema_url(server) as url:
        with LutStore(url) as store:
            started = time.monotonic()
            queued = enqueue_blocks(store, conditions, specs, "quick", job_size=1)
            enqueue_s = time.monotonic() - started
            profile_blocks(specs, store, conditions, "quick")  # the jobs will find their blocks present
        drain_s = drain(url, [["--device", "cpu"]], dict(os.environ))
        # the worker's start-up (an interpreter, the first device session) is not per job: a drain of no job
        with LutStore(url) as store:
            enqueue_blocks(store, conditions, specs[:1], "quick", job_size=1)  # nothing: all present
        start_s = drain(url, [["--device", "cpu"]], dict(os.environ))
    jobs = len(queued.jobs)
    return {
        "jobs": jobs,
        "enqueue_ms_per_job": enqueue_s / jobs * 1e3,
        "worker_start_s": start_s,
        "handling_ms_per_job": max(drain_s - start_s, 0.0) / jobs * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dmasking_f1")
    parser.add_argument("--speed", type=float, default=1.0, help="stand-in phones' slowness (device time)")
    parser.add_argument(
        "--program-ms", type=float, default=150.0, help="device time of every program per execution (0: by size)"
    )
    parser.add_argument("--job-size", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=100, help="one-block jobs for the overhead")
    parser.add_argument("--db", help="a PostgreSQL URL whose database may hold test schemas")
    parser.add_argument("--out", type=Path, default=RESULTS / "farm.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    program_ms = args.program_ms or None
    with contextlib.ExitStack() as stack:
        server = args.db or stack.enter_context(postgres_url())
        rows = [farm_run(server, [args.speed] * n, program_ms, args) for n in (1, 2, 3)]
        spread = farm_run(server, [args.speed, args.speed * 1.15, args.speed * 1.3], None, args)
        cost = overhead(server, args)
    one = rows[0]["blocks_per_min"]
    workload = f"every program {args.program_ms:g} ms" if program_ms else "programs timed by their size"
    print(f"{args.model}, {rows[0]['jobs']} jobs of {args.job_size} block(s), {workload}, speed {args.speed:g}")
    print(
        f"{'devices':>7} {'blocks':>6} {'seconds':>8} {'blocks/min':>10} {'speed-up':>8} "
        f"{'running':>8} {'speed-up':>8} {'bound':>6}"
    )
    for r in rows:
        r["speedup"] = r["blocks_per_min"] / one
        r["running_speedup"] = r["running_blocks_per_min"] / rows[0]["running_blocks_per_min"]
        print(
            f"{r['devices']:>7} {r['blocks']:>6} {r['seconds']:>8.1f} {r['blocks_per_min']:>10.1f} "
            f"{r['speedup']:>8.2f} {r['running_blocks_per_min']:>8.1f} {r['running_speedup']:>8.2f} "
            f"{r['speedup_bound']:>6.2f}"
        )
    print("running: blocks per minute from the first run on a phone to the last (the workers' start-up left out)")
    print(
        f"units of speeds 1, 1.15, 1.3 ({spread['units_used']} took jobs): each block against its unit's own "
        f"runner, at the table's speed; worst error {spread['max_error_raw']:.1%} raw, "
        f"{spread['max_error_after_canary']:.1%} after the canary"
    )
    print(
        f"overhead: {cost['jobs']} one-block jobs, enqueue {cost['enqueue_ms_per_job']:.1f} ms/job, "
        f"handling {cost['handling_ms_per_job']:.1f} ms/job beyond a worker's start-up ({cost['worker_start_s']:.1f} s)"
    )
    summary = {"model": args.model, "speed": args.speed, "program_ms": program_ms, "job_size": args.job_size}
    args.out.write_text(json.dumps({**summary, "throughput": rows, "units": spread, "overhead": cost}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
