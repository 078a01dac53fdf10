"""The farm's state for `lut jobs`: jobs and blocks per state, live workers, throughput, ETA; retry, cancel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from latency.jobs.farm.ledger import FarmLedger
from latency.jobs.farm.queue import (
    TASK_NAME,
    count_held,
    ensure_queue,
    queue_app,
    queue_exists,
    queue_of,
    require_postgres,
)
from lut_db import LutStore
from profilers.devices import check_device_name

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


def farm_status(
    store: LutStore, device: str | None = None, window_min: float = 10.0, create_queue: bool = True
) -> list[DeviceJobs]:
    """Jobs and blocks per state, live workers, throughput and ETA, per device (one or all). `create_queue=False`
    (a reader that must not write, `lut serve`): a table whose queue was never made has no jobs to show."""
    if device is not None:
        check_device_name(device)
    require_postgres(store)
    if create_queue:
        ensure_queue(store)
    elif not queue_exists(store):
        return []
    ledger = FarmLedger(store.engine)
    app = queue_app(store.url, asynchronous=False)
    with app.open():
        jobs = app.job_manager.list_jobs(queue=None if device is None else queue_of(device), task=TASK_NAME)
    # procrastinate lists jobs but not its events: the finished jobs' times for the throughput are read here
    where = "task_name = :t" + ("" if device is None else " AND queue_name = :q")
    params = {"t": TASK_NAME, "q": queue_of(device or "")}
    with store.engine.connect() as conn:
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
        by_device.setdefault(job.queue.removeprefix("lut:"), []).append(job)
    result = []
    for name in sorted(by_device if device is None else {device} | set(by_device)):
        mine = by_device.get(name, [])
        counts = {_NAMES.get(s, s): sum(j.status == s for j in mine) for s in STATUSES}
        blocks = {
            _NAMES.get(s, s): sum(count_held(j.task_kwargs, "keys") for j in mine if j.status == s) for s in STATUSES
        }
        networks = {
            _NAMES.get(s, s): sum(count_held(j.task_kwargs, "archs") for j in mine if j.status == s) for s in STATUSES
        }
        done_recent = [r for r in recent if r.queue_name == queue_of(name)]
        rate = None
        if done_recent:
            # from the start of the first of them: their own measuring time counts
            first = min(r.started_at or r.at for r in done_recent)
            span_min = max((now - first).total_seconds() / 60, 1 / 60)
            rate = sum(count_held(r.args, "keys") for r in done_recent) / min(span_min, window_min)
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
    require_postgres(store)
    ensure_queue(store)
    # procrastinate retries only a running job (its retry_job); a failed one goes back with fresh attempts here,
    # in one statement: the newest failed job of each group, unless the group is queued or running again
    stmt = text(
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
    require_postgres(store)
    ensure_queue(store)
    app = queue_app(store.url, asynchronous=False)
    with app.open():
        queued = app.job_manager.list_jobs(queue=queue_of(device), task=TASK_NAME, status="todo")
        return sum(bool(app.job_manager.cancel_job_by_id(job.id)) for job in queued)
