"""Calibrate on one set of architectures, validate on a disjoint one, print the accuracy.

The calibration set is sampled from the search spaces around f4, f1 and l1 (so that it spans the
family's depths and block types, without holding any family member); the validation set is the
FBNetV2 family plus at least 50 other samples of the f4 space (another seed). Targets on this
2-core CPU: within-10% at least 95%, Kendall tau at least 0.9. The table is kept (`--db`), so an
interrupted run resumes.

    python bench/accuracy.py --device cpu [--calibration 30] [--validation 50] [--db FILE] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latency.jobs.calibrate import calibrate
from latency.jobs.validate import validate
from latency.vocab.conditions import Conditions
from latency.vocab.family import family_archs
from latency.vocab.space import get_space
from lut_db import LutStore

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=30, help="sampled architectures to calibrate on")
    parser.add_argument("--validation", type=int, default=50, help="sampled architectures to validate on")
    parser.add_argument("--space", default="fbnetv2_f4", help="the space the validation samples come from")
    parser.add_argument(
        "--calibration-spaces",
        default="fbnetv2_f4,fbnetv2_f1,fbnetv2_l1",
        help="spaces the calibration samples come from, in turn",
    )
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--db", default=str(RESULTS / "accuracy.sqlite"))
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    args = parser.parse_args()

    space = get_space(args.space)
    spaces = args.calibration_spaces.split(",")
    calibration_set = [
        arch
        for i, name in enumerate(spaces)
        for arch in get_space(name).sampled_archs(
            args.calibration // len(spaces) + (i < args.calibration % len(spaces)), seed=100
        )
    ]
    validation_set = family_archs(["all"]) + space.sampled_archs(args.validation, seed=200)
    validation_layers = {a.layers for a in validation_set}
    assert not any(a.layers in validation_layers for a in calibration_set), "the two sets must be disjoint"
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with LutStore(args.db) as store:
        common = dict(
            conditions=Conditions(args.device, args.backend, args.threads, args.batch),
            protocol=args.protocol,
        )
        report = calibrate(store, calibration_set, **common, tag="bench-calibration")
        validation = validate(store, validation_set, **common, tag="bench-validation")
    seconds = time.monotonic() - started

    m, ms = validation.metrics, validation.plain_metrics
    result = {
        "device": args.device,
        "backend": args.backend,
        "calibration_runs": report.runs,
        "correction": report.correction.variant,
        "calibration_cv": {k: v for k, v in report.correction.metrics.items() if k.startswith("cv_")},
        "validation": m,
        "validation_plain": ms,
        "seconds": round(seconds, 1),
        "rows": validation.rows,
    }
    print(
        f"calibrated on {report.runs} sampled architectures of {', '.join(spaces)} ({report.correction.variant} "
        "correction, "
        f"leave-one-out RMSPE {report.correction.metrics['cv_rmspe']:.1%})"
    )
    print(f"validated on {m['n']} others (the family and {args.validation} samples):")
    print(f"{'metric':16s}{'at run speed':>14s}{'plain':>10s}{'target':>10s}")
    for key, target in (
        ("within_10pct", ">= 95%"),
        ("rmspe", ""),
        ("mape", ""),
        ("kendall_tau", ">= 0.9"),
        ("spearman_rho", ""),
    ):
        fmt = "{:.1%}" if key in ("within_10pct", "rmspe", "mape") else "{:.3f}"
        scaled = fmt.format(ms[key]) if ms else "-"
        print(f"{key:16s}{fmt.format(m[key]):>14s}{scaled:>10s}{target:>10s}")
    print(f"{seconds / 60:.1f} min (measuring what the table lacked)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
