"""`lut jobs`: the farm's jobs per device and state, its workers, throughput and ETA; retry and cancel."""

from __future__ import annotations

from typing import Annotated

import typer

from latency.cli.common import (
    DbOpt,
    DeviceOpt,
    JsonOpt,
    console,
    fmt,
    open_store,
    print_json,
    user_errors,
)

jobs = typer.Typer(
    help="The farm's jobs: queued, running, done and failed per device, its workers, throughput and ETA.",
    invoke_without_command=True,
)
DeviceFilter = Annotated[str | None, typer.Option("--device", help="Only this device [default: every device].")]


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
