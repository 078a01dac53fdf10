"""Pictures: estimated vs measured latency (validate), accuracy vs latency per device (rank).

matplotlib is imported only when a plot is asked for (it is slow to import).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_validation(rows: Sequence[dict[str, Any]], metrics: dict[str, Any], title: str, path: Path) -> None:
    """Estimated vs measured latency, one point per architecture, with the +-10% band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=120)
    measured = [r["measured_ms"] for r in rows]
    estimated = [r["estimated_ms"] for r in rows]
    low, high = min(measured + estimated) * 0.9, max(measured + estimated) * 1.1
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="estimate = measured")
    ax.fill_between(
        [low, high], [low * 0.9, high * 0.9], [low * 1.1, high * 1.1], color="tab:green", alpha=0.15, label="within 10%"
    )
    family = [r for r in rows if r.get("family")]
    others = [r for r in rows if not r.get("family")]
    ax.scatter(
        [r["measured_ms"] for r in others],
        [r["estimated_ms"] for r in others],
        s=18,
        color="tab:blue",
        label="sampled architectures",
    )
    ax.scatter(
        [r["measured_ms"] for r in family],
        [r["estimated_ms"] for r in family],
        s=36,
        color="tab:red",
        marker="D",
        label="FBNetV2 family",
    )
    for r in family:
        ax.annotate(
            r["name"].replace("dmasking_", ""),
            (r["measured_ms"], r["estimated_ms"]),
            fontsize=7,
            xytext=(4, -8),
            textcoords="offset points",
        )
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("measured end-to-end latency (ms)")
    ax.set_ylabel("estimated latency (ms)")
    summary = f"n={metrics['n']}  within 10%: {metrics['within_10pct']:.0%}  RMSPE {metrics['rmspe']:.1%}  " + (
        "" if metrics["kendall_tau"] is None else f"  tau {metrics['kendall_tau']:.2f}"
    )
    ax.set_title(f"{title}\n{summary}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_ranking(ranking: Any, path: Path) -> None:
    """Top-1 against estimated latency per column (device), the Pareto front joined, the budget marked."""
    plt = _pyplot()
    columns = ranking.columns
    fig, axes = plt.subplots(1, len(columns), figsize=(6.0 * len(columns), 4.8), dpi=120, squeeze=False)
    for ax, device in zip(axes[0], columns, strict=True):
        rows = sorted(ranking.rows, key=lambda r: r.latency_ms[device])
        ax.scatter(
            [r.latency_ms[device] for r in rows],
            [r.top1 for r in rows],
            s=40,
            c=["tab:red" if r.pareto[device] else "tab:gray" for r in rows],
            zorder=3,
        )
        front = [r for r in rows if r.pareto[device]]
        ax.plot(
            [r.latency_ms[device] for r in front],
            [r.top1 for r in front],
            color="tab:red",
            linewidth=1,
            label="Pareto front",
        )
        for r in rows:
            ax.annotate(
                r.name.replace("dmasking_", ""),
                (r.latency_ms[device], r.top1),
                fontsize=8,
                xytext=(5, -3),
                textcoords="offset points",
            )
        if ranking.budget_ms is not None:
            ax.axvline(
                ranking.budget_ms,
                color="tab:blue",
                linestyle="--",
                linewidth=1,
                label=f"budget {ranking.budget_ms:g} ms",
            )
        calibrated = all(r.calibrated.get(device, False) for r in rows)
        ax.set_title(f"{device}" + ("" if calibrated else " (uncalibrated)"))
        ax.set_xlabel("estimated latency (ms)")
        ax.set_ylabel("ImageNet top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("FBNetV2 family: accuracy vs latency")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_search(history: Sequence[Any], target_ms: float, title: str, path: Path) -> None:
    """Proxy accuracy and expected latency on the target device over the search's epochs."""
    plt = _pyplot()
    fig, accuracy_ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    epochs = [log.epoch + 1 for log in history]
    accuracy_ax.plot(epochs, [100 * log.proxy_accuracy for log in history], color="tab:blue", marker="o")
    accuracy_ax.set_xlabel("epoch")
    accuracy_ax.set_ylabel("proxy accuracy (%)", color="tab:blue")
    latency_ax = accuracy_ax.twinx()
    latency_ax.plot(epochs, [log.expected_latency_ms for log in history], color="tab:red", marker="s")
    latency_ax.axhline(target_ms, color="tab:red", linestyle="--", linewidth=1)
    latency_ax.set_ylabel("expected latency (ms); target dashed", color="tab:red")
    accuracy_ax.set_title(title, fontsize=9)
    accuracy_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
