"""Covering an estimate with measurements: the blocks a request lacks measured (inside the networks that
hold them where the runtime allows it, else alone) or, on a device that is not this host's, predicted."""

from __future__ import annotations

from collections.abc import Sequence

from latency.estimate.estimator import Estimator
from latency.estimate.predictor import predict_blocks, training_set
from latency.jobs.in_context import profile_in_context, times_in_context
from latency.jobs.measure import Progress, profile_blocks
from latency.vocab.arch import Arch
from latency.vocab.blocks import CONTEXT_ALONE, BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from lut_db import LutStore
from profilers.devices import is_local
from profilers.errors import ProfilerError
from profilers.protocol import ProgressSink, Protocol


def covering_estimator(
    archs: Sequence[Arch],
    conditions: Conditions,
    store: LutStore,
    progress: Progress,
    measure_missing: bool = True,
    strict: bool = False,
    protocol: Protocol | str = "standard",
    deploy_env: DeployEnv = DEFAULT,
) -> Estimator:
    """An Estimator whose table covers `archs`: missing blocks are measured on a local device (unless
    `measure_missing` is False), or predicted on another; `strict` leaves every missing block missing."""
    estimator = Estimator(conditions, store=store, deploy_env=deploy_env)
    if not strict:
        with progress(f"measuring missing blocks on {conditions.device}") as bar:
            fill_missing(estimator, archs, measure=measure_missing, protocol=protocol, progress=bar)
    return estimator


def fill_missing(
    estimator: Estimator,
    archs: Sequence[Arch],
    measure: bool = True,
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
) -> None:
    """Make the estimator's table cover `archs`: on a local device (this host, its GPUs) measure
    the missing blocks, unless `measure` is False: inside the networks that hold them, run as the
    estimator's deployment runs them, where the backend allows it (latency.jobs.in_context), else one by
    one; on another device (a phone) predict them from the blocks measured on it, marked `predicted`.
    What stays missing is left for `estimate`."""
    lacking = [(a, estimator.missing(a)) for a in archs]
    missing = list({s.key: s for _, specs in lacking for s in specs}.values())
    if not missing:
        return
    if not is_local(estimator.conditions.device):
        predict_missing(estimator, missing)
        return
    if not measure:
        return
    conditions = estimator.conditions
    if times_in_context(conditions):
        networks = [a for a, specs in lacking if specs]
        summary = profile_in_context(
            networks, estimator.store, conditions, protocol, estimator.deploy_env, progress=progress
        )
    else:
        summary = profile_blocks(missing, estimator.store, conditions, protocol, progress=progress)
    if summary.interrupted:
        raise KeyboardInterrupt
    if summary.failed:
        key, error = next(iter(summary.failed.items()))
        raise ProfilerError(
            f"{len(summary.failed)} blocks could not be measured on {estimator.conditions.device}: {key}: {error}."
        )
    estimator.reload()


def predict_missing(estimator: Estimator, missing: Sequence[BlockSpec], minimum: int = 20) -> int:
    """Predict blocks from the device's measured ones (none when it has fewer than `minimum`): from the rows of
    the kind most of them are (timed alone, or inside networks), and the predictions stand for that kind."""
    rows = estimator.store.measurement_map(estimator.conditions, source="measured")
    contexts = [r.provenance.protocol.get("context", CONTEXT_ALONE) for r in rows.values()]
    context = max(set(contexts), key=contexts.count, default=CONTEXT_ALONE)
    rows = {k: r for k, r in rows.items() if r.provenance.protocol.get("context", CONTEXT_ALONE) == context}
    if len(rows) < minimum:
        return 0
    specs, latencies_us, _ = training_set(rows)
    predictions = predict_blocks(specs, latencies_us, missing)
    estimator.add_predictions(list(missing), predictions.latency_us, predictions.expected_error, context)
    return len(missing)
