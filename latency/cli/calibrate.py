"""`lut calibrate`, `lut validate`: end-to-end runs against the estimate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from latency.cli.common import (
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
    fmt,
    open_store,
    parse_deploy_env,
    phone_options,
    print_json,
    split_items,
    uncalibrated_hint,
    user_errors,
)
from latency.vocab.conditions import Conditions
from latency.vocab.errors import LutError

if TYPE_CHECKING:
    from latency.vocab.arch import Arch
    from latency.vocab.deploy_env import DeployEnv
    from lut_db import LutStore

app = typer.Typer()


@app.command()
@user_errors
def calibrate(
    device: DeviceOpt = "cpu",
    backend: Annotated[str | None, typer.Option(help="Backend [default: the device's first].")] = None,
    random: Annotated[int, typer.Option("--random", min=0, help="Sampled architectures to add.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    models: Annotated[
        str, typer.Option(help="Family members to include (with --from: run first): 'all', 'none' or names.")
    ] = "all",
    space: SpaceOpt = "fbnetv2_f4",
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    protocol: ProtocolOpt = "standard",
    deploy_env: DeployEnvOpt = "default",
    from_devices: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Transfer: the devices (comma-separated) whose tables DEVICE's estimates are built from; "
            "DEVICE then runs only --runs whole networks, no block.",
        ),
    ] = None,
    from_backend: Annotated[str | None, typer.Option(help="The sources' backend [default: DEVICE's].")] = None,
    from_threads: Annotated[int | None, typer.Option(min=1, help="The sources' threads [default: --threads].")] = None,
    runs: Annotated[
        int, typer.Option(min=3, help="Transfer: whole networks to run on DEVICE (the family first, then sampled).")
    ] = 10,
    serial: SerialOpt = None,
    runner: RunnerOpt = None,
    queue: Annotated[
        bool,
        typer.Option(
            "--queue",
            help="Queue the whole networks (and, without --from, their missing blocks) as jobs for the device "
            "farm's workers; once they are done, the same command without --queue fits. Needs a PostgreSQL table.",
        ),
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure end-to-end runs as the deployment runs them, fit the sum-to-end-to-end correction, store it
    with its CV error. With --from: a transfer, DEVICE's table from other devices' tables and a few runs."""
    from latency.jobs.calibrate import calibrate as run_calibration
    from latency.jobs.calibrate import run_archs
    from latency.jobs.transfer import transfer, transfer_archs
    from profilers.devices import resolve_device

    backend = backend or resolve_device(device).default_backend
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
                store, conditions, sources, archs, check_protocol(protocol), bar, deploy_env=env, device_options=phone
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


@app.command()
@user_errors
def validate(
    device: DeviceOpt = "cpu",
    backend: Annotated[str | None, typer.Option(help="Backend [default: the device's first].")] = None,
    models: Annotated[str, typer.Option(help="Family members to validate on: 'all', 'none' or names.")] = "all",
    random: Annotated[int, typer.Option("--random", min=0, help="Sampled architectures to add.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the sample (keep it apart from calibration's).")] = 1,
    space: SpaceOpt = "fbnetv2_f4",
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    protocol: ProtocolOpt = "standard",
    plot: Annotated[Path | None, typer.Option(help="Draw estimated vs measured latency to this PNG.")] = None,
    deploy_env: DeployEnvOpt = "default",
    serial: SerialOpt = None,
    runner: RunnerOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure end-to-end runs (as `lut time` does) that calibration did not use and report the estimate's
    accuracy."""
    from latency.jobs.calibrate import run_archs
    from latency.jobs.validate import validate as run_validation
    from profilers.devices import resolve_device

    backend = backend or resolve_device(device).default_backend
    archs = run_archs(split_items(models, "--models"), random, seed, space)
    if not archs:
        raise LutError("Nothing to validate: give --models or --random.", exit_code=2)
    store = open_store(db)
    env = parse_deploy_env(deploy_env)
    with RichProgress(f"validating on {device}") as bar:
        conditions = Conditions(device, backend, threads, batch, dtype)
        report = run_validation(
            store,
            archs,
            conditions,
            check_protocol(protocol),
            bar,
            deploy_env=env,
            device_options=phone_options(serial, runner),
        )
    if plot is not None:
        from latency.jobs.report import plot_validation

        title = f"{device} / {backend}: " + ("calibrated" if report.calibrated else "uncalibrated") + " estimate"
        plot_validation(report.rows, report.metrics, title, plot)
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=f"estimate vs end-to-end runs on {device} ({backend}, deployment '{report.deploy_env}')")
    for column in (
        "architecture",
        "estimated (ms)",
        "measured (ms)",
        "error",
        "calibration saw it",
        "blocks timed in it",
    ):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for row in report.rows:
        table.add_row(
            row["name"],
            f"{row['estimated_then_ms']:.3f}",
            f"{row['measured_ms']:.3f}",
            f"{row['error']:+.1%}",
            "yes" if row["in_calibration"] else "no",
            str(row["blocks_timed_inside_it"]),
        )
    console.print(table)
    m = report.metrics
    console.print(
        f"n={m['n']}  within 10%: {m['within_10pct']:.0%}  RMSPE {m['rmspe']:.1%}  MAPE {m['mape']:.1%}  "
        f"Kendall tau {fmt(m['kendall_tau'])}  Spearman rho {fmt(m['spearman_rho'])}"
    )
    if "held_out" in m:
        held = m["held_out"]
        console.print(
            f"held out (neither calibrated on nor timed in context): n={held['n']}  within 10%: "
            f"{held['within_10pct']:.0%}  RMSPE {held['rmspe']:.1%}"
        )
    plain = report.plain_metrics
    console.print(
        f"(each estimate stated at its run's speed, from the canary timed in the run's trials; at the table's "
        f"speed: within 10% {plain['within_10pct']:.0%}, RMSPE {plain['rmspe']:.1%}, "
        f"Kendall tau {fmt(plain['kendall_tau'])})"
    )
    if not report.calibrated:
        console.print(uncalibrated_hint(device, report.deploy_env, ()))
    if plot is not None:
        console.print(f"plot: {plot}")
