"""How well the block predictor predicts measured blocks it did not see (k-fold, per device).

Reads every measured block of one device/backend from a table (fill one with `lut profile
--space fbnetv2_f4 --device cpu` and `lut profile --models all`), predicts each fold from the
others, and prints the share within 10% (target: at least 95%), the median and p90 error, per
block kind, overall, for the blocks the protocol flagged stable and unstable, and on raw times, as a
table and JSON. Blocks are compared at the table's speed (each time scaled by the canary's median
over the canary of its own trials), as the predictor is fitted: the machine's drift while the table
was filled is not the predictor's error.

    python bench/predictor_accuracy.py --device cpu [--db URL] [--folds 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from latency.estimate.predictor import cross_validate, training_set
from latency.vocab.conditions import Conditions
from lut_db import LutStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--db", default=None, help="table URL [default: LUT_DB_URL or the user cache]")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predictor_accuracy.json")
    args = parser.parse_args()

    with LutStore(args.db) as store:
        conditions = Conditions(args.device, args.backend, args.threads)
        rows = store.measurement_map(conditions, source="measured")
    if len(rows) < 5 * args.folds:
        raise SystemExit(f"only {len(rows)} measured blocks for {args.device}/{args.backend}; profile more first")
    # The predictor's own view: every block at the table's speed (see training_set); the raw
    # times, with the machine's drift left in, are scored too.
    specs, at_speed_us, canary_ref = training_set(rows)
    raw_us = np.array([rows[k].stats.median_us for k in sorted(rows)])
    stable = np.array([bool(rows[k].provenance.stable) for k in sorted(rows)])
    canaries = np.array([rows[k].provenance.canary_us for k in sorted(rows) if rows[k].provenance.canary_us])
    absolute = np.abs(cross_validate(specs, at_speed_us, folds=args.folds))
    absolute_raw = np.abs(cross_validate(specs, raw_us, folds=args.folds))

    def summary(mask: np.ndarray, errors: np.ndarray = absolute) -> dict[str, float]:
        return {
            "n": int(mask.sum()),
            "within_10pct": float(np.mean(errors[mask] <= 0.10)),
            "median_error": float(np.median(errors[mask])),
            "p90_error": float(np.quantile(errors[mask], 0.9)),
        }

    kinds = sorted({s.kind for s in specs})
    result = {
        "device": args.device,
        "backend": args.backend,
        "folds": args.folds,
        "canary_ref_us": canary_ref,
        "canary_range_us": [float(canaries.min()), float(canaries.max())] if len(canaries) else None,
        "overall": summary(np.ones(len(specs), bool)),
        "by_kind": {k: summary(np.array([s.kind == k for s in specs])) for k in kinds},
        "stable": summary(stable),
        "unstable": summary(~stable),
        "raw_times": summary(np.ones(len(specs), bool), absolute_raw),
    }
    print(
        f"{args.folds}-fold CV of the block predictor on {len(specs)} measured blocks ({args.device}, {args.backend})"
    )
    print(f"{'kind':12s}{'n':>6s}{'within 10%':>12s}{'median':>9s}{'p90':>9s}")
    rows_shown = [
        *result["by_kind"].items(),
        ("all", result["overall"]),
        ("stable", result["stable"]),
        ("unstable", result["unstable"]),
        ("all, raw", result["raw_times"]),
    ]
    for name, s in rows_shown:
        print(f"{name:12s}{s['n']:>6d}{s['within_10pct']:>12.1%}{s['median_error']:>9.1%}{s['p90_error']:>9.1%}")
    if result["canary_range_us"]:
        low, high = result["canary_range_us"]
        print(f"times at the table's speed (canary median {canary_ref:.0f} us; it ranged {low:.0f}-{high:.0f} us)")
    print("stable/unstable: the protocol's flag; 'all, raw': the times as measured, drift left in")
    print("target: within 10% for at least 95% of blocks")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
