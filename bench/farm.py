"""The device farm's throughput and the queue's overhead (latency.jobs.farm).

Throughput: the blocks of a model queued for a phone model, then drained by 1, 2 and 3 workers, each on
its own stand-in phone (tests/stand_in: the runner is busy for the time it reports, so the phones'
emulated device time, not this host, bounds the farm). Blocks per minute from the first worker's start
to the last one's exit, start-up included; each device count on a fresh queue and table.

Overhead: jobs of one block each, for blocks the table already holds, drained by one `cpu` worker: each
job is fetched, opens its device session, finds nothing to measure and finishes, so the wall time per
job is what the queue and the job's handling cost beside measuring. Enqueueing per job is timed too.

Targets (issue 15): under 50 ms of overhead per job; 3 devices at least 2.7 times the blocks per minute
of one.

    python bench/farm.py [--model dmasking_f1] [--speed 40] [--jobs 100] [--db URL] [--out FILE.json]

Without --db a throw-away PostgreSQL cluster is started from the local server binaries (tests/pg.py).
"""

from __future__ import annotations

import argparse
import contextlib
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

from latency.jobs.farm import enqueue_blocks  # noqa: E402
from latency.jobs.profile import collect_specs, profile_blocks  # noqa: E402
from latency.vocab.conditions import Conditions  # noqa: E402
from lut_db import LutStore  # noqa: E402
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


def stand_in_phones(folder: Path, count: int, speed: float) -> tuple[dict[str, str], str]:
    """An environment whose `adb` serves `count` stand-in Pixels, and the stand-in runner's path."""
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
        }
        for i in range(count)
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


def throughput(server: str, devices: int, args: argparse.Namespace) -> dict[str, Any]:
    specs = collect_specs([args.model])
    with fresh_schema_url(server) as url, tempfile.TemporaryDirectory() as tmp:
        env, runner = stand_in_phones(Path(tmp), devices, args.speed)
        with LutStore(url) as store:
            enqueue_blocks(store, Conditions("pixel", "executorch"), specs, "quick", job_size=args.job_size)
        seconds = drain(
            url, [["--device", "pixel", "--serial", f"UNIT{i}", "--runner", runner] for i in range(devices)], env
        )
        with LutStore(url) as store:
            measured = len(store.measurements(Conditions("pixel", "executorch")))
    assert measured == len(specs), f"{measured} of {len(specs)} blocks stored"
    return {
        "devices": devices,
        "blocks": measured,
        "seconds": round(seconds, 1),
        "blocks_per_min": measured / seconds * 60,
    }


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
    parser.add_argument("--speed", type=float, default=40.0, help="stand-in phones' slowness (device time)")
    parser.add_argument("--job-size", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=100, help="one-block jobs for the overhead")
    parser.add_argument("--db", help="a PostgreSQL URL whose database may hold test schemas")
    parser.add_argument("--out", type=Path, default=RESULTS / "farm.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        server = args.db or stack.enter_context(postgres_url())
        rows = [throughput(server, n, args) for n in (1, 2, 3)]
        cost = overhead(server, args)
    one = rows[0]["blocks_per_min"]
    print(f"{'devices':>7} {'blocks':>6} {'seconds':>8} {'blocks/min':>10} {'speed-up':>8}")
    for r in rows:
        r["speedup"] = r["blocks_per_min"] / one
        print(
            f"{r['devices']:>7} {r['blocks']:>6} {r['seconds']:>8.1f} {r['blocks_per_min']:>10.1f} {r['speedup']:>8.2f}"
        )
    print(
        f"overhead: {cost['jobs']} one-block jobs, enqueue {cost['enqueue_ms_per_job']:.1f} ms/job, "
        f"handling {cost['handling_ms_per_job']:.1f} ms/job beyond a worker's start-up ({cost['worker_start_s']:.1f} s)"
    )
    args.out.write_text(
        json.dumps({"model": args.model, "speed": args.speed, "throughput": rows, "overhead": cost}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
