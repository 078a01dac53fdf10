"""Profile the unique blocks of the seven public models on `cpu` twice, into two fresh tables.

Prints blocks per minute and how far apart the two runs put each block's median (raw, and relative
to the canary of the same run), as a table and as JSON. Targets on a 2-core machine: all unique
blocks in under 5 minutes; median difference under 3%, p90 under 10%.

    python bench/profile_speed.py [--backend torch] [--threads 1] [--protocol standard] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from latency.jobs.measure import collect_specs, profile_blocks
from latency.vocab.conditions import Conditions
from lut_db import LutStore


def run_once(db: Path, backend: str, threads: int, protocol: str) -> tuple[dict, float]:
    specs = collect_specs(["all"])
    with LutStore(str(db)) as store:
        started = time.monotonic()
        conditions = Conditions("cpu", backend, threads)
        summary = profile_blocks(specs, store, conditions, protocol)
        seconds = time.monotonic() - started
        rows = store.measurement_map(conditions)
    if summary.failed:
        sys.exit(f"blocks failed: {summary.failed}")
    return {"summary": summary.to_dict(), "rows": rows}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "profile_speed.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        first, first_s = run_once(Path(tmp) / "a.sqlite", args.backend, args.threads, args.protocol)
        second, second_s = run_once(Path(tmp) / "b.sqlite", args.backend, args.threads, args.protocol)
    a, b = first["rows"], second["rows"]
    keys = sorted(a.keys() & b.keys())
    raw = np.array([abs(a[k].stats.median_us - b[k].stats.median_us) / a[k].stats.median_us for k in keys])
    rel = np.array(
        [abs(a[k].provenance.canary_ratio - b[k].provenance.canary_ratio) / a[k].provenance.canary_ratio for k in keys]
    )
    canary_a = float(np.median([a[k].provenance.canary_us for k in keys]))
    canary_b = float(np.median([b[k].provenance.canary_us for k in keys]))
    result = {
        "backend": args.backend,
        "threads": args.threads,
        "protocol": args.protocol,
        "blocks": len(keys),
        "run_seconds": [round(first_s, 1), round(second_s, 1)],
        "blocks_per_minute": [round(len(keys) / first_s * 60, 1), round(len(keys) / second_s * 60, 1)],
        "unstable": [len(first["summary"]["unstable"]), len(second["summary"]["unstable"])],
        "median_diff": round(float(np.median(raw)), 4),
        "p90_diff": round(float(np.percentile(raw, 90)), 4),
        "median_diff_canary_relative": round(float(np.median(rel)), 4),
        "p90_diff_canary_relative": round(float(np.percentile(rel, 90)), 4),
        "canary_median_us": [round(canary_a, 2), round(canary_b, 2)],
    }
    print(f"{'':34s}{'run 1':>12s}{'run 2':>12s}")
    print(f"{'unique blocks':34s}{len(keys):>12d}{len(keys):>12d}")
    print(f"{'time (s)':34s}{first_s:>12.1f}{second_s:>12.1f}   target < 300")
    print(f"{'blocks / minute':34s}{result['blocks_per_minute'][0]:>12.1f}{result['blocks_per_minute'][1]:>12.1f}")
    print(f"{'unstable after re-measurement':34s}{result['unstable'][0]:>12d}{result['unstable'][1]:>12d}")
    print(f"{'canary median (us)':34s}{canary_a:>12.1f}{canary_b:>12.1f}")
    print("difference of each block's median between the runs:")
    print(f"  raw:              median {result['median_diff']:.2%}   p90 {result['p90_diff']:.2%}   (targets 3% / 10%)")
    print(
        f"  canary-relative:  median {result['median_diff_canary_relative']:.2%}   "
        f"p90 {result['p90_diff_canary_relative']:.2%}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
