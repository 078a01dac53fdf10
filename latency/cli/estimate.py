"""`lut estimate`, `lut time`, `lut rank`: answers from the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from latency.cli.common import (
    BackendOpt,
    BatchOpt,
    DbOpt,
    DeployEnvOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ProtocolOpt,
    RichProgress,
    ThreadsOpt,
    check_protocol,
    console,
    finite,
    open_store,
    parse_deploy_env,
    print_json,
    split_items,
    uncalibrated_hint,
    user_errors,
)
from latency.vocab.conditions import Conditions
from latency.vocab.errors import LutError

app = typer.Typer()


def _ready_estimator(
    archs: list[Any],
    conditions: Conditions,
    db: str | None,
    measure_missing: bool,
    strict: bool,
    protocol: str = "standard",
    deploy_env: str = "default",
) -> Any:
    """The covering_estimator job with the command's options checked and its progress bar."""
    from latency.jobs.profile import covering_estimator

    return covering_estimator(
        archs,
        conditions,
        open_store(db),
        RichProgress,
        measure_missing=measure_missing,
        strict=strict,
        protocol=check_protocol(protocol),
        deploy_env=parse_deploy_env(deploy_env).name,
    )


@app.command()
@user_errors
def estimate(
    model: Annotated[str, typer.Argument(help="A model name or an ARCH.json file.")],
    device: DeviceOpt = "cpu",
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    breakdown: Annotated[bool, typer.Option(help="Show every block's latency and source.")] = False,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="Never measure missing blocks.")] = False,
    strict: Annotated[bool, typer.Option(help="Any block missing from the table is an error.")] = False,
    protocol: ProtocolOpt = "standard",
    deploy_env: DeployEnvOpt = "default",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate a model's end-to-end latency on a device from the lookup table."""
    from latency.vocab.family import resolve_arch

    arch = resolve_arch(model)
    conditions = Conditions(device, backend, threads, batch, dtype)
    estimator = _ready_estimator([arch], conditions, db, not no_profile, strict, protocol, deploy_env)
    result = estimator.estimate(arch)
    if as_json:
        print_json(result.to_dict())
        return
    low, high = result.interval_ms
    console.print(
        f"{result.model} on {result.device} ({result.backend}, {result.threads} thread(s), batch "
        f"{result.batch}, {result.dtype}): {result.latency_ms:.3f} ms (interval {low:.3f}-{high:.3f} ms)"
    )
    predicted = sum(b.source == "predicted" for b in result.blocks)
    console.print(
        f"sum of {len(result.blocks)} block medians: {result.sum_ms:.3f} ms"
        + (f"; {predicted} blocks predicted, not measured" if predicted else "")
    )
    if result.warm_heap_blocks:
        console.print(
            f"{result.warm_heap_blocks} blocks were measured by an older lut with a warm heap, which misses the page "
            f"faults a plain process pays: re-measure them with `lut profile --force` and the same options"
        )
    if result.uncorrected_blocks:
        where = "alone" if "network" in result.calibration["contexts"] else "inside networks"
        console.print(
            f"{result.uncorrected_blocks} of {len(result.blocks)} blocks were timed {where}, as none of the "
            "calibration runs' blocks were: they count at their plain table time; `lut calibrate` on runs "
            "holding such blocks corrects them"
        )
    elif result.alone_blocks and not result.calibrated:
        console.print(
            f"{result.alone_blocks} of {len(result.blocks)} blocks were timed alone, the rest inside networks: "
            "alone they sum higher than in a network; time the network in context with `lut profile --models` "
            "or `--arch`, or calibrate (`lut calibrate`)"
        )
    if result.calibrated and "transferred_from" in result.calibration:
        cal = result.calibration
        console.print(
            f"transferred from {cal['transferred_from']} on {cal['transfer_runs']} end-to-end runs of "
            f"{result.device}: expected error {cal.get('cv_rmspe', float('nan')):.1%} (cross-validated RMSPE)"
        )
    elif result.calibrated:
        cal = result.calibration
        console.print(
            f"calibrated for deployment '{result.deploy_env}': {cal['model']} correction, cross-validated RMSPE "
            f"{cal.get('cv_rmspe', float('nan')):.1%} over {cal.get('cv_n', 0)} runs"
        )
    else:
        console.print(uncalibrated_hint(result.device, result.deploy_env, result.other_calibrations))
    if breakdown:
        table = Table()
        for column in ("#", "block", "source", "latency (ms)", "share"):
            table.add_column(column, justify="right" if column in ("#", "latency (ms)", "share") else "left")
        for i, block in enumerate(result.blocks):
            table.add_row(
                str(i), block.key, block.source, f"{block.latency_ms:.4f}", f"{block.latency_ms / result.sum_ms:.1%}"
            )
        console.print(table)


@app.command("time")
@user_errors
def time_command(
    model: Annotated[str, typer.Argument(help="A model name or an ARCH.json file.")],
    device: DeviceOpt = "cpu",
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    no_profile: Annotated[
        bool, typer.Option("--no-profile", help="Never measure missing blocks (then no estimate).")
    ] = False,
    protocol: ProtocolOpt = "standard",
    deploy_env: DeployEnvOpt = "default",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Time a network end to end as your own process runs it, beside lut's estimate and their difference."""
    from latency.jobs.timing import time_network
    from latency.vocab.family import resolve_arch

    arch = resolve_arch(model)
    env = parse_deploy_env(deploy_env)
    store = open_store(db)
    with RichProgress(f"timing {arch.name} on {device}") as bar:
        conditions = Conditions(device, backend, threads, batch, dtype)
        report = time_network(store, arch, conditions, check_protocol(protocol), bar, env, not no_profile)
    if as_json:
        print_json(report.to_dict())
        return
    console.print(
        f"{report.name} on {report.device} ({report.backend}, {report.threads} thread(s), batch "
        f"{report.batch}, {report.dtype}, deployment '{report.deploy_env}'): measured {report.measured_ms:.3f} ms"
        f" (median of {report.trials} fresh processes; IQR {report.iqr_ms:.3f} ms, p10-p90 "
        f"{report.p10_ms:.3f}-{report.p90_ms:.3f} ms, {report.calls} calls)"
        + ("" if report.stable else "; unstable: the machine was noisy")
    )
    if report.estimated_ms is None or report.estimated_then_ms is None:
        console.print(f"no estimate: {report.estimate_note}; run `lut estimate {model} --device {device}`")
        return
    state = "calibrated" if report.calibrated else "uncalibrated"
    console.print(
        f"lut estimate ({state}): {report.estimated_ms:.3f} ms; measured {report.difference:+.1%} from it (restated "
        f"at the machine's speed during this run, from its canary: {report.estimated_then_ms:.3f} ms, measured "
        f"{report.difference_at_run_speed:+.1%} from that)"
    )
    if report.blocks_timed_inside_it:
        console.print(
            f"{report.blocks_timed_inside_it} of its blocks were timed inside this network (blocks in context): the "
            "estimate holds its own earlier time, so this checks the machine's steadiness more than the estimator; "
            "`lut validate` reports networks the table never ran"
        )


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
    """The family ordered by estimated latency, with accuracy, Pareto front and the best under a budget."""
    from latency.jobs.rank import rank_family
    from latency.vocab.family import family_archs

    names = split_items(devices, "--devices") or [device]
    if budget_ms is not None and budget_ms <= 0:
        raise LutError(f"--budget-ms must be positive, got {budget_ms:g}.", exit_code=2)
    archs = family_archs(["all"])
    estimators = {
        d: _ready_estimator(archs, Conditions(d, backend, threads, batch, dtype), db, not no_profile, False, protocol)
        for d in names
    }
    ranking = rank_family(names, lambda d, n: estimators[d].estimate(n), budget_ms)
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
            console.print(f"{d}: uncalibrated estimates (run `lut calibrate --device {d}`)")
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
