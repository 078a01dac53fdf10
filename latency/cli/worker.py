"""`lut worker`: a device's farm jobs taken from the shared queue and measured on this unit."""

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
    open_store,
    phone_options,
    print_json,
    user_errors,
)
from latency.vocab.deploy_env import DeployEnv

app = typer.Typer()


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
