"""`lut worker` and `lut jobs`: the device farm (latency.jobs.farm)."""

from __future__ import annotations

from typing import Annotated

import typer

from latency.cli.common import (
    DbOpt,
    DeviceOpt,
    JsonOpt,
    RunnerOpt,
    SerialOpt,
    console,
    err_console,
    fmt,
    open_store,
    phone_options,
    print_json,
    user_errors,
)

app = typer.Typer()
jobs = typer.Typer(
    help="The farm's jobs: queued, running, done and failed per device, its workers, throughput and ETA.",
    invoke_without_command=True,
)
DeviceFilter = Annotated[str | None, typer.Option("--device", help="Only this device [default: every device].")]


@app.command()
@user_errors
def worker(
    device: DeviceOpt = "cpu",
    serial: SerialOpt = None,
    runner: RunnerOpt = None,
    drain: Annotated[bool, typer.Option(help="Stop once the device's queue is empty (else wait for more).")] = False,
    heartbeat_s: Annotated[
        float,
        typer.Option(
            min=0.2,
            envvar="LUT_FARM_HEARTBEAT_S",
            help="Seconds between heartbeats; a worker silent for three is gone and its job is queued again.",
        ),
    ] = 10.0,
    allow_deploy_env: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-deploy-env",
            envvar="LUT_ALLOW_DEPLOY_ENV",
            help="A deployment environment (a preset's name or VAR=VALUE,...) whose whole-network jobs this "
            "worker runs, beside the presets default and tuned-malloc; repeatable (in the variable: separated "
            "by spaces). A job asking for any other fails at once: its variables (LD_PRELOAD, PYTHONPATH) "
            "would run in this host's processes.",
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take the device's profiling jobs from the shared table's queue and measure them, one at a time on
    this unit, until stopped (Ctrl-C finishes the job at hand). A job is data: the runner, the serial and
    the deployment environments allowed come from this command line, never from the queue."""
    from latency.jobs.farm import run_worker
    from latency.vocab.deploy_env import DeployEnv

    def say(message: str) -> None:
        err_console.print(message, highlight=False, soft_wrap=True)

    allowed = [DeployEnv.parse(text) for text in allow_deploy_env or ()]
    summary = run_worker(open_store(db), device, phone_options(serial, runner), say, drain, heartbeat_s, allowed)
    if as_json:
        print_json(summary.to_dict())
    else:
        console.print(
            f"worker on {summary.device} ({summary.unit}) stopped: {summary.jobs_done} job(s) done, "
            f"{summary.jobs_failed} failed, {summary.measured} block(s) or network(s) measured in "
            f"{summary.seconds:.0f} s."
        )


@jobs.callback()
@user_errors
def show(ctx: typer.Context, device: DeviceFilter = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Jobs per device and state, the live workers (unit, last heartbeat), throughput and ETA."""
    if ctx.invoked_subcommand is not None:
        return
    from latency.jobs.farm import farm_status

    states = farm_status(open_store(db), device)
    if as_json:
        print_json([vars(s) for s in states])
        return
    if not states:
        console.print("no jobs: `lut profile --queue` queues a device's missing blocks")
    for s in states:
        rate = "-" if s.blocks_per_min is None else f"{s.blocks_per_min:.1f} blocks/min"
        eta = "-" if s.eta_min is None else f"{fmt(s.eta_min, 1)} min"
        counts = ", ".join(f"{n} {state}" for state, n in s.jobs.items() if n)
        console.print(
            f"{s.device}: {counts or 'no jobs'} (blocks: {s.blocks['queued']} queued, {s.blocks['running']} "
            f"running, {s.blocks['done']} done; whole networks: {s.networks['queued']} queued, "
            f"{s.networks['running']} running, {s.networks['done']} done); {rate}; ETA {eta}",
            highlight=False,
        )
        for w in s.workers:
            state = "alive" if w["alive"] else "silent"
            job = f"job {w['job']}" if w["job"] else "idle"
            console.print(
                f"  worker {w['unit']} on {w['host']} (pid {w['pid']}): {job}, {state}, "
                f"heartbeat {w['heartbeat_s_ago']:.0f} s ago",
                highlight=False,
            )
        for f in s.failures:
            console.print(
                f"  failed job {f['job']} on {f['unit']}: {f['block']}: {f['message']}", highlight=False, soft_wrap=True
            )


@jobs.command()
@user_errors
def retry(device: DeviceOpt = "cpu", db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Queue the device's failed jobs again, with fresh attempts."""
    from latency.jobs.farm import retry_failed

    count = retry_failed(open_store(db), device)
    if as_json:
        print_json({"device": device, "retried": count})
    else:
        console.print(f"{count} failed job(s) of {device} queued again")


@jobs.command()
@user_errors
def cancel(device: DeviceOpt = "cpu", db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel the device's queued jobs (running ones finish)."""
    from latency.jobs.farm import cancel_queued

    count = cancel_queued(open_store(db), device)
    if as_json:
        print_json({"device": device, "cancelled": count})
    else:
        console.print(f"{count} queued job(s) of {device} cancelled")
