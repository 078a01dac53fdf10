"""LatencyCost on the search side without training: plain gradient descent on architecture
probabilities (search_cost.descent) toward each latency target; how close the argmax architecture's
estimate lands, and its multiply-adds. Prints a table and writes JSON.

    python -m bench.target_descent --targets-ms 8,12,16 [--device cpu] [--space fbnetv2_f4] [--db URL]
        [--steps 400] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latency.estimate import Estimator
from latency.vocab.space import get_space
from search_cost.cost import LatencyCost
from search_cost.descent import argmax_point, descend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets-ms", default="8,12,16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--space", default="fbnetv2_f4")
    parser.add_argument("--db", default=None)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("target_descent.json"))
    args = parser.parse_args()

    space = get_space(args.space)
    estimator = Estimator(args.device, db=args.db)
    cost = LatencyCost(space, estimator=estimator)
    rows = []
    print(f"{'target (ms)':>12} {'estimated (ms)':>15} {'error':>8} {'FLOPs (M)':>10}  architecture")
    for target_ms in (float(t) for t in args.targets_ms.split(",")):
        point = argmax_point(cost, descend(cost, target_ms, args.steps))
        arch = space.arch(point, name=f"descent-{target_ms:g}ms")
        estimated_ms = estimator.estimate(arch).latency_ms
        flops_m = sum(s.flops_m for s in arch.specs())
        rows.append({"target_ms": target_ms, "estimated_ms": estimated_ms, "flops_m": flops_m, "arch": arch.to_dict()})
        print(
            f"{target_ms:12.3f} {estimated_ms:15.3f} {estimated_ms / target_ms - 1:+8.1%} {flops_m:10.1f}  {arch.name}"
        )
    payload = {
        "device": args.device,
        "space": args.space,
        "steps": args.steps,
        "calibrated": estimator.calibrated,
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}" + ("" if estimator.calibrated else " (uncalibrated table)"))


if __name__ == "__main__":
    main()
