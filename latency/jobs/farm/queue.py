"""The farm's queue: procrastinate's app in the table's own database, and what `--queue` defers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL

from latency.jobs.farm.ledger import FarmLedger
from latency.vocab.arch import Arch
from latency.vocab.blocks import BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.errors import LutError
from lut_db import LutStore, arch_hash
from profilers.devices import backend_of
from profilers.protocol import PROTOCOLS

TASK_NAME = "lut.measure"  # a job: a group of blocks (`keys`) or one whole network (`archs`)
UNIT_LOCK = 0x6C7574  # first half of the advisory lock key of a unit ("lut"); the second is the unit's hash
NEEDS_POSTGRES = (
    "A device farm needs one table that every host reaches: point --db (or LUT_DB_URL) at a PostgreSQL "
    "database, postgresql+psycopg://USER@HOST/DB, on each host that queues or measures; the default SQLite "
    "table is this machine's alone."
)


def queue_of(device: str) -> str:
    return f"lut:{device}"


def require_postgres(store: LutStore) -> URL:
    if store.url.get_backend_name() != "postgresql":
        raise LutError(NEEDS_POSTGRES, exit_code=2)
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        raise LutError("The device farm needs its job queue, procrastinate: pip install 'lut[farm]'.") from None
    return store.url


def conninfo(url: URL) -> str:
    """The libpq form of a SQLAlchemy URL (procrastinate speaks psycopg directly)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def queue_app(url: URL, asynchronous: bool) -> Any:
    import procrastinate

    libpq = conninfo(url)
    if asynchronous:
        return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=libpq))
    return procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=libpq))


def queue_exists(store: LutStore) -> bool:
    """Whether the farm's queue and ledger are in the table's database (read only)."""
    from latency.jobs.farm.ledger import FarmWorkerRow

    with store.engine.connect() as conn:
        found = conn.execute(
            text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL AND to_regclass(:ledger) IS NOT NULL"),
            {"ledger": FarmWorkerRow.__tablename__},
        ).scalar()
    return bool(found)


def ensure_queue(store: LutStore) -> None:
    """procrastinate's tables in the table's database, created once (serialised between hosts)."""
    from procrastinate.schema import SchemaManager

    with store.engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:a, 0)"), {"a": UNIT_LOCK})
        if conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
            # many statements in one: psycopg runs a query without parameters as it is
            conn.connection.driver_connection.execute(SchemaManager.get_schema())
        FarmLedger.create(conn)


def _job_args(conditions: Conditions, protocol: str, keys: Sequence[str]) -> dict[str, Any]:
    return {**conditions.columns(), "protocol": protocol, "keys": list(keys)}


def listed(args: dict[str, Any], kind: str) -> list[Any]:
    """The blocks (`keys`) or whole networks (`archs`) a job holds; none where the job is malformed (anyone
    who writes the table can write the queue: a worker refuses such a job, and nothing else trips on it)."""
    values = args.get(kind) if isinstance(args, dict) else None
    return values if isinstance(values, list) else []


def count_held(args: dict[str, Any], kind: str) -> int:
    return len(listed(args, kind))


def _same_conditions(args: dict[str, Any], conditions: Conditions) -> bool:
    return isinstance(args, dict) and all(args.get(name) == value for name, value in conditions.columns().items())


# ---- queueing ----------------------------------------------------------------------------------------


@dataclass
class QueueSummary:
    device: str
    backend: str
    threads: int
    requested: int = 0
    already_present: int = 0
    already_queued: int = 0
    queued_blocks: int = 0
    jobs: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _active_args(app: Any, conditions: Conditions) -> list[dict[str, Any]]:
    """The arguments of the queued and running jobs under `conditions` (procrastinate's job list; `app` open)."""
    jobs = [
        job
        for status in ("todo", "doing")
        for job in app.job_manager.list_jobs(queue=queue_of(conditions.device), task=TASK_NAME, status=status)
    ]
    return [job.task_kwargs for job in jobs if _same_conditions(job.task_kwargs, conditions)]


def enqueue_blocks(
    store: LutStore,
    conditions: Conditions,
    specs: Sequence[BlockSpec],
    protocol: str = "standard",
    job_size: int | None = None,
) -> QueueSummary:
    """Defer a job per `job_size` blocks (default: the protocol's group) that neither the table nor a
    queued job holds."""
    require_postgres(store)
    ensure_queue(store)
    backend = backend_of(conditions)  # reaches no device
    conditions = conditions.with_backend(backend)
    summary = QueueSummary(conditions.device, backend, conditions.threads, requested=len(specs))
    present = store.measured_keys(conditions)
    app = queue_app(store.url, asynchronous=False)
    with app.open():  # one connection for the queue's reading and the deferring
        queued = {key for args in _active_args(app, conditions) for key in listed(args, "keys") if isinstance(key, str)}
        unique = list({s.key: s for s in specs}.values())
        todo = [s.key for s in unique if s.key not in present and s.key not in queued]
        summary.already_present = sum(s.key in present for s in unique)
        summary.already_queued = sum(s.key in queued and s.key not in present for s in unique)
        size = job_size or PROTOCOLS[protocol].group_size
        groups = [todo[start : start + size] for start in range(0, len(todo), size)]
        ids = _defer(app, conditions, [_job_args(conditions, protocol, keys) for keys in groups])
    for keys, job_id in zip(groups, ids, strict=True):
        if job_id is None:  # another host queued the same group a moment ago
            summary.already_queued += len(keys)
        else:
            summary.jobs.append(job_id)
            summary.queued_blocks += len(keys)
    return summary


def _defer(app: Any, conditions: Conditions, jobs: list[dict[str, Any]]) -> list[int | None]:
    """Each job's id, or None where the same job is queued already (procrastinate's queueing lock; `app`
    open)."""
    from procrastinate.exceptions import AlreadyEnqueued

    ids: list[int | None] = []
    for args in jobs:
        digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:32]
        deferrer = app.configure_task(TASK_NAME, queue=queue_of(conditions.device), queueing_lock=digest)
        try:
            ids.append(deferrer.defer(**args))
        except AlreadyEnqueued:
            ids.append(None)
    return ids


@dataclass
class RunsQueueSummary:
    device: str
    backend: str
    tag: str
    requested: int = 0
    already_present: int = 0
    already_queued: int = 0
    queued_networks: int = 0
    blocks: QueueSummary | None = None  # their blocks, for a calibration (a transfer needs none)
    jobs: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def enqueue_runs(
    store: LutStore,
    conditions: Conditions,
    archs: Sequence[Arch],
    tag: str,
    deploy_env: DeployEnv = DEFAULT,
    protocol: str = "standard",
    with_blocks: bool = True,
) -> RunsQueueSummary:
    """Defer one job per whole network that has no run under `tag` yet and no queued job (and, with
    `with_blocks`, the networks' missing blocks): what `lut calibrate` measures, for the farm. Once the
    workers are done, `lut calibrate` with the same options measures nothing and fits."""
    require_postgres(store)
    ensure_queue(store)
    backend = backend_of(conditions)
    conditions = conditions.with_backend(backend)
    summary = RunsQueueSummary(conditions.device, backend, tag, requested=len(archs))
    if with_blocks:
        specs = [s for a in archs for s in a.specs(conditions.batch, conditions.dtype)]
        summary.blocks = enqueue_blocks(store, conditions, specs, protocol)
    present = {r.arch_hash for r in store.e2e_runs(conditions, tag=tag, deploy_env=deploy_env.name)}
    app = queue_app(store.url, asynchronous=False)
    with app.open():  # one connection for the queue's reading and the deferring
        queued = {
            arch_hash(text_)
            for args in _active_args(app, conditions)
            if args.get("tag") == tag
            for text_ in listed(args, "archs")
            if isinstance(text_, str)
        }
        unique = list({arch_hash(a.to_json()): a for a in archs}.items())
        todo = [a for h, a in unique if h not in present and h not in queued]
        summary.already_present = sum(h in present for h, _ in unique)
        summary.already_queued = sum(h in queued and h not in present for h, _ in unique)
        jobs = [
            {
                **conditions.columns(),
                "protocol": protocol,
                "tag": tag,
                "deploy_env": deploy_env.name,
                "archs": [a.to_json()],
            }
            for a in todo
        ]
        for job_id in _defer(app, conditions, jobs):
            if job_id is None:
                summary.already_queued += 1
            else:
                summary.jobs.append(job_id)
                summary.queued_networks += 1
    return summary
