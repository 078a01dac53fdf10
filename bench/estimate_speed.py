"""How fast estimates are: one named model in-process, many architectures at once, and the
`lut estimate` command from a cold start.

Fills a temporary table with every block of the family and of the fbnetv2_f4 grid (the numbers
are the table's own arithmetic, so plain stand-in values do; this times the estimator, not a
device), then prints a table and writes JSON. Targets: a single estimate under 1 ms once the table
is loaded; estimate_many at least 1,000,000 architectures per second on one core; `lut estimate
dmasking_f3 --json` under 1 s from a cold start.

    python bench/estimate_speed.py [--n 1000000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from latency.estimate.estimator import Estimator
from latency.jobs.measure import block_row
from latency.vocab.conditions import Conditions
from latency.vocab.family import blocks_of, list_models
from latency.vocab.space import get_space
from latency.vocab.timing import TimingStats
from lut_db import LutStore, MeasurementRecord
from lut_db.records import Provenance


def fill(store: LutStore) -> int:
    specs = {s.key: s for m in list_models(available_only=True) for s in blocks_of(m)}
    specs.update({s.key: s for s in get_space().all_specs()})
    store.get_or_create_device("cpu", "cpu", {"bench": "estimate_speed"}, {"bench": "estimate_speed"})
    store.upsert_blocks(block_row(s) for s in specs.values())
    now = datetime.now(timezone.utc)
    for spec in specs.values():
        us = 5.0 + spec.flops / 2e3
        store.put_measurement(
            MeasurementRecord(
                block_key=spec.key,
                conditions=Conditions("cpu", "torch", 1, 1, "fp32"),
                backend_version=torch.__version__,
                stats=TimingStats(us, us, us, 0.0, us, 0.0, us, n=1, trials=1),
                provenance=Provenance(None, None, {"bench": True}, {}, now, stable=True),
            )
        )
    return len(specs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="architectures for estimate_many")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "estimate_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "lut.sqlite")
        with LutStore(db) as store:
            entries = fill(store)
            estimator = Estimator("cpu", store=store)
            estimator.estimate("dmasking_f3")  # warm the caches (architecture, parsing)
            single = []
            for _ in range(200):
                start = time.perf_counter()
                estimator.estimate("dmasking_f3")
                single.append((time.perf_counter() - start) * 1e3)
            space = get_space()
            tables = estimator.space_tables(space)
            indices = space.sample_indices(args.n, seed=0)
            estimator.estimate_space(space, indices[:1000], tables)
            runs = []
            for _ in range(5):
                start = time.perf_counter()
                estimator.estimate_space(space, indices, tables)
                runs.append(time.perf_counter() - start)
            many_per_s = args.n / min(runs)
            archs = space.sampled_archs(2000, seed=1)
            start = time.perf_counter()
            estimator.estimate_many(archs)
            list_per_s = len(archs) / (time.perf_counter() - start)
        env = {**os.environ, "LUT_DB_URL": db}
        cold = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "latency.cli", "estimate", "dmasking_f3", "--json"],
                env=env,
                check=True,
                capture_output=True,
            )
            cold.append(time.perf_counter() - start)
    result = {
        "table_entries": entries,
        "single_estimate_ms": {"median": statistics.median(single), "p90": sorted(single)[int(0.9 * len(single))]},
        "estimate_space_archs_per_s": many_per_s,
        "estimate_many_list_archs_per_s": list_per_s,
        "cold_cli_s": {"median": statistics.median(cold), "max": max(cold)},
    }
    print(f"{'measure':46s}{'value':>14s}{'target':>14s}")
    single_ms = result["single_estimate_ms"]["median"]
    print(f"{'single estimate, dmasking_f3 (median ms)':46s}{single_ms:>14.3f}{'< 1 ms':>14s}")
    print(f"{'estimate_many, space indices (archs/s, 1 core)':46s}{many_per_s:>14,.0f}{'>= 1,000,000':>14s}")
    print(f"{'estimate_many, list of Arch (archs/s)':46s}{list_per_s:>14,.0f}{'':>14s}")
    print(
        f"{'lut estimate dmasking_f3 --json, cold (median s)':46s}{result['cold_cli_s']['median']:>14.3f}{'< 1 s':>14s}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
