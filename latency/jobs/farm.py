"""The device farm: profiling work shared by many devices through one PostgreSQL table.

The queue is procrastinate's (README, "Device farm": why), in the table's own database, one queue per
device name. `lut profile --queue` defers one job per group of blocks the table lacks and no queued job
holds; `lut worker` on each host with a device attached takes its device's jobs one at a time, measures
them with the same protocol and backends as `lut profile` (each block stored the moment it is final) and
keeps going. One physical unit runs one job at a time however many workers point at it (a PostgreSQL
advisory lock per unit, held while the worker lives); a worker that dies (SIGKILL, an unplugged phone)
stops its heartbeat, and the others put its job back in the queue; a retried job measures only what is
still missing, so nothing is stored twice. A job whose blocks fail is retried a bounded number of times,
then fails with the runner's output kept in the farm's ledger (lut_db.farm).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL

from latency.jobs.job_args import BlocksJob, InvalidJob, RunsJob, parse_job
from latency.jobs.profile import profile_archs, profile_blocks
from latency.vocab.arch import Arch
from latency.vocab.blocks import BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, PRESETS, DeployEnv
from latency.vocab.errors import LutError
from lut_db import LutStore, arch_hash
from lut_db.farm import FarmLedger
from profilers.devices import check_device_name, resolve_device
from profilers.errors import ProfilerError
from profilers.protocol import PROTOCOLS

TASK_NAME = "lut.measure"  # a job: a group of blocks (`keys`) or one whole network (`archs`)
MAX_ATTEMPTS = 3  # a job whose blocks keep failing is tried this often (by any unit), then fails
HEARTBEAT_S = 10.0  # a worker silent for three heartbeats is gone: its job goes back to the queue
_UNIT_LOCK = 0x6C7574  # first half of the advisory lock key of a unit ("lut"); the second is the unit's hash
NEEDS_POSTGRES = (
    "A device farm needs one table that every host reaches: point --db (or LUT_DB_URL) at a PostgreSQL "
    "database, postgresql+psycopg://USER@HOST/DB, on each host that queues or measures; the default SQLite "
    "table is this machine's alone."
)


def queue_of(device: str) -> str:
    return f"lut:{device}"


def _require_postgres(store: LutStore) -> URL:
    if store.url.get_backend_name() != "postgresql":
        raise LutError(NEEDS_POSTGRES, exit_code=2)
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        raise LutError("The device farm needs its job queue, procrastinate: pip install 'lut[farm]'.") from None
    return store.url


def _conninfo(url: URL) -> str:
    """The libpq form of a SQLAlchemy URL (procrastinate speaks psycopg directly)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _app(url: URL, asynchronous: bool) -> Any:
    import procrastinate

    conninfo = _conninfo(url)
    if asynchronous:
        return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
    return procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=conninfo))


def _ensure_queue(store: LutStore) -> None:
    """procrastinate's tables in the table's database, created once (serialised between hosts)."""
    from procrastinate.schema import SchemaManager

    with store.engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:a, 0)"), {"a": _UNIT_LOCK})
        if conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
            # many statements in one: psycopg runs a query without parameters as it is
            conn.connection.driver_connection.execute(SchemaManager.get_schema())
        FarmLedger.create(conn)


def _job_args(conditions: Conditions, protocol: str, keys: Sequence[str]) -> dict[str, Any]:
    return {**conditions.columns(), "protocol": protocol, "keys": list(keys)}


def _listed(args: dict[str, Any], kind: str) -> list[Any]:
    """The blocks (`keys`) or whole networks (`archs`) a job holds; none where the job is malformed (anyone
    who writes the table can write the queue: a worker refuses such a job, and nothing else trips on it)."""
    values = args.get(kind) if isinstance(args, dict) else None
    return values if isinstance(values, list) else []


def _size(args: dict[str, Any], kind: str) -> int:
    return len(_listed(args, kind))


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


def _active_args(store: LutStore, conditions: Conditions) -> list[dict[str, Any]]:
    """The arguments of the queued and running jobs under `conditions`."""
    stmt = text(
        "SELECT args FROM procrastinate_jobs "
        "WHERE queue_name = :q AND task_name = :t AND status::text IN ('todo', 'doing')"
    )
    with store.engine.connect() as conn:
        rows = conn.execute(stmt, {"q": queue_of(conditions.device), "t": TASK_NAME}).scalars().all()
    return [args for args in rows if _same_conditions(args, conditions)]


def enqueue_blocks(
    store: LutStore,
    conditions: Conditions,
    specs: Sequence[BlockSpec],
    protocol: str = "standard",
    job_size: int | None = None,
) -> QueueSummary:
    """Defer a job per `job_size` blocks (default: the protocol's group) that neither the table nor a
    queued job holds."""
    _require_postgres(store)
    _ensure_queue(store)
    backend = conditions.backend or resolve_device(conditions.device).default_backend  # reaches no device
    conditions = replace(conditions, backend=backend)
    summary = QueueSummary(conditions.device, backend, conditions.threads, requested=len(specs))
    present = store.measured_keys(conditions)
    queued = {key for args in _active_args(store, conditions) for key in _listed(args, "keys") if isinstance(key, str)}
    unique = list({s.key: s for s in specs}.values())
    todo = [s.key for s in unique if s.key not in present and s.key not in queued]
    summary.already_present = sum(s.key in present for s in unique)
    summary.already_queued = sum(s.key in queued and s.key not in present for s in unique)
    size = job_size or PROTOCOLS[protocol].group_size
    groups = [todo[start : start + size] for start in range(0, len(todo), size)]
    ids = _defer(store, conditions, [_job_args(conditions, protocol, keys) for keys in groups])
    for keys, job_id in zip(groups, ids, strict=True):
        if job_id is None:  # another host queued the same group a moment ago
            summary.already_queued += len(keys)
        else:
            summary.jobs.append(job_id)
            summary.queued_blocks += len(keys)
    return summary


def _defer(store: LutStore, conditions: Conditions, jobs: list[dict[str, Any]]) -> list[int | None]:
    """Each job's id, or None where the same job is queued already (procrastinate's queueing lock)."""
    from procrastinate.exceptions import AlreadyEnqueued

    ids: list[int | None] = []
    app = _app(store.url, asynchronous=False)
    with app.open():
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
    _require_postgres(store)
    _ensure_queue(store)
    backend = conditions.backend or resolve_device(conditions.device).default_backend
    conditions = replace(conditions, backend=backend)
    summary = RunsQueueSummary(conditions.device, backend, tag, requested=len(archs))
    if with_blocks:
        specs = [s for a in archs for s in a.specs(conditions.batch, conditions.dtype)]
        summary.blocks = enqueue_blocks(store, conditions, specs, protocol)
    present = {r.arch_hash for r in store.e2e_runs(conditions, tag=tag, deploy_env=deploy_env.name)}
    queued = {
        arch_hash(text_)
        for args in _active_args(store, conditions)
        if args.get("tag") == tag
        for text_ in _listed(args, "archs")
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
    for job_id in _defer(store, conditions, jobs):
        if job_id is None:
            summary.already_queued += 1
        else:
            summary.jobs.append(job_id)
            summary.queued_networks += 1
    return summary


# ---- the worker --------------------------------------------------------------------------------------


class BlocksFailed(Exception):
    """Blocks (or the network) of a job failed on a unit: the job is retried, then fails."""


class JobRefused(Exception):
    """A job this worker does not run (malformed, another device's, an environment its owner did not allow):
    it fails at once, never retried, whichever unit took it."""


# A worker runs whole networks only in the environments its owner allows: a queued environment could
# otherwise load any library (LD_PRELOAD) or module (PYTHONPATH) into the worker host's processes.
ALLOWED_BY_DEFAULT = frozenset(DeployEnv(variables) for variables in PRESETS.values())


def refusal(env: DeployEnv) -> str:
    return (
        f"this worker does not allow the deployment environment '{env.name}'; start it with "
        f"--allow-deploy-env '{env.name}' to measure it"
    )


@dataclass
class WorkerSummary:
    device: str
    unit: str
    jobs_done: int = 0
    jobs_failed: int = 0
    measured: int = 0  # blocks and whole networks
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 2)}


@dataclass
class _WorkerState:
    summary: WorkerSummary
    heartbeat_s: float
    allowed_envs: frozenset[DeployEnv] = ALLOWED_BY_DEFAULT
    job_id: int | None = None
    unit_error: str | None = None  # the unit itself failed (a phone unplugged): the worker stops


def run_worker(
    store: LutStore,
    device: str,
    device_options: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
    drain: bool = False,
    heartbeat_s: float = HEARTBEAT_S,
    allow_envs: Sequence[DeployEnv] = (),
) -> WorkerSummary:
    """Take `device`'s jobs one at a time until stopped (Ctrl-C ends after the job at hand; with `drain`,
    also when the device's queue is empty), measuring each on one unit of the device. Whole networks run
    only in the presets' environments and `allow_envs`; a job asking for another fails at once."""
    import psycopg

    _require_postgres(store)
    _ensure_queue(store)
    ledger = FarmLedger(store.engine)
    target = resolve_device(device, **(device_options or {}))
    unit = target.unit()  # a phone: reaches it over adb now, and fails in one sentence when it is absent
    options = {**(device_options or {}), "serial": unit} if target.kind == "android" else device_options
    started = time.monotonic()
    state = _WorkerState(WorkerSummary(device, unit), heartbeat_s, ALLOWED_BY_DEFAULT | set(allow_envs))
    with psycopg.connect(_conninfo(store.url), autocommit=True) as lock:
        key = (_UNIT_LOCK, unit)
        if not lock.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", key).fetchone()[0]:
            say(f"waiting: another worker is measuring on {unit}")
            lock.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", key)
        ledger.start(unit, device, socket.gethostname(), os.getpid(), heartbeat_s)
        allowed = ", ".join(sorted(env.name for env in state.allowed_envs))
        say(f"worker on {device} ({unit}): taking jobs from queue {queue_of(device)}; environments allowed: {allowed}")
        try:
            asyncio.run(_serve(store, ledger, device, unit, options, state, say, drain, heartbeat_s))
        finally:
            ledger.stop(unit, os.getpid())
    state.summary.seconds = time.monotonic() - started
    if state.unit_error:
        raise LutError(f"The worker on {unit} stopped: {state.unit_error}; its job is tried again by another unit.")
    return state.summary


def admitted(args: dict[str, Any], device: str, allowed_envs: frozenset[DeployEnv]) -> BlocksJob | RunsJob:
    """The job `args` describe if this worker runs it, else JobRefused with the one sentence why."""
    try:
        job = parse_job(args)
    except InvalidJob as exc:
        raise JobRefused(f"the job's arguments are not a job lut queues: {exc}") from None
    if job.conditions.device != device:
        raise JobRefused(f"the job is for device '{job.conditions.device}', and this worker measures '{device}'")
    if isinstance(job, RunsJob) and job.deploy_env not in allowed_envs:
        raise JobRefused(refusal(job.deploy_env))
    return job


def _measure_job(
    store: LutStore,
    ledger: FarmLedger,
    unit: str,
    device_options: dict[str, Any] | None,
    state: _WorkerState,
    say: Callable[[str], None],
    job_id: int,
    args: dict[str, Any],
) -> None:
    job = admitted(args, state.summary.device, state.allowed_envs)
    conditions = job.conditions
    state.job_id = job_id
    ledger.beat(unit, conditions.device, socket.gethostname(), os.getpid(), job_id, state.heartbeat_s)
    try:
        if isinstance(job, RunsJob):  # whole networks, as `lut calibrate` runs them
            summary = profile_archs(
                list(job.archs),
                store,
                conditions,
                job.tag,
                job.protocol,
                device_options=device_options,
                deploy_env=job.deploy_env,
            )
        else:
            summary = profile_blocks(list(job.specs), store, conditions, job.protocol, device_options=device_options)
    finally:
        state.job_id = None
    state.summary.measured += summary.measured
    say(
        f"job {job_id} on {unit}: {summary.measured} measured, {summary.already_present} already in the table"
        + (f", {len(summary.failed)} failed" if summary.failed else "")
    )
    if summary.failed:
        for key, message in summary.failed.items():
            ledger.record_failure(job_id, conditions.device, unit, key, message)
        first, message = next(iter(summary.failed.items()))
        raise BlocksFailed(f"{len(summary.failed)} failed on {unit}, first {first}: {message}")


async def _serve(
    store: LutStore,
    ledger: FarmLedger,
    device: str,
    unit: str,
    device_options: dict[str, Any] | None,
    state: _WorkerState,
    say: Callable[[str], None],
    drain: bool,
    heartbeat_s: float,
) -> None:
    import procrastinate

    app = _app(store.url, asynchronous=True)

    # A failed job waits two heartbeats before its next try, so that another idle unit takes it first; a
    # refused one is not tried again (no unit would run it).
    class Retry(procrastinate.RetryStrategy):
        def get_retry_decision(self, *, exception: BaseException, job: Any) -> Any:
            if isinstance(exception, JobRefused):
                return None
            return super().get_retry_decision(exception=exception, job=job)

    retry = Retry(max_attempts=MAX_ATTEMPTS - 1, wait=math.ceil(2 * heartbeat_s))

    @app.task(name=TASK_NAME, retry=retry, pass_context=True)
    def measure_blocks(context: Any, **args: Any) -> None:
        job_id = context.job.id
        try:
            _measure_job(store, ledger, unit, device_options, state, say, job_id, args)
        except BlocksFailed:
            state.summary.jobs_failed += 1
            raise
        except JobRefused as exc:
            ledger.record_failure(job_id, device, unit, "(the job)", str(exc))
            say(f"job {job_id} refused: {exc}")
            state.summary.jobs_failed += 1
            raise
        except ProfilerError as exc:  # the unit, not the job: stop taking jobs; this one is tried elsewhere
            ledger.record_failure(job_id, device, unit, "(the unit)", str(exc))
            state.unit_error = str(exc)
            raise
        except Exception as exc:
            ledger.record_failure(job_id, device, unit, "(the job)", f"{type(exc).__name__}: {exc}")
            raise
        state.summary.jobs_done += 1

    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[queue_of(device)],
                name=unit,
                concurrency=1,  # one job at a time on the unit
                update_heartbeat_interval=heartbeat_s,
                # procrastinate's own pruning only for the long dead: who is silent is judged by each
                # worker's own heartbeat in the ledger (_requeue_stalled), whatever the others' intervals
                stalled_worker_timeout=max(3600.0, 3 * heartbeat_s),
                fetch_job_polling_interval=min(heartbeat_s, 5.0),
                shutdown_graceful_timeout=None,  # Ctrl-C: the job at hand finishes
            )
        )
        keeper = asyncio.create_task(_housekeeping(app, store, ledger, device, unit, state, worker, drain, heartbeat_s))
        # A worker without its heartbeat would look dead to the others: it stops when the keeper fails.
        keeper.add_done_callback(lambda task: task.cancelled() or task.exception() is None or worker.cancel())
        try:
            with contextlib.suppress(asyncio.CancelledError):  # a drained queue stops the worker so
                await worker
        finally:
            keeper.cancel()
        if not keeper.cancelled() and keeper.done() and keeper.exception() is not None:
            raise keeper.exception()


async def _housekeeping(
    app: Any,
    store: LutStore,
    ledger: FarmLedger,
    device: str,
    unit: str,
    state: _WorkerState,
    worker: asyncio.Task[None],
    drain: bool,
    heartbeat_s: float,
) -> None:
    """Every heartbeat: say this unit is alive, put the jobs of workers gone silent back in the queue, and
    (`drain`) stop once the device's queue is empty."""
    host, pid = socket.gethostname(), os.getpid()
    while not worker.done():
        await asyncio.sleep(heartbeat_s)
        await asyncio.to_thread(ledger.beat, unit, device, host, pid, state.job_id, heartbeat_s)
        await asyncio.to_thread(_requeue_stalled, store, device, heartbeat_s)
        if state.unit_error:
            worker.cancel()
            return
        if drain and state.job_id is None and not await asyncio.to_thread(_queue_active, store, device):
            worker.cancel()  # a graceful stop: no job is running
            return


# Running jobs that no live worker holds, back to the queue in one statement (so that two workers sweeping
# at once cannot put back a job another has just taken), without using up one of their tries: a worker
# is live while its last heartbeat is within three of its own intervals; a job just taken has a grace.
_REQUEUE_STALLED = text(
    "UPDATE procrastinate_jobs j SET status = 'todo', scheduled_at = NULL, worker_id = NULL "
    "WHERE j.queue_name = :q AND j.task_name = :t AND j.status = 'doing' "
    "AND NOT EXISTS (SELECT 1 FROM lut_farm_workers w WHERE w.job_id = j.id "
    "  AND w.heartbeat_at > now() - make_interval(secs => 3 * w.heartbeat_s)) "
    "AND NOT EXISTS (SELECT 1 FROM procrastinate_events e WHERE e.job_id = j.id AND e.type::text = 'started' "
    "  AND e.at > now() - make_interval(secs => :grace)) "
    "RETURNING j.id"
)


def _requeue_stalled(store: LutStore, device: str, heartbeat_s: float) -> list[int]:
    with store.engine.begin() as conn:
        params = {"q": queue_of(device), "t": TASK_NAME, "grace": 3 * heartbeat_s}
        return list(conn.execute(_REQUEUE_STALLED, params).scalars())


def _queue_active(store: LutStore, device: str) -> int:
    stmt = text("SELECT count(*) FROM procrastinate_jobs WHERE queue_name = :q AND status::text IN ('todo', 'doing')")
    with store.engine.connect() as conn:
        return int(conn.execute(stmt, {"q": queue_of(device)}).scalar() or 0)


# ---- the farm's state --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceJobs:
    device: str
    jobs: dict[str, int]  # status -> jobs
    blocks: dict[str, int]  # status -> blocks
    networks: dict[str, int]  # status -> whole networks
    blocks_per_min: float | None  # over the last ten minutes
    eta_min: float | None
    workers: list[dict[str, Any]]
    failures: list[dict[str, Any]]  # failed jobs: their last failure, with the runner's output


STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")
_NAMES = {"todo": "queued", "doing": "running", "succeeded": "done"}


def farm_status(store: LutStore, device: str | None = None, window_min: float = 10.0) -> list[DeviceJobs]:
    """Jobs and blocks per state, live workers, throughput and ETA, per device (one or all)."""
    if device is not None:
        check_device_name(device)
    _require_postgres(store)
    _ensure_queue(store)
    ledger = FarmLedger(store.engine)
    where = "task_name = :t" + ("" if device is None else " AND queue_name = :q")
    params = {"t": TASK_NAME, "q": queue_of(device or "")}
    with store.engine.connect() as conn:
        jobs = conn.execute(
            text(f"SELECT id, queue_name, status::text, args FROM procrastinate_jobs WHERE {where}"), params
        ).all()
        recent = conn.execute(
            text(
                "SELECT j.queue_name, j.args, e.at, (SELECT max(s.at) FROM procrastinate_events s "
                "  WHERE s.job_id = j.id AND s.type::text = 'started') AS started_at "
                "FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id "
                f"WHERE e.type::text = 'succeeded' AND e.at > now() - make_interval(secs => :w) AND {where}"
            ),
            {**params, "w": window_min * 60},
        ).all()
        now = conn.execute(text("SELECT now()")).scalar()
    by_device: dict[str, list[Any]] = {}
    for job in jobs:
        by_device.setdefault(job.queue_name.removeprefix("lut:"), []).append(job)
    result = []
    for name in sorted(by_device if device is None else {device} | set(by_device)):
        mine = by_device.get(name, [])
        counts = {_NAMES.get(s, s): sum(j.status == s for j in mine) for s in STATUSES}
        blocks = {_NAMES.get(s, s): sum(_size(j.args, "keys") for j in mine if j.status == s) for s in STATUSES}
        networks = {_NAMES.get(s, s): sum(_size(j.args, "archs") for j in mine if j.status == s) for s in STATUSES}
        done_recent = [r for r in recent if r.queue_name == queue_of(name)]
        rate = None
        if done_recent:
            # from the start of the first of them: their own measuring time counts
            first = min(r.started_at or r.at for r in done_recent)
            span_min = max((now - first).total_seconds() / 60, 1 / 60)
            rate = sum(_size(r.args, "keys") for r in done_recent) / min(span_min, window_min)
        left = blocks["queued"] + blocks["running"]
        workers = [
            {
                "unit": w.unit,
                "host": w.host,
                "pid": w.pid,
                "job": w.job_id,
                "heartbeat_s_ago": round((now - w.heartbeat_at).total_seconds(), 1),
                "alive": (now - w.heartbeat_at).total_seconds() < 3 * w.heartbeat_s,
            }
            for w in ledger.workers(name)
        ]
        failed_ids = [j.id for j in mine if j.status == "failed"]
        last: dict[int, Any] = {f.job_id: f for f in ledger.failures(failed_ids)}
        failures = [
            {"job": i, "block": last[i].block_key, "unit": last[i].unit, "message": last[i].message}
            for i in failed_ids
            if i in last
        ]
        networks_left = networks["queued"] + networks["running"]
        # blocks per minute give an ETA for blocks; whole networks take their own time (none given)
        eta = None if networks_left else (left / rate if rate else (0.0 if left == 0 else None))
        result.append(DeviceJobs(name, counts, blocks, networks, rate, eta, workers, failures))
    return result


def retry_failed(store: LutStore, device: str) -> int:
    """Put `device`'s failed jobs back in the queue with fresh attempts; how many."""
    check_device_name(device)
    _require_postgres(store)
    _ensure_queue(store)
    stmt = text(  # the newest failed job of each group, unless the group is queued or running again
        "UPDATE procrastinate_jobs j SET status = 'todo', attempts = 0, scheduled_at = NULL "
        "WHERE j.id IN (SELECT max(id) FROM procrastinate_jobs WHERE queue_name = :q AND task_name = :t "
        "  AND status = 'failed' GROUP BY queueing_lock) "
        "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs o WHERE o.queueing_lock = j.queueing_lock "
        "  AND o.status IN ('todo', 'doing'))"
    )
    with store.engine.begin() as conn:
        return conn.execute(stmt, {"q": queue_of(device), "t": TASK_NAME}).rowcount


def cancel_queued(store: LutStore, device: str) -> int:
    """Cancel `device`'s queued jobs (running ones finish); how many."""
    check_device_name(device)
    _require_postgres(store)
    _ensure_queue(store)
    stmt = text("SELECT id FROM procrastinate_jobs WHERE queue_name = :q AND task_name = :t AND status = 'todo'")
    with store.engine.connect() as conn:
        ids = conn.execute(stmt, {"q": queue_of(device), "t": TASK_NAME}).scalars().all()
    app = _app(store.url, asynchronous=False)
    with app.open():
        return sum(bool(app.job_manager.cancel_job_by_id(job_id)) for job_id in ids)
