"""What `lut serve` answers from: the table opened read-only, and estimators kept while the table is unchanged.

Every answer is the library's own (Estimator, the ranking, the validation comparison, the farm's state),
so the service gives the numbers the commands give. An estimator costs a table read (and, for a phone,
a predictor fit for its missing blocks): it is kept per conditions and deployment, and dropped when the
table's revision moves (any row written by `lut profile`, a worker, a calibration), which is checked on
every request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latency.estimate import Estimator
from latency.estimate.estimator import Entry, Estimate
from latency.jobs.cover import fill_missing
from latency.jobs.rank import Ranking, rank_columns, rank_family
from latency.jobs.validate import ValidationReport, compare
from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.errors import LutError
from latency.vocab.family import family_archs, list_models, model_info
from latency.vocab.space import Space, get_space, list_spaces
from lut_db import LutStore
from profilers.devices import with_backend

KEPT_ESTIMATORS = 32  # estimators kept at once (the conditions asked for most recently)


class NotFound(LutError):
    """A name the service does not know (a model, a space, a device): answered 404."""


@dataclass(frozen=True)
class Query:
    """The conditions and deployment a request asks under."""

    conditions: Conditions
    deploy_env: str = "default"


@dataclass
class Kept:
    """What was derived under one query from the table as it was: the estimator, and what came from it.
    Dropped whole when the table moves or when its query is the least recently used of KEPT_ESTIMATORS."""

    estimator: Estimator
    tables: dict[str, list[np.ndarray]] = field(default_factory=dict)  # by space
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)  # a family model's, as JSON


class TableService:
    """The table, read-only, with an estimator per (conditions, deployment) while the table stays as it was."""

    def __init__(self, store: LutStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._revision: tuple[Any, ...] | None = None
        self._kept: OrderedDict[Query, Kept] = OrderedDict()  # the most recently used last
        self._building: dict[Query, threading.Lock] = {}  # one estimator built (or extended) at a time per query

    @property
    def revision_is_cheap(self) -> bool:
        """Whether checking the table's revision costs microseconds and no round trip (SQLite's data_version),
        so that a kept answer may be given without leaving a server's event loop."""
        return self.store.url.get_backend_name() == "sqlite"

    # ---- names a request may use (never a path: nothing a request sends is opened as a file) ----------
    @staticmethod
    def family_arch(name: str) -> Arch:
        if name not in list_models(available_only=True):
            raise NotFound(f"There is no model '{name}' in the family; the models are {', '.join(list_models())}.")
        return family_archs([name])[0]

    @staticmethod
    def space(name: str) -> Space:
        if name not in list_spaces():
            raise NotFound(f"There is no search space '{name}'; the spaces are {', '.join(list_spaces())}.")
        return get_space(name)

    def check_device(self, name: str) -> None:
        if self.store.device(name) is None:
            known = ", ".join(d.name for d in self.store.devices()) or "none yet"
            raise NotFound(f"The table has no device '{name}' (devices: {known}).")

    # ---- estimators ---------------------------------------------------------------------------------
    def estimator(self, query: Query, archs: Sequence[Arch] = ()) -> Estimator:
        """The estimator for `query`, covering `archs` as `lut estimate --no-profile` does (a phone's
        missing blocks predicted from its measured ones; nothing is measured or written)."""
        return self._kept_for(query, archs).estimator

    def _kept_for(self, query: Query, archs: Sequence[Arch] = ()) -> Kept:
        """The kept record of `query` under the table's current revision, built (seconds, for a phone's
        predictor) while holding up only the requests under the same conditions."""
        self._follow_table()
        with self._lock:
            kept = self._kept.get(query)
            if kept is not None:
                self._kept.move_to_end(query)
            elif len(self._building) > 4 * KEPT_ESTIMATORS:
                self._building.clear()  # locks of conditions asked for once (a lock held meanwhile is only dropped)
            building = self._building.setdefault(query, threading.Lock())
            revision = self._revision
        with building:
            if kept is None:
                with self._lock:
                    kept = self._kept.get(query)  # built meanwhile by another request
            if kept is None:
                self.check_device(query.conditions.device)
                conditions = with_backend(query.conditions)
                estimator = Estimator(conditions, store=self.store, deploy_env=query.deploy_env)
                # a phone's missing blocks are predicted by a model fitted on its rows: one fit for the
                # whole family, not one per model page
                fill_missing(estimator, family_archs(["all"]), measure=False)
                kept = Kept(estimator)
                with self._lock:
                    if self._revision == revision:  # else the table moved meanwhile: used once, not kept
                        self._kept[query] = kept
                        while len(self._kept) > KEPT_ESTIMATORS:  # each holds its table's rows
                            self._kept.popitem(last=False)
            if archs and any(kept.estimator.missing(a) for a in archs):
                fill_missing(kept.estimator, archs, measure=False)
        return kept

    def _follow_table(self) -> None:
        """Drop what was derived from the table when its revision moved (a row written since). A record
        a request still holds then answers that request only: nothing reaches it again."""
        revision = self.store.revision()
        with self._lock:
            if revision != self._revision:
                self._kept.clear()
                self._revision = revision

    def estimate(self, query: Query, arch: Arch) -> Estimate:
        return self.estimator(query, [arch]).estimate(arch)

    def kept_model_estimate(self, query: Query, name: str) -> dict[str, Any] | None:
        """The family model's estimate kept from an earlier request, if the table has not moved since
        (microseconds: what a server answers without leaving its event loop), else None."""
        self._follow_table()
        with self._lock:
            kept = self._kept.get(query)
            return None if kept is None else kept.estimates.get(name)

    def estimate_model(self, query: Query, name: str) -> dict[str, Any]:
        """A family model's estimate as JSON (Estimate.to_dict), kept while the table is unchanged: the
        request a dashboard or a ranking script repeats."""
        arch = self.family_arch(name)
        kept = self._kept_for(query, [arch])
        found = kept.estimates.get(name)
        if found is None:
            found = kept.estimates[name] = kept.estimator.estimate(arch).to_dict()
        return found

    def estimate_many(self, query: Query, archs: list[Arch]) -> np.ndarray:
        return self.estimator(query, archs).estimate_many(archs)

    def estimate_points(self, query: Query, space: Space, indices: np.ndarray) -> np.ndarray:
        """Vectorised estimates of points of `space` (rows of choice indices, as Space.sample_indices)."""
        estimator, tables = self._space_tables(query, space)
        return estimator.estimate_space(space, indices, tables)

    def summary(self, query: Query) -> dict[str, Any]:
        """The estimator under `query`: resolved conditions, calibration and its metrics, intercept."""
        return self._described(query, self.estimator(query))

    def space_tables(self, query: Query, space: Space) -> dict[str, Any]:
        """What LatencyCost is built from: each block position's corrected times, with the intercept and
        calibration of the same estimator."""
        estimator, tables = self._space_tables(query, space)
        return {**self._described(query, estimator), "space": space.name, "tables": [t.tolist() for t in tables]}

    @staticmethod
    def _described(query: Query, estimator: Estimator) -> dict[str, Any]:
        return {
            "conditions": estimator.conditions.columns(),
            "deploy_env": query.deploy_env,
            "calibrated": estimator.calibrated,
            "calibration": estimator.correction.metrics if estimator.correction else {},
            "intercept_ms": estimator.intercept_ms,
            "entries": estimator.entries,
        }

    def _space_tables(self, query: Query, space: Space) -> tuple[Estimator, list[np.ndarray]]:
        kept = self._kept_for(query)
        tables = kept.tables.get(space.name)
        if tables is None:  # from this very estimator: tables and intercept are of one table state
            tables = kept.tables[space.name] = kept.estimator.space_tables(space)
        return kept.estimator, tables

    def block_entries(self, query: Query, arch: Arch) -> list[tuple[Any, Entry]]:
        """Each block of `arch` with what the table (or a prediction) holds for it, in network order."""
        estimator = self.estimator(query, [arch])
        specs = arch.specs(batch=query.conditions.batch, dtype=query.conditions.dtype)
        return [(spec, estimator.entry(spec)) for spec in specs]

    # ---- the table's views --------------------------------------------------------------------------
    def devices(self) -> list[dict[str, Any]]:
        """Each device: its fingerprint, rows by source per conditions, its calibrations and their errors."""
        coverage: dict[str, list[Any]] = {}
        for c in self.store.coverage():
            coverage.setdefault(c.conditions.device, []).append(c)
        fits: dict[str, list[Any]] = {}
        for fit in self.store.fits():
            fits.setdefault(fit.conditions.device, []).append(fit)
        out = []
        for d in self.store.devices():
            held = coverage.get(d.name, [])
            out.append(
                {
                    **d.to_dict(),
                    "last_measured_at": max((c.last_measured_at for c in held), default=None),
                    "coverage": [
                        {**c.conditions.columns(), "rows": c.rows, "last_measured_at": c.last_measured_at} for c in held
                    ],
                    "calibrations": [
                        {
                            **f.conditions.columns(),
                            "deploy_env": f.deploy_env,
                            "model": f.params.get("variant"),
                            "transferred_from": f.params.get("transferred_from"),
                            "cv_rmspe": f.metrics.get("cv_rmspe"),
                            "runs": f.n_samples,
                            "fitted_at": f.fitted_at,
                        }
                        for f in fits.get(d.name, [])
                    ],
                }
            )
        return out

    @staticmethod
    def models() -> list[dict[str, Any]]:
        return [model_info(name).to_dict() for name in list_models()]

    def rank(self, devices: list[str], template: Query, budget_ms: float | None) -> Ranking:
        columns = rank_columns([Conditions(d, *_rest(template.conditions)) for d in devices])
        family = family_archs(["all"])
        estimators = {
            label: self.estimator(Query(conditions, template.deploy_env), family)
            for label, conditions in columns.items()
        }
        return rank_family(list(columns), lambda column, model: estimators[column].estimate(model), budget_ms)

    def validation(self, query: Query, tag: str = "validation") -> ValidationReport:
        runs = self.store.e2e_runs(with_backend(query.conditions), tag=tag, deploy_env=query.deploy_env)
        archs = list({r.arch_hash: r.arch for r in runs}.values())
        if not archs:
            raise NotFound(
                f"No end-to-end run tagged '{tag}' on {query.conditions.device} under these conditions: "
                "`lut validate` measures them."
            )
        return compare(archs, self.estimator(query, archs), self.store, tag)

    def runs(self, query: Query, arch: Arch) -> list[dict[str, Any]]:
        """The end-to-end runs of `arch` (any tag) under the query's conditions and deployment."""
        from lut_db import arch_hash

        digest = arch_hash(arch.to_json())
        conditions = with_backend(query.conditions)
        return [
            {
                "tag": r.tag,
                "measured_ms": r.stats.median_us / 1e3,
                "p10_ms": r.stats.p10_us / 1e3,
                "p90_ms": r.stats.p90_us / 1e3,
                "measured_at": r.provenance.measured_at,
            }
            for r in self.store.e2e_runs(conditions, deploy_env=query.deploy_env)
            if r.arch_hash == digest
        ]

    def farm(self) -> dict[str, Any]:
        """The farm's jobs and workers per device, or why there is no farm to show."""
        if self.store.url.get_backend_name() != "postgresql":
            return {
                "available": False,
                "reason": "The device farm's queue lives in a PostgreSQL table; this is SQLite.",
            }
        from latency.jobs.farm.status import farm_status

        try:
            devices = farm_status(self.store, create_queue=False)
        except LutError as exc:
            return {"available": False, "reason": str(exc)}
        return {"available": True, "devices": [vars(d) for d in devices]}


def _rest(conditions: Conditions) -> tuple[Any, ...]:
    """The conditions but the device (backend, threads, batch, dtype), for another device."""
    return conditions.backend, conditions.threads, conditions.batch, conditions.dtype
