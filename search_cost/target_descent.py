"""Meet a latency target with plain gradient descent on architecture probabilities.

The smallest honest use of LatencyCost on the search side: softmax logits per searched dimension,
a loss that pulls the expected latency to the target while preferring more multiply-adds (a
stand-in for accuracy), SGD, then the argmax architecture, estimated and written as ARCH.json.

    python -m search_cost.target_descent --target-ms 12 [--device cpu] [--steps 400] [--out ARCH.json]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from latency.estimate import Estimator
from latency.space import SpacePoint, get_space
from search_cost.cost import LatencyCost


def descend(
    cost: LatencyCost,
    target_ms: float,
    steps: int = 400,
    lr: float = 0.5,
    flops_weight: float = 0.02,
    latency_weight: float = 100.0,
    final_temperature: float = 0.05,
    log_every: int = 50,
) -> dict[str, torch.Tensor]:
    """Logits per dimension after `steps` of SGD on a (log E[lat] - log target)^2 - w log E[flops].

    The softmax temperature anneals from 1 to `final_temperature`, as in DNAS, so the
    probabilities end near one-hot and the argmax architecture is the one whose latency was
    optimised, not an average of several."""
    logits = {name: torch.zeros(n, requires_grad=True) for name, n in cost.space.dimensions}
    optimizer = torch.optim.SGD(logits.values(), lr=lr)
    for step in range(steps + 1):
        temperature = final_temperature ** (step / max(steps, 1))
        probs = {name: torch.softmax(value / temperature, dim=-1) for name, value in logits.items()}
        resolution = probs.pop("resolution")
        latency = cost(probs, resolution)
        flops = cost.expected_flops(probs, resolution)
        loss = latency_weight * (torch.log(latency) - math.log(target_ms)) ** 2 - flops_weight * torch.log(flops)
        if log_every and step % log_every == 0:
            print(
                f"step {step:4d}  temperature {temperature:.3f}  expected latency {latency.item():8.3f} ms  "
                f"expected FLOPs {flops.item():7.1f} M"
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: value.detach() for name, value in logits.items()}


def argmax_point(cost: LatencyCost, logits: dict[str, torch.Tensor]) -> SpacePoint:
    values = [int(logits[name].argmax()) for name, _ in cost.space.dimensions]
    groups = len(cost.space.groups)
    return SpacePoint(values[0], tuple(values[1 : 1 + groups]), tuple(values[1 + groups :]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-ms", type=float, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--space", default="fbnetv2_f4")
    parser.add_argument("--db", default=None)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    space = get_space(args.space)
    estimator = Estimator(args.device, db=args.db)
    cost = LatencyCost(space, estimator=estimator)
    logits = descend(cost, args.target_ms, args.steps)
    point = argmax_point(cost, logits)
    arch = space.arch(point, name=f"descent-{args.target_ms:g}ms")
    estimate = estimator.estimate(arch)
    print(
        f"target {args.target_ms:.3f} ms; the argmax architecture is estimated at {estimate.latency_ms:.3f} ms "
        f"({estimate.latency_ms / args.target_ms - 1:+.1%}), {sum(s.flops_m for s in arch.specs()):.1f} M FLOPs"
        + ("" if estimate.calibrated else " (uncalibrated table)")
    )
    if args.out:
        args.out.write_text(arch.to_json())
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
