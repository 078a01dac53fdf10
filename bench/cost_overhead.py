"""What the latency cost adds to a search step: LatencyCost forward+backward beside one training
step of the DMasking supernet (the model the search trains), on the same machine, as a ratio.

The table is filled with stand-in block times (this times the cost's arithmetic, which does not
depend on the values). Target: under 1%.

    python -m bench.cost_overhead [--batch 64] [--proxy 16,20,24,28] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.estimate_speed import fill
from latency.estimate.estimator import Estimator
from latency.vocab.space import get_space
from lut_db import LutStore
from search_cost.cost import LatencyCost
from search_cost.supernet import DMaskingSupernet


def timed(step: Callable[[], None], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--proxy", default="16,20,24,28")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cost_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = get_space()
    with tempfile.TemporaryDirectory() as tmp, LutStore(str(Path(tmp) / "lut.sqlite")) as store:
        fill(store)
        cost = LatencyCost(space, estimator=Estimator("cpu", store=store))
    proxy = tuple(int(v) for v in args.proxy.split(","))
    net = DMaskingSupernet(space, num_classes=10, proxy_resolutions=proxy)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    alphas = {name: torch.zeros(n, requires_grad=True) for name, n in space.dimensions}
    x = torch.randn(args.batch, 3, max(proxy), max(proxy))
    y = torch.randint(0, 10, (args.batch,))

    def weights() -> dict[str, torch.Tensor]:
        return {name: F.gumbel_softmax(alpha, tau=1.0) for name, alpha in alphas.items()}

    def train_step() -> None:
        loss = F.cross_entropy(net(x, {k: v.detach() for k, v in weights().items()}), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def cost_step() -> None:
        w = weights()
        resolution = w.pop("resolution")
        cost(w, resolution).backward()

    train_step(), cost_step()  # warm up
    train = statistics.median(timed(train_step, 10))
    latency = statistics.median(timed(cost_step, 200))
    result = {
        "train_step_s": train,
        "cost_forward_backward_s": latency,
        "ratio": latency / train,
        "batch": args.batch,
        "proxy_resolutions": list(proxy),
        "threads": 1,
    }
    print(f"{'supernet training step (median s)':40s}{train:>12.4f}")
    print(f"{'LatencyCost forward+backward (median s)':40s}{latency:>12.6f}")
    print(f"{'ratio':40s}{latency / train:>12.3%}   target < 1%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
