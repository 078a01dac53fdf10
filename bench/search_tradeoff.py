"""Three latency targets on one device: search, estimate and measure each, draw the trade-off.

For each target, `lut search`'s machinery runs the DMasking search against the table's
LatencyCost, projects the result onto the budget, estimates it and measures it end to end. Prints
target, estimated, measured latency and proxy accuracy per target as a table and JSON (with the
estimate stated at the machine's speed during the run beside it, as `lut validate` does), and draws
accuracy against measured latency as a PNG. On this host it also times each result as a user does
(`bench.reference_check`'s loop, `--user-loops` fresh plain processes, their median) and says whether
that lands within 10% of the target. Tighter targets must give faster measured networks. Fill and
calibrate the table first (`lut profile --space`, `lut calibrate --space`), or the estimates are
plain block sums.

    python -m bench.search_tradeoff --device cpu [--targets 9,12,15] [--epochs 16] [--user-loops 3] [--db URL]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.reference_check import user_loop_ms
from latency.estimate.estimator import Estimator
from latency.estimate.fitting import at_run_speed
from latency.jobs.measure import latest_run, profile_archs
from latency.vocab.space import get_space
from lut_db import LutStore
from search_cost.cost import LatencyCost
from search_cost.search import Search, SearchConfig

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--space", default="fbnetv2_f4")
    parser.add_argument("--targets", default="9,12,15", help="comma-separated targets (ms)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--db", default=None)
    parser.add_argument("--user-loops", type=int, default=3, help="a user's loops per result (cpu, torch; 0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS / "search_tradeoff.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "search_tradeoff.png")
    args = parser.parse_args()

    space = get_space(args.space)
    store = LutStore(args.db)
    estimator = Estimator(args.device, store=store)
    cost = LatencyCost(space, estimator=estimator)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        started = time.monotonic()
        config = SearchConfig(target_ms=target, epochs=args.epochs)
        result = Search(space, cost, config, RESULTS / f"search-{target:g}ms.ckpt").run(
            on_epoch=lambda log, t=target: print(
                f"  {t:g} ms: epoch {log.epoch + 1} accuracy "
                f"{log.proxy_accuracy:.3f} E[lat] {log.expected_latency_ms:.2f} ms"
            )
        )
        estimated = estimator.estimate(result.arch).latency_ms
        profile_archs([result.arch], store, estimator.conditions, tag="search-tradeoff", force=True)
        run = latest_run(store.e2e_runs(estimator.conditions, tag="search-tradeoff"), result.arch)
        measured = run.stats.median_us / 1e3
        user_runs = []
        if args.user_loops and args.device == "cpu" and estimator.conditions.backend == "torch":
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "arch.json"
                path.write_text(result.arch.to_json())
                user_runs = [user_loop_ms("torch", path, estimator.conditions.threads) for _ in range(args.user_loops)]
        rows.append(
            {
                "target_ms": target,
                "estimated_ms": estimated,
                "measured_ms": measured,
                "user_ms": statistics.median(user_runs) if user_runs else None,
                "user_runs_ms": user_runs,
                # The estimate at the machine's speed during the run (canary), as `lut validate` states it.
                "estimated_then_ms": at_run_speed(estimated, run, estimator.table_canary_us),
                "calibrated": estimator.calibrated,
                "proxy_accuracy": result.proxy_accuracy,
                "flops_m": sum(s.flops_m for s in result.arch.specs()),
                "resolution": result.arch.resolution,
                "projected": result.point != result.argmax,
                "minutes": (time.monotonic() - started) / 60,
                "arch": result.arch.to_dict(),
            }
        )
    print(
        f"{'target (ms)':>12s}{'estimated':>11s}{'measured':>10s}{'est/target':>11s}{'meas/est':>10s}"
        f"{'est then':>10s}{'meas/then':>10s}{'proxy acc':>10s}{'MFLOPs':>8s}{'res':>5s}{'min':>6s}"
    )
    for r in rows:
        print(
            f"{r['target_ms']:>12.2f}{r['estimated_ms']:>11.3f}{r['measured_ms']:>10.3f}"
            f"{r['estimated_ms'] / r['target_ms'] - 1:>+11.1%}{r['measured_ms'] / r['estimated_ms'] - 1:>+10.1%}"
            f"{r['estimated_then_ms']:>10.3f}{r['measured_ms'] / r['estimated_then_ms'] - 1:>+10.1%}"
            f"{r['proxy_accuracy']:>10.1%}{r['flops_m']:>8.1f}{r['resolution']:>5d}{r['minutes']:>6.1f}"
        )
    print(
        "est then: the estimate at the machine's speed during the run (its canary over the table's); "
        + ("calibrated table" if estimator.calibrated else "uncalibrated table: estimates are block sums")
    )
    for r in rows:
        if r["user_ms"] is not None:
            off = r["user_ms"] / r["target_ms"] - 1
            print(
                f"target {r['target_ms']:g} ms: a user's loop measures {r['user_ms']:.3f} ms (median of "
                f"{', '.join(f'{u:.3f}' for u in r['user_runs_ms'])}), {off:+.1%} from the target"
                + (" (within 10%)" if abs(off) <= 0.10 else "")
            )
    ordered = [r["measured_ms"] for r in sorted(rows, key=lambda r: r["target_ms"])]
    print("tighter targets gave faster measured networks:", all(a < b for a, b in itertools.pairwise(ordered)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    ax.plot([r["measured_ms"] for r in rows], [r["proxy_accuracy"] * 100 for r in rows], "o-", color="tab:red")
    for r in rows:
        ax.annotate(
            f"target {r['target_ms']:g} ms",
            (r["measured_ms"], r["proxy_accuracy"] * 100),
            fontsize=8,
            xytext=(5, -10),
            textcoords="offset points",
        )
        ax.axvline(r["target_ms"], color="tab:gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel(f"measured end-to-end latency on {args.device} (ms)")
    ax.set_ylabel("proxy accuracy (digits, %)")
    ax.set_title(f"FBNetV2 DMasking search on {args.space}: accuracy vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
