"""`lut estimate`: a network's latency from the table."""

from __future__ import annotations

from typing import Annotated

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
    ThreadsOpt,
    console,
    ops_text,
    print_json,
    uncalibrated_hint,
    user_errors,
)
from latency.cli.estimators import ready_estimator
from latency.vocab.conditions import Conditions
from latency.vocab.family import resolve_arch

app = typer.Typer()

app = typer.Typer()


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

    arch = resolve_arch(model)
    conditions = Conditions(device, backend, threads, batch, dtype)
    estimator = ready_estimator([arch], conditions, db, not no_profile, strict, protocol, deploy_env)
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
    if result.outside_delegate_blocks:
        ops = sorted({op for b in result.blocks for op in b.outside_delegate})
        console.print(
            f"{result.outside_delegate_blocks} of {len(result.blocks)} blocks run ops outside the delegate, on the "
            f"runtime's portable kernels ({', '.join(ops)})" + ("" if breakdown else ": see --breakdown")
        )
    if breakdown:
        fallbacks = result.outside_delegate_blocks > 0
        table = Table()
        columns = ("#", "block", "source", "latency (ms)", "share") + (("outside delegate",) if fallbacks else ())
        for column in columns:
            table.add_column(column, justify="right" if column in ("#", "latency (ms)", "share") else "left")
        for i, block in enumerate(result.blocks):
            cells = [
                str(i),
                block.key,
                block.source,
                f"{block.latency_ms:.4f}",
                f"{block.latency_ms / result.sum_ms:.1%}",
            ]
            if fallbacks:
                cells.append(ops_text(block.outside_delegate))
            table.add_row(*cells)
        console.print(table)
