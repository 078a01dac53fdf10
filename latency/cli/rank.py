"""`lut rank`: the family ordered by estimated latency per device, with accuracy and a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from latency.cli.common import (
    BackendOpt,
    BatchOpt,
    DbOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ProtocolOpt,
    ThreadsOpt,
    console,
    finite,
    print_json,
    split_items,
    user_errors,
)
from latency.cli.estimators import ready_estimator
from latency.vocab.conditions import Conditions
from latency.vocab.errors import LutError
from latency.vocab.family import family_archs

app = typer.Typer()


@app.command()
@user_errors
def rank(
    device: DeviceOpt = "cpu",
    devices: Annotated[str | None, typer.Option(help="Several devices, comma-separated (overrides --device).")] = None,
    budget_ms: Annotated[
        float | None, typer.Option(callback=finite, help="A latency budget: the best model under it.")
    ] = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    no_profile: Annotated[bool, typer.Option("--no-profile", help="Never measure missing blocks.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Draw accuracy vs latency per device to this PNG.")] = None,
    protocol: ProtocolOpt = "standard",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The family ordered by estimated latency, with accuracy, Pareto front and the best under a budget; a
    quantized dtype (int8) is ranked with fp32 beside it, on the same backend, to show which models move."""
    from latency.jobs.rank import rank_columns, rank_family

    devices_named = split_items(devices, "--devices") or [device]
    if budget_ms is not None and budget_ms <= 0:
        raise LutError(f"--budget-ms must be positive, got {budget_ms:g}.", exit_code=2)
    archs = family_archs(["all"])
    columns = rank_columns([Conditions(d, backend, threads, batch, dtype) for d in devices_named])
    estimators = {
        label: ready_estimator(archs, conditions, db, not no_profile, False, protocol)
        for label, conditions in columns.items()
    }
    names = list(columns)
    ranking = rank_family(names, lambda column, model: estimators[column].estimate(model), budget_ms)
    if plot is not None:
        from latency.jobs.report import plot_ranking

        plot_ranking(ranking, plot)
    if as_json:
        print_json(ranking.to_dict())
        return
    table = Table(title="FBNetV2 family by estimated latency" + (f" (budget {budget_ms:g} ms)" if budget_ms else ""))
    for column in (
        "model",
        *(f"{d} (ms)" for d in names),
        *(f"rank {d}" for d in names if len(names) > 1),
        "FLOPs (M)",
        "params (M)",
        "top-1",
        "Pareto",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in ranking.rows:
        table.add_row(
            row.name,
            *(f"{row.latency_ms[d]:.3f}" for d in names),
            *(str(row.rank[d]) for d in names if len(names) > 1),
            f"{row.flops_m:.1f}",
            f"{row.params_m:.3f}",
            f"{row.top1:.1f}",
            ", ".join(d for d in names if row.pareto[d]) or "-",
        )
    console.print(table)
    for d in names:
        if not all(row.calibrated[d] for row in ranking.rows):
            c = columns[d]
            options = "" if c.dtype == "fp32" else f" --backend {estimators[d].conditions.backend} --dtype {c.dtype}"
            console.print(f"{d}: uncalibrated estimates (run `lut calibrate --device {c.device}{options}`)")
        if budget_ms is not None:
            best = ranking.best_under_budget(d)
            console.print(
                f"best under {budget_ms:g} ms on {d}: "
                + (f"{best.name} ({best.latency_ms[d]:.3f} ms, top-1 {best.top1:.1f})" if best else "none fits")
            )
    for change in ranking.rank_changes():
        console.print(f"rank change: {change['name']} " + ", ".join(f"{d} #{r}" for d, r in change["rank"].items()))
    if plot is not None:
        console.print(f"plot: {plot}")
