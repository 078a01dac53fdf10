"""The device farm: profiling work shared by many devices through one PostgreSQL table.

The queue is procrastinate's (README, "Device farm": why), in the table's own database, one queue per
device name. `lut profile --queue` defers one job per group of blocks the table lacks and no queued job
holds; `lut worker` on each host with a device attached takes its device's jobs one at a time, measures
them with the same protocol and backends as `lut profile` (each block stored the moment it is final) and
keeps going. One physical unit runs one job at a time however many workers point at it (a PostgreSQL
advisory lock per unit, held while the worker lives); a worker that dies (SIGKILL, an unplugged phone)
stops its heartbeat, and the others put its job back in the queue; a retried job measures only what is
still missing, so nothing is stored twice. A job whose blocks fail is retried a bounded number of times,
then fails with the runner's output kept in the farm's ledger. A job is data: checked by one schema before
it runs, and whole networks run only in the environments the worker's owner allows.

Rooms: `queue` (procrastinate's app, `--queue`), `job_args` (the schema), `worker` (`lut worker`),
`status` (`lut jobs`, retry, cancel), `ledger` (workers and failures, beside the queue). The queue is read
and changed through procrastinate's job manager (list_jobs, list_queues, cancel_job_by_id); raw SQL on its
tables is left where it has no call: the throughput from its events (status), a failed job queued again
with fresh attempts (status), and running jobs of silent workers put back in one statement judged by the
ledger's heartbeats (worker).
"""

from latency.jobs.farm.queue import NEEDS_POSTGRES, TASK_NAME, enqueue_blocks, enqueue_runs, queue_of
from latency.jobs.farm.status import DeviceJobs, cancel_queued, farm_status, retry_failed
from latency.jobs.farm.worker import ALLOWED_BY_DEFAULT, JobRefused, admitted, run_worker

__all__ = [
    "ALLOWED_BY_DEFAULT",
    "NEEDS_POSTGRES",
    "TASK_NAME",
    "DeviceJobs",
    "JobRefused",
    "admitted",
    "cancel_queued",
    "enqueue_blocks",
    "enqueue_runs",
    "farm_status",
    "queue_of",
    "retry_failed",
    "run_worker",
]
