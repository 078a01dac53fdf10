"""The calibrated correction from block sums to end-to-end latency, as plain data.

Isolated blocks do not add up to the whole network (warm caches per block, per-call overheads,
fused boundaries). The correction is linear in features that are sums over blocks, so it can be
applied block by block: each block contributes `w . features(block)` and the network is the sum
plus an intercept. That keeps the estimate, the vectorised `estimate_many` and the search's
differentiable `LatencyCost` the very same function. Times are in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latency.vocab.blocks import CONTEXT_ALONE, CONTEXT_NETWORK, BlockSpec

CONTEXTS = (CONTEXT_ALONE, CONTEXT_NETWORK)

# Per-block features, all additive over blocks. `alone_ms` is the latency of a block timed alone, 0 for one
# timed inside networks (latency.jobs.in_context): the two kinds sum differently (isolated blocks high).
FEATURES = ("latency_ms", "activations_m", "params_m", "blocks", "flops_m", "alone_ms")
# Variants (feature subsets), by name: a stored fit names its variant (under the key "model", as fits always have).
VARIANTS: dict[str, tuple[str, ...]] = {
    "scale": ("latency_ms",),
    "per_block": ("latency_ms", "blocks"),
    "traffic": ("latency_ms", "activations_m", "params_m", "blocks"),
    # A table holding both kinds of rows: a scale for each kind (in context: latency_ms; alone: the sum of both).
    "per_kind": ("latency_ms", "alone_ms", "blocks"),
    # A transfer's target may follow the blocks' work more than the source's time for them (another
    # runtime's kernels): multiply-adds beside the source's time, or alone as the floor a fit must beat.
    "work": ("latency_ms", "flops_m", "blocks"),
    "flops": ("flops_m", "blocks"),
    # A transfer's default: the average of the "scale" and "flops" fits (latency.estimate.transfer).
    "combined": ("latency_ms", "flops_m", "blocks"),
}
# Calibration over a device's own table keeps the one with the lowest cross-validated error of these.
# (fitting skips a variant its runs cannot determine: per_kind on a table of one kind).
CALIBRATION_VARIANTS = ("scale", "per_block", "traffic", "per_kind")


def block_features(spec: BlockSpec, latency_ms: float, context: str = CONTEXT_ALONE) -> np.ndarray:
    """[the block's table latency (ms), activations in and out (M elements), weights (M), 1,
    multiply-adds (M), its latency again if it was timed alone (else 0)]."""
    activations = (np.prod(spec.input_shape) + np.prod(spec.output_shape)) / 1e6
    alone_ms = latency_ms if context == CONTEXT_ALONE else 0.0
    return np.array([latency_ms, activations, spec.params_m, 1.0, spec.flops_m, alone_ms])


@dataclass(frozen=True)
class Correction:
    """`network_ms = intercept + sum over blocks of coef . features[variant]`.

    `table_canary_us` records the canary's median in the table the fit was made on: comparing it
    with the canary now tells how far the machine has drifted since. `contexts`: where the blocks it
    corrects were timed (alone, inside networks: those of its runs); a block timed elsewhere counts at its
    plain table time, as the fit says nothing about it.
    """

    variant: str
    coef: tuple[float, ...]
    intercept: float
    metrics: dict[str, float]
    table_canary_us: float | None = None
    contexts: tuple[str, ...] = (CONTEXT_ALONE,)

    @property
    def weights(self) -> np.ndarray:
        """Coefficients over all FEATURES (zero for those the variant does not use)."""
        full = np.zeros(len(FEATURES))
        for name, value in zip(VARIANTS[self.variant], self.coef, strict=True):
            full[FEATURES.index(name)] = value
        return full

    def block_ms(self, features: np.ndarray) -> np.ndarray:
        """Each block's contribution (features: one block's per row, [..., len(FEATURES)]): corrected, or
        its plain time if it was timed where none of the fit's blocks were."""
        corrected = features @ self.weights
        if len(self.contexts) == len(CONTEXTS):
            return corrected
        return np.where(self.corrects(features), corrected, features[..., FEATURES.index("latency_ms")])

    def corrects(self, features: np.ndarray) -> np.ndarray:
        """Whether each block (features: one block's per row) was timed where the fit's blocks were."""
        alone = features[..., FEATURES.index("alone_ms")] > 0
        return (alone & (CONTEXT_ALONE in self.contexts)) | (~alone & (CONTEXT_NETWORK in self.contexts))

    def to_params(self) -> dict[str, Any]:
        return {
            "model": self.variant,
            "features": list(VARIANTS[self.variant]),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "table_canary_us": self.table_canary_us,
            "contexts": list(self.contexts),
        }

    @classmethod
    def from_params(cls, params: dict[str, Any], metrics: dict[str, Any]) -> Correction:
        return cls(
            variant=params["model"],
            coef=tuple(params["coef"]),
            intercept=float(params["intercept"]),
            metrics=dict(metrics),
            table_canary_us=params.get("table_canary_us"),
            contexts=tuple(params.get("contexts", (CONTEXT_ALONE,))),  # fits before blocks were timed in context
        )


# The uncalibrated estimate: the plain sum of the blocks' table latencies.
IDENTITY = Correction(variant="scale", coef=(1.0,), intercept=0.0, metrics={}, contexts=CONTEXTS)
