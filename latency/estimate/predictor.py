"""A per-device block-latency predictor, fitted on the blocks measured on that device.

Two stages, in the spirit of nn-Meter's kernel predictors but for whole blocks:
1. an additive cost model: non-negative weights on the work a block does (dense and depthwise
   multiply-adds by kernel, elementwise traffic, weights read, dispatched ops), which extrapolates
   to unmeasured widths and resolutions the way hardware does;
2. a gradient-boosted correction of its log-ratio error on the block's shape, for what the
   additive model cannot express (cache effects, kernel choices).
A bag of such fits, each on a bootstrap sample, gives the prediction (geometric mean) and its
spread, which is how sure the predictor is (the adaptive sampler measures where it is least sure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency.estimate.canary import table_canary_us
from latency.vocab.blocks import KINDS, BlockSpec
from latency.vocab.errors import LutError

MIN_BLOCKS = 8  # measured blocks a predictor learns from, at the least


class PredictorError(LutError, ValueError):
    """A predictor asked to learn from too little."""


ACT_CODES = {"relu": 0, "hswish": 1, "none": 2}
KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}


def _ops(spec: BlockSpec) -> int:
    """Eager ops the block dispatches (conv, BN, activation, add, SE's pool/convs/gate/mul)."""
    if spec.kind == "stem":
        return 3
    if spec.kind == "skip":
        return 0 if spec.is_identity else 3
    if spec.kind == "head":
        return 6
    if spec.kind == "classifier":
        return 3
    ops = (3 if spec.has_expand else 0) + 3 + 2 + (6 if spec.se else 0)
    return ops + (1 if spec.has_residual else 0)


def work_features(spec: BlockSpec) -> np.ndarray:
    """The additive cost basis of one block (all non-negative, per batch)."""
    hw_in, hw_out = spec.h * spec.w, spec.out_h * spec.out_w
    dense = depthwise = stem = elementwise = pooled = 0.0
    if spec.kind == "stem":
        stem = spec.flops / spec.batch
        elementwise = 3 * spec.c_out * hw_out
    elif spec.kind == "skip" and not spec.is_identity:
        dense = spec.c_out * spec.c_in * hw_out
        elementwise = 3 * spec.c_out * hw_out
    elif spec.kind == "head":
        dense = spec.mid * spec.c_in * hw_in + spec.c_out * spec.mid
        elementwise = 3 * spec.mid * hw_in
        pooled = spec.mid * hw_in
    elif spec.kind == "classifier":
        dense = spec.c_out * spec.c_in
    elif spec.kind == "ir":
        dense = (spec.mid * spec.c_in * hw_in if spec.has_expand else 0) + spec.c_out * spec.mid * hw_out
        depthwise = spec.mid * spec.kernel**2 * hw_out
        elementwise = (3 * spec.mid * hw_in if spec.has_expand else 0) + 3 * spec.mid * hw_out
        elementwise += 2 * spec.c_out * hw_out + (2 * spec.mid * hw_out if spec.se else 0)
        pooled = spec.mid * hw_out if spec.se else 0
        dense += 2 * spec.mid * spec.se
    dw = [depthwise if spec.kernel == k else 0.0 for k in (3, 5, 7)]
    per_sample = np.array([dense, *dw, stem, elementwise, pooled]) / 1e6
    return np.concatenate([[float(_ops(spec)), spec.params / 1e6], per_sample * spec.batch, [1.0]])


def shape_features(spec: BlockSpec) -> np.ndarray:
    """What the boosted correction sees: the block's geometry, log-scaled."""
    return np.array(
        [
            KIND_CODES[spec.kind],
            np.log2(spec.c_in),
            np.log2(spec.mid),
            np.log2(spec.c_out),
            spec.kernel,
            spec.stride,
            np.log2(spec.se + 1),
            ACT_CODES[spec.act],
            np.log2(spec.h),
            np.log2(spec.batch),
            float(spec.has_expand),
            float(spec.has_residual),
            np.log2(spec.flops + 1),
            np.log2(spec.params + 1),
        ]
    )


@dataclass
class _Member:
    weights: np.ndarray
    booster: object | None


class BlockPredictor:
    """Predicts a block's median latency (us) on one device; `fit` on that device's measurements."""

    def __init__(self, bags: int = 8, boost: bool = True, seed: int = 0) -> None:
        self.bags, self.boost, self.seed = bags, boost, seed
        self._members: list[_Member] = []

    @staticmethod
    def _additive(work: np.ndarray, y: np.ndarray) -> np.ndarray:
        from scipy.optimize import nnls

        # Rows divided by y: least squares on relative errors, the error that matters.
        weights, _ = nnls(work / y[:, None], np.ones(len(y)))
        return weights

    def _fit_member(self, work: np.ndarray, shape: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> _Member:
        pick = rng.integers(0, len(y), len(y)) if self.bags > 1 else np.arange(len(y))
        weights = self._additive(work[pick], y[pick])
        booster = None
        if self.boost and len(y) >= 40:
            from sklearn.ensemble import HistGradientBoostingRegressor

            base = np.maximum(work[pick] @ weights, 1e-3)
            booster = HistGradientBoostingRegressor(
                max_iter=150,
                learning_rate=0.08,
                max_leaf_nodes=15,
                min_samples_leaf=8,
                l2_regularization=1.0,
                random_state=int(rng.integers(1 << 31)),
            )
            booster.fit(shape[pick], np.log(y[pick] / base))
        return _Member(weights, booster)

    def fit(self, specs: Sequence[BlockSpec], latencies_us: Sequence[float]) -> BlockPredictor:
        if len(specs) < MIN_BLOCKS:
            raise PredictorError(
                f"Predicting blocks needs at least {MIN_BLOCKS} measured blocks of this device and conditions; "
                f"the table has {len(specs)}: measure some first (`lut profile`)."
            )
        work = np.stack([work_features(s) for s in specs])
        shape = np.stack([shape_features(s) for s in specs])
        y = np.asarray(latencies_us, dtype=float)
        rng = np.random.default_rng(self.seed)
        self._members = [self._fit_member(work, shape, y, rng) for _ in range(self.bags)]
        return self

    def predict(self, specs: Sequence[BlockSpec]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted latency (us) and the relative spread across the bag (how unsure)."""
        if not self._members:
            raise ValueError("the predictor is not fitted")
        work = np.stack([work_features(s) for s in specs])
        shape = np.stack([shape_features(s) for s in specs])
        logs = []
        for member in self._members:
            log_pred = np.log(np.maximum(work @ member.weights, 1e-3))
            if member.booster is not None:
                log_pred = log_pred + member.booster.predict(shape)
            logs.append(log_pred)
        stacked = np.stack(logs)
        return np.exp(stacked.mean(axis=0)), np.expm1(stacked.std(axis=0))


def cross_validate(
    specs: Sequence[BlockSpec], latencies_us: Sequence[float], folds: int = 5, seed: int = 0, **kwargs: object
) -> np.ndarray:
    """Out-of-fold relative errors (predicted / measured - 1) of every block."""
    from sklearn.model_selection import KFold

    y = np.asarray(latencies_us, dtype=float)
    errors = np.empty(len(specs))
    for train, held in KFold(n_splits=folds, shuffle=True, random_state=seed).split(y):
        predictor = BlockPredictor(**kwargs).fit([specs[i] for i in train], y[train])  # type: ignore[arg-type]
        predicted, _ = predictor.predict([specs[i] for i in held])
        errors[held] = predicted / y[held] - 1
    return errors


@dataclass(frozen=True)
class Predictions:
    """Predicted latencies (us) of some blocks, each with its expected relative error, and the
    predictor's cross-validated error on the measured blocks it was fitted on."""

    latency_us: np.ndarray
    expected_error: np.ndarray
    cv: dict[str, float]


def predict_blocks(
    measured: Sequence[BlockSpec], latencies_us: Sequence[float], targets: Sequence[BlockSpec], seed: int = 0
) -> Predictions:
    """Fit on the measured blocks, predict `targets`. The expected error of each prediction combines
    the bag's spread (where the predictor is unsure) with the median cross-validated error (its floor)."""
    errors = np.abs(cross_validate(measured, latencies_us, folds=5, seed=seed, bags=4))
    cv = {
        "cv_blocks": len(measured),
        "cv_median_error": float(np.median(errors)),
        "cv_p90_error": float(np.quantile(errors, 0.9)),
        "cv_within_10pct": float(np.mean(errors <= 0.10)),
    }
    if not targets:
        return Predictions(np.empty(0), np.empty(0), cv)
    predicted, spread = BlockPredictor(bags=8, seed=seed).fit(measured, latencies_us).predict(targets)
    return Predictions(predicted, np.hypot(spread, cv["cv_median_error"]), cv)


def training_set(rows: Mapping[str, Any]) -> tuple[list[BlockSpec], np.ndarray, float | None]:
    """Measured table rows as (specs, latencies in us, the canary median they are stated at).

    A block's latency is stated at the table's speed (its time times the canary's median over all
    rows, over the canary of its own trials): the machine drifts as a whole while a space is filled
    (its canary moved 13% in one 20-minute fill here), and no shape feature can predict that."""
    keys = sorted(rows)
    reference = table_canary_us(rows.values())
    latencies = [
        rows[k].stats.median_us
        * (reference / rows[k].provenance.canary_us if reference and rows[k].provenance.canary_us else 1.0)
        for k in keys
    ]
    return [BlockSpec.from_key(k) for k in keys], np.asarray(latencies, dtype=float), reference
