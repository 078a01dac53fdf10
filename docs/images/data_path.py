"""Draws docs/images/data-path.png, the README's picture of lut's data path: python docs/images/data_path.py"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

STEPS = [
    ("architecture", "a family model, ARCH.json,\na point of a search space"),
    ("blocks", "keyed by configuration\nand input shape"),
    ("table", "a row per block and device\n(SQLite or PostgreSQL)"),
    ("estimate", "block sum + calibration,\nchecked against real runs"),
    ("cost", "LatencyCost: expected\nlatency, differentiable"),
    ("search", "FBNetV2's channel and\nresolution DNAS"),
]
DEVICES = "devices: this CPU (torch, ONNX Runtime, ExecuTorch) · CUDA GPUs · Android phones over adb · a farm of them"


def main() -> None:
    fig, ax = plt.subplots(figsize=(12, 3.1), dpi=110)
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 3.1)
    ax.axis("off")
    width, gap = 1.65, 0.32
    for i, (name, what) in enumerate(STEPS):
        x = 0.15 + i * (width + gap)
        colour = "#d62728" if name == "table" else "#1f77b4"
        ax.add_patch(FancyBboxPatch((x, 1.55), width, 0.9, boxstyle="round,pad=0.04", fc="white", ec=colour, lw=1.6))
        ax.text(x + width / 2, 2.18, name, ha="center", va="center", fontsize=12, weight="bold", color=colour)
        ax.text(x + width / 2, 1.82, what, ha="center", va="center", fontsize=7.5, color="#333")
        if i:
            ax.add_patch(
                FancyArrowPatch(
                    (x - gap + 0.02, 2.0), (x - 0.02, 2.0), arrowstyle="-|>", mutation_scale=14, color="#555"
                )
            )
    table_x = 0.15 + 2 * (width + gap) + width / 2
    ax.add_patch(FancyBboxPatch((1.0, 0.2), 10.0, 0.55, boxstyle="round,pad=0.04", fc="#f4f6f8", ec="#999", lw=1))
    ax.text(6.0, 0.47, DEVICES, ha="center", va="center", fontsize=9, color="#333")
    ax.add_patch(FancyArrowPatch((table_x, 0.8), (table_x, 1.5), arrowstyle="-|>", mutation_scale=14, color="#d62728"))
    ax.text(table_x + 0.08, 1.12, "lut profile: measure", fontsize=8, color="#d62728")
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("data-path.png"))


if __name__ == "__main__":
    main()
