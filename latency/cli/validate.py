"""`lut validate`: estimates against end-to-end runs as a user measures them, and the noise floor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

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
    pass

app = typer.Typer()


@app.command()
@user_errors
def validate(
    device: DeviceOpt = "cpu",
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
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
    from profilers.devices import backend_of

    backend = backend_of(Conditions(device, backend))
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
        "processes apart",
        "calibration saw it",
        "blocks timed in it",
    ):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for row in report.rows:
        processes = row["process_medians_ms"]
        table.add_row(
            row["name"],
            f"{row['estimated_ms']:.3f}",
            f"{row['measured_ms']:.3f}",
            f"{row['error']:+.1%}",
            f"{(max(processes) - min(processes)) / min(processes):.1%}" if processes else "-",
            "yes" if row["in_calibration"] else "no",
            str(row["blocks_timed_inside_it"]),
        )
    console.print(table)
    for line in validation_lines(report.metrics, report.at_run_speed, report.repeatability):
        console.print(line)
    if not report.calibrated:
        console.print(uncalibrated_hint(device, report.deploy_env, ()))
    if plot is not None:
        console.print(f"plot: {plot}")


def validation_lines(metrics: dict[str, Any], at_run_speed: dict[str, Any], floor: dict[str, Any]) -> list[str]:
    """What `lut validate` says under its table: the estimates against the runs as measured first, then the
    noise floor the runs showed, then the view at each run's speed."""

    def accuracy(m: dict[str, Any]) -> str:
        return (
            f"n={m['n']}  within 10%: {m['within_10pct']:.0%}  RMSPE {m['rmspe']:.1%}  MAPE {m['mape']:.1%}  "
            f"median error {m['median_error']:+.1%}  Kendall tau {fmt(m['kendall_tau'])}  "
            f"Spearman rho {fmt(m['spearman_rho'])}"
        )

    lines = [f"as measured: {accuracy(metrics)}  interval held {metrics['interval_coverage']:.0%} of the runs"]
    if "held_out" in metrics:
        lines.append(f"held out (neither calibrated on nor timed in context): {accuracy(metrics['held_out'])}")
    if floor["networks"]:
        lines.append(
            f"noise floor: two fresh processes of one network agreed within 10% for "
            f"{floor['pairs_within_10pct']:.0%} of {floor['networks']} networks' pairs (median gap "
            f"{floor['pair_gap_median']:.1%}); a perfect estimate shows RMSPE {floor['floor_rmspe']:.1%} "
            "against one process"
        )
    lines.append(
        f"(beside it, each estimate restated at its run's speed from the run's canary: within 10% "
        f"{at_run_speed['within_10pct']:.0%}, RMSPE {at_run_speed['rmspe']:.1%}, median error "
        f"{at_run_speed['median_error']:+.1%})"
    )
    return lines
