"""`lut calibrate`: end-to-end runs and the correction fitted on them; with --from, a transfer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from latency.cli.common import (
    BACKEND_HELP,
    BatchOpt,
    DbOpt,
    DeployEnvOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ProtocolOpt,
    RichProgress,
    RunnerOpt,
    SerialOpt,
    SpaceOpt,
    ThreadsOpt,
    check_protocol,
    console,
    open_store,
    parse_deploy_env,
    phone_options,
    print_json,
    split_items,
    user_errors,
)
from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DeployEnv

if TYPE_CHECKING:
    from lut_db import LutStore

app = typer.Typer()


FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Transfer: the devices (comma-separated) whose tables DEVICE's estimates are built from; "
        "DEVICE then runs only --runs whole networks, no block.",
    ),
]
FromBackendOpt = Annotated[str | None, typer.Option(help="The sources' backend [default: DEVICE's].")]
FromThreadsOpt = Annotated[int | None, typer.Option(min=1, help="The sources' threads [default: --threads].")]
RunsOpt = Annotated[
    int,
    typer.Option(min=3, max=1000, help="Transfer: whole networks to run on DEVICE (the family first, then sampled)."),
]
QueueRunsOpt = Annotated[
    bool,
    typer.Option(
        "--queue",
        help="Queue the whole networks (and, without --from, their missing blocks) as jobs for the device "
        "farm's workers; once they are done, the same command without --queue fits. Needs a PostgreSQL table.",
    ),
]
CalibrationModelsOpt = Annotated[
    str, typer.Option("--models", help="Family members to include (with --from: run first): 'all', 'none' or names.")
]


@app.command()
@user_errors
def calibrate(
    device: DeviceOpt = "cpu",
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    random: Annotated[int, typer.Option("--random", min=0, help="Sampled architectures to add.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    models: CalibrationModelsOpt = "all",
    space: SpaceOpt = "fbnetv2_f4",
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    protocol: ProtocolOpt = "standard",
    deploy_env: DeployEnvOpt = "default",
    from_devices: FromOpt = None,
    from_backend: FromBackendOpt = None,
    from_threads: FromThreadsOpt = None,
    runs: RunsOpt = 10,
    serial: SerialOpt = None,
    runner: RunnerOpt = None,
    queue: QueueRunsOpt = False,
    no_profile: Annotated[
        bool,
        typer.Option(
            "--no-profile",
            help="With --from: never measure the blocks a source on this host lacks (they are named instead).",
        ),
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure end-to-end runs as the deployment runs them, fit the sum-to-end-to-end correction, store it
    with its CV error. With --from: a transfer, DEVICE's table from other devices' tables and a few runs."""
    from latency.jobs.calibrate import calibrate as run_calibration
    from latency.jobs.calibrate import run_archs
    from latency.jobs.transfer import check_sources, cover_sources, transfer, transfer_archs
    from profilers.devices import backend_of

    backend = backend_of(Conditions(device, backend))
    store = open_store(db)
    env = parse_deploy_env(deploy_env)
    conditions = Conditions(device, backend, threads, batch, dtype)
    phone = phone_options(serial, runner)
    if from_devices is None:
        archs = run_archs(split_items(models, "--models"), random, seed, space)
        title = f"calibrating {device}"
    else:
        sources = [
            Conditions(name, from_backend or backend, from_threads or threads, batch, dtype)
            for name in split_items(from_devices, "--from")
        ]
        archs = transfer_archs(runs, seed, space, split_items(models, "--models"))
        title = f"running {len(archs)} networks on {device}"
    if from_devices is not None:
        check_sources(store, conditions, sources)  # before any network runs or is queued
        if queue:  # the farm runs the target's networks; the sources' blocks are covered here first
            with RichProgress("measuring what the sources lack") as bar:
                cover_sources(store, sources, archs, not no_profile, check_protocol(protocol), bar)
    if queue:
        _queue(store, conditions, archs, from_devices is None, env, check_protocol(protocol), as_json)
        return
    with RichProgress(title) as bar:
        if from_devices is None:
            report = run_calibration(
                store, archs, conditions, check_protocol(protocol), bar, deploy_env=env, device_options=phone
            )
        else:
            report = transfer(
                store,
                conditions,
                sources,
                archs,
                check_protocol(protocol),
                bar,
                deploy_env=env,
                device_options=phone,
                measure_sources=not no_profile,
            )
    if as_json:
        print_json(report.to_dict())
        return
    console.print(report.summary())


def _queue(
    store: LutStore,
    conditions: Conditions,
    archs: list[Arch],
    calibrating: bool,
    env: DeployEnv,
    protocol: str,
    as_json: bool,
) -> None:
    from latency.jobs.farm import enqueue_runs
    from latency.jobs.transfer import TRANSFER_TAG

    tag = "calibration" if calibrating else TRANSFER_TAG
    summary = enqueue_runs(store, conditions, archs, tag, env, protocol, with_blocks=calibrating)
    if as_json:
        print_json(summary.to_dict())
        return
    blocks = summary.blocks
    console.print(
        f"{summary.requested} networks for {summary.device} ({summary.backend}): {summary.queued_networks} queued, "
        f"{summary.already_present} already run, {summary.already_queued} already queued"
        + (f"; blocks: {blocks.queued_blocks} queued, {blocks.already_present} in the table" if blocks else "")
        + f". Once `lut jobs --device {summary.device}` shows them done, run this command without --queue to fit."
    )
