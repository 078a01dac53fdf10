"""Meet a latency target with plain gradient descent on architecture probabilities.

The smallest honest use of LatencyCost on the search side: softmax logits per searched dimension,
a loss that pulls the expected latency to the target while preferring more multiply-adds (a
stand-in for accuracy), SGD, then the argmax architecture (bench/target_descent.py runs it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from latency.vocab.space import SpacePoint
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
    log: Callable[[str], None] | None = None,
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
        if log is not None and log_every and step % log_every == 0:
            log(
                f"step {step:4d}  temperature {temperature:.3f}  expected latency {latency.item():8.3f} ms  "
                f"expected FLOPs {flops.item():7.1f} M"
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: value.detach() for name, value in logits.items()}


def argmax_point(cost: LatencyCost, logits: dict[str, torch.Tensor]) -> SpacePoint:
    return cost.space.point_from_row([int(logits[name].argmax()) for name, _ in cost.space.dimensions])
