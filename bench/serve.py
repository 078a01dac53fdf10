"""How fast does `lut serve` answer? Single estimates with 1, 8 and 32 concurrent clients, and architectures
per second through the many-architectures endpoint, over loopback only, bounded in requests and time.

    python -m bench.serve [--seconds 10] [--batch 20000] [--db FILE] [--out FILE.json]

The table: the family and fbnetv2_f4's grid with made-up times (bench.estimate_speed.fill); the server:
`lut serve` in its own process (one uvicorn worker), read-only, as a team runs it. The clients: threads in
this process, one keep-alive connection each, asking for the family's models in turn (each request a full
estimate as `lut estimate --json` gives it). On a 2-core host the clients share the cores with the server,
as they would beside a search on the same machine. Targets (issue 29): at least 1,000 single estimates per
second at 8 clients with p99 under 20 ms; at least 100,000 architectures per second in batches.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.estimate_speed import fill
from latency.vocab.family import list_models
from latency.vocab.space import get_space
from lut_db import LutStore

RESULTS = Path(__file__).parent / "results"
SPACE = "fbnetv2_f4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int, stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen:
    """`lut serve` on `db` in a process of its own (no token), once it answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "latency.cli", "serve", "--db", db, "--port", str(port)],
        env={k: v for k, v in os.environ.items() if k != "LUT_SERVE_TOKEN"},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"lut serve exited: {process.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/models")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    raise SystemExit("lut serve did not answer within 120 s")


def singles(port: int, clients: int, seconds: float, max_requests: int) -> dict[str, float]:
    """`clients` threads asking for single estimates for `seconds` (or until `max_requests` in all)."""
    models = list_models(available_only=True)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    stop_at = time.monotonic() + seconds
    budget = threading.Semaphore(max_requests)

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = i
        while time.monotonic() < stop_at and budget.acquire(blocking=False):
            path = f"/api/estimate/{models[n % len(models)]}"
            n += 1
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            latencies[i].append(time.perf_counter() - started)
            if response.status != 200 or b'"latency_ms"' not in body:
                failures[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    every = np.array([x for per in latencies for x in per]) * 1e3
    return {
        "clients": clients,
        "requests": int(every.size),
        "failures": int(sum(failures)),
        "seconds": elapsed,
        "per_s": every.size / elapsed,
        "p50_ms": float(np.percentile(every, 50)),
        "p99_ms": float(np.percentile(every, 99)),
    }


def batches(port: int, batch: int, rounds: int) -> dict[str, float]:
    """Space points per request through /api/estimate/many, one client, `rounds` requests."""
    space = get_space(SPACE)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    times = []
    for i in range(rounds):
        body = json.dumps({"space": SPACE, "indices": space.sample_indices(batch, seed=i).tolist()})
        started = time.perf_counter()
        conn.request("POST", "/api/estimate/many", body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        times.append(time.perf_counter() - started)
        assert response.status == 200 and len(answer["latency_ms"]) == batch, answer
    median_s = statistics.median(times)
    return {"batch": batch, "rounds": rounds, "median_s": median_s, "archs_per_s": batch / median_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per concurrency level")
    parser.add_argument("--batch", type=int, default=20_000, help="space points per many-architectures request")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--db", default=None, help="a table to serve [default: a made-up one]")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = args.db
        if db is None:
            db = str(Path(folder) / "lut.sqlite")
            with LutStore(db) as store:
                print(f"made-up table: {fill(store)} blocks", flush=True)
        port = free_port()
        server = start_server(db, port)
        try:
            singles(port, 1, 0.5, 10)  # the estimator is built and kept before anything is timed
            levels = [singles(port, clients, args.seconds, args.max_requests) for clients in (1, 8, 32)]
            many = batches(port, args.batch, args.rounds)
        finally:
            server.terminate()
            server.wait(30)
    print(f"\nlut serve on loopback, this host ({os.cpu_count()} cores), one uvicorn worker:")
    print(f"{'clients':>8s}{'requests':>10s}{'per s':>9s}{'p50 ms':>9s}{'p99 ms':>9s}{'failed':>8s}")
    for level in levels:
        print(
            f"{level['clients']:>8d}{level['requests']:>10d}{level['per_s']:>9.0f}{level['p50_ms']:>9.2f}"
            f"{level['p99_ms']:>9.2f}{level['failures']:>8d}"
        )
    print(
        f"many architectures: {many['batch']} points of {SPACE} per request, median {many['median_s'] * 1e3:.0f} ms: "
        f"{many['archs_per_s']:,.0f} architectures/s"
    )
    eight = next(level for level in levels if level["clients"] == 8)
    met = eight["per_s"] >= 1000 and eight["p99_ms"] < 20 and many["archs_per_s"] >= 100_000
    print(
        f"targets (>=1,000/s at 8 clients with p99 < 20 ms; >=100,000 architectures/s): {'met' if met else 'NOT met'}"
    )
    result = {"machine": f"this host, {os.cpu_count()} cores, loopback", "singles": levels, "many": many, "met": met}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
