"""Is the canary timed the same way for the table and for end-to-end runs? An interleaved A/B.

The canary block is timed in every trial of a block group (A: the path that fills the table, `lut profile`)
and of a network's run (B: the path of `lut time`, calibration and validation, the network in a fresh
deployment process). Both now time it in tuned workers of their own with a full warm-up; if they agree on a
steady machine, a canary ratio between a run and the table measures the machine and nothing else. Rounds
alternate A B B A ... so that drift hits both alike; each round's A and B come minutes apart at most.

For each round: the canary of A's group and of B's run (the median of their trials), the spread of their
trials, and how many takes each needed (a take whose trials' canaries disagree by more than the
protocol's tolerance is taken again). Printed as a table and written as JSON.

    python bench/canary_ab.py [--rounds 12] [--protocol standard] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from latency.jobs.measure import latest_run, profile_archs, profile_blocks
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT
from latency.vocab.family import get_arch
from lut_db import LutStore

RESULTS = Path(__file__).parent / "results"
TAG = "canary-ab"
NETWORK = "dmasking_f1"  # the smallest of the family: B's run is short


def block_take(store: LutStore, conditions: Conditions, protocol: str) -> dict[str, Any]:
    """A: a group of the network's blocks timed alone, as `lut profile --isolated` does."""
    specs = get_arch(NETWORK).specs()[:6]
    profile_blocks(specs, store, conditions, protocol, force=True)
    row = max(store.measurements(conditions, [specs[0].key]), key=lambda r: r.provenance.measured_at)
    return _take(row.provenance.canary_us, row.provenance.environment)


def run_take(store: LutStore, conditions: Conditions, protocol: str) -> dict[str, Any]:
    """B: the network end to end in a fresh plain process, as `lut time` does."""
    arch = get_arch(NETWORK)
    profile_archs([arch], store, conditions, TAG, protocol, force=True, deploy_env=DEFAULT)
    run = latest_run(store.e2e_runs(conditions, tag=TAG), arch)
    assert run is not None
    return _take(run.provenance.canary_us, run.provenance.environment)


def _take(canary_us: float | None, environment: dict[str, Any]) -> dict[str, Any]:
    trials = environment.get("canary_medians_us", [])
    spread = (max(trials) - min(trials)) / float(np.median(trials)) if len(trials) > 1 else None
    return {"canary_us": canary_us, "trials_us": trials, "spread": spread, "takes": environment.get("takes")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--out", type=Path, default=RESULTS / "canary_ab.json")
    args = parser.parse_args()
    conditions = Conditions("cpu", "torch", 1)
    rounds = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder, LutStore(str(Path(folder) / "lut.sqlite")) as store:
        for i in range(args.rounds):
            takes = (block_take, run_take) if i % 2 == 0 else (run_take, block_take)  # A B, B A, ...
            results = {take.__name__: take(store, conditions, args.protocol) for take in takes}
            table, run = results["block_take"], results["run_take"]
            rounds.append(
                {"round": i, "table": table, "run": run, "run_over_table": run["canary_us"] / table["canary_us"]}
            )
            print(
                f"round {i:2d}: table path {table['canary_us']:7.1f} us (spread {table['spread']:.1%}, "
                f"takes {table['takes']})  run path {run['canary_us']:7.1f} us (spread {run['spread']:.1%}, "
                f"takes {run['takes']})  run/table {rounds[-1]['run_over_table']:.3f}",
                flush=True,
            )
    ratios = np.array([r["run_over_table"] for r in rounds])
    table_us = np.array([r["table"]["canary_us"] for r in rounds])
    run_us = np.array([r["run"]["canary_us"] for r in rounds])
    summary = {
        "machine": "this host's CPU (torch, 1 thread)",
        "protocol": args.protocol,
        "rounds": len(rounds),
        "run_over_table_median": float(np.median(ratios)),
        "run_over_table_iqr": [float(np.quantile(ratios, 0.25)), float(np.quantile(ratios, 0.75))],
        "run_over_table_range": [float(ratios.min()), float(ratios.max())],
        "table_canary_us_range": [float(table_us.min()), float(table_us.max())],
        "run_canary_us_range": [float(run_us.min()), float(run_us.max())],
        # how far one path's canary moves between consecutive rounds: the noise a ratio would carry
        "table_round_to_round_median": float(np.median(np.abs(np.diff(table_us)) / table_us[1:])),
        "run_round_to_round_median": float(np.median(np.abs(np.diff(run_us)) / run_us[1:])),
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    print(
        f"\nrun path / table path canary over {len(rounds)} interleaved rounds: median "
        f"{summary['run_over_table_median']:.3f}, IQR {summary['run_over_table_iqr'][0]:.3f}-"
        f"{summary['run_over_table_iqr'][1]:.3f}, range {summary['run_over_table_range'][0]:.3f}-"
        f"{summary['run_over_table_range'][1]:.3f}; round to round, the table path's canary moved "
        f"{summary['table_round_to_round_median']:.1%} (median), the run path's "
        f"{summary['run_round_to_round_median']:.1%}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "rounds": rounds}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
