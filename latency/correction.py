"""The calibrated correction from block sums to end-to-end latency, as plain data.

Isolated blocks do not add up to the whole network (warm caches per block, per-call overheads,
fused boundaries). The correction is linear in features that are sums over blocks, so it can be
applied block by block: each block contributes `w . features(block)` and the network is the sum
plus an intercept. That keeps the estimate, the vectorised `estimate_many` and the search's
differentiable `LatencyCost` the very same function.

Everything is in canary units: a block's time divided by the canary block's time measured in the
same trial. Machine drift cancels; `canary_ref_us` turns units back into microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latency.blocks import BlockSpec

# Per-block features, all additive over blocks.
FEATURES = ("units", "activations_m", "params_m", "blocks")
# Candidate models (feature subsets); calibration keeps the one with the lowest cross-validated error.
MODELS: dict[str, tuple[str, ...]] = {
    "scale": ("units",),
    "per_block": ("units", "blocks"),
    "traffic": ("units", "activations_m", "params_m", "blocks"),
}


def block_features(spec: BlockSpec, units: float) -> np.ndarray:
    """[latency in canary units, activations in and out (M elements), weights (M), 1]."""
    activations = (np.prod(spec.input_shape) + np.prod(spec.output_shape)) / 1e6
    return np.array([units, activations, spec.params_m, 1.0])


@dataclass(frozen=True)
class Correction:
    """`network_units = intercept + sum over blocks of coef . features[model]`."""

    model: str
    coef: tuple[float, ...]
    intercept: float
    canary_ref_us: float
    metrics: dict[str, float]

    @property
    def weights(self) -> np.ndarray:
        """Coefficients over all FEATURES (zero for those the model does not use)."""
        full = np.zeros(len(FEATURES))
        for name, value in zip(MODELS[self.model], self.coef, strict=True):
            full[FEATURES.index(name)] = value
        return full

    def block_units(self, features: np.ndarray) -> np.ndarray:
        """Each block's corrected contribution (features: [..., len(FEATURES)])."""
        return features @ self.weights

    def to_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "features": list(MODELS[self.model]),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "canary_ref_us": self.canary_ref_us,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any], metrics: dict[str, Any]) -> Correction:
        return cls(
            model=params["model"],
            coef=tuple(params["coef"]),
            intercept=float(params["intercept"]),
            canary_ref_us=float(params["canary_ref_us"]),
            metrics=dict(metrics),
        )


IDENTITY = Correction(model="scale", coef=(1.0,), intercept=0.0, canary_ref_us=float("nan"), metrics={})
