"""How well the block predictor predicts measured blocks it did not see (k-fold, per device).

Reads every measured block of one device/backend from a table (fill one with `lut profile
--space fbnetv2_f4 --device cpu` and `lut profile --models all`), predicts each fold from the
others, and prints the share within 10% (target: at least 95%), the median and p90 error, per
block kind and overall, as a table and JSON.

    python bench/predictor_accuracy.py --device cpu [--db URL] [--folds 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from latency.blocks import BlockSpec
from latency.predictor import cross_validate
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
        rows = store.measurement_map(device=args.device, backend=args.backend, threads=args.threads, source="measured")
    if len(rows) < 5 * args.folds:
        raise SystemExit(f"only {len(rows)} measured blocks for {args.device}/{args.backend}; profile more first")
    keys = sorted(rows)
    specs = [BlockSpec.from_key(k) for k in keys]
    errors = cross_validate(specs, [rows[k].median_us for k in keys], folds=args.folds)
    absolute = np.abs(errors)

    def summary(mask: np.ndarray) -> dict[str, float]:
        return {
            "n": int(mask.sum()),
            "within_10pct": float(np.mean(absolute[mask] <= 0.10)),
            "median_error": float(np.median(absolute[mask])),
            "p90_error": float(np.quantile(absolute[mask], 0.9)),
        }

    kinds = sorted({s.kind for s in specs})
    result = {
        "device": args.device,
        "backend": args.backend,
        "folds": args.folds,
        "overall": summary(np.ones(len(specs), bool)),
        "by_kind": {k: summary(np.array([s.kind == k for s in specs])) for k in kinds},
    }
    print(
        f"{args.folds}-fold CV of the block predictor on {len(specs)} measured blocks ({args.device}, {args.backend})"
    )
    print(f"{'kind':12s}{'n':>6s}{'within 10%':>12s}{'median':>9s}{'p90':>9s}")
    for name, s in [*result["by_kind"].items(), ("all", result["overall"])]:
        print(f"{name:12s}{s['n']:>6d}{s['within_10pct']:>12.1%}{s['median_error']:>9.1%}{s['p90_error']:>9.1%}")
    print("target: within 10% for at least 95% of blocks")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
