"""`lut worker`: a device's jobs taken one at a time on one unit, each checked as data before it runs."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text

from latency.jobs.farm.job_args import BlocksJob, InvalidJob, RunsJob, parse_job
from latency.jobs.farm.ledger import FarmLedger
from latency.jobs.farm.queue import TASK_NAME, UNIT_LOCK, conninfo, ensure_queue, queue_app, queue_of, require_postgres
from latency.jobs.measure import profile_archs, profile_blocks
from latency.vocab.deploy_env import PRESETS, DeployEnv
from latency.vocab.errors import LutError
from lut_db import LutStore
from profilers.devices import resolve_device
from profilers.errors import ProfilerError

MAX_ATTEMPTS = 3  # a job whose blocks keep failing is tried this often (by any unit), then fails
HEARTBEAT_S = 10.0  # a worker silent for three heartbeats is gone: its job goes back to the queue

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

    require_postgres(store)
    ensure_queue(store)
    ledger = FarmLedger(store.engine)
    target = resolve_device(device, **(device_options or {}))
    unit = target.unit()  # a phone: reaches it over adb now, and fails in one sentence when it is absent
    options = {**(device_options or {}), "serial": unit} if target.kind == "android" else device_options
    started = time.monotonic()
    state = _WorkerState(WorkerSummary(device, unit), heartbeat_s, ALLOWED_BY_DEFAULT | set(allow_envs))
    with psycopg.connect(conninfo(store.url), autocommit=True) as lock:
        key = (UNIT_LOCK, unit)
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

    app = queue_app(store.url, asynchronous=True)

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
        if drain and state.job_id is None and not await _queue_active(app, device):
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


async def _queue_active(app: Any, device: str) -> int:
    """The device's queued and running jobs (procrastinate's queue statistics)."""
    queues = await app.job_manager.list_queues_async(queue=queue_of(device))
    return sum(q["todo"] + q["doing"] for q in queues)
