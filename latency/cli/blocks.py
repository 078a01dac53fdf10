"""`lut blocks`: a network's blocks, their keys, FLOPs and parameters."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from latency.cli.common import (
    BackendOpt,
    DbOpt,
    JsonOpt,
    ThreadsOpt,
    console,
    ops_text,
    print_json,
    user_errors,
)
from latency.estimate import Estimator
from latency.vocab.conditions import Conditions
from latency.vocab.family import blocks_of

app = typer.Typer()


@app.command()
@user_errors
def blocks(
    model: Annotated[str, typer.Argument(help="A model name (see `lut models`) or an ARCH.json file.")],
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the block inputs.")] = 1,
    dtype: Annotated[str, typer.Option(help="Data type: fp32, fp16, bf16 or int8.")] = "fp32",
    device: Annotated[
        str | None,
        typer.Option(
            help="Also show each block's row in the table for this device: latency, source, and the ops "
            "its program ran outside the delegate (ExecuTorch)."
        ),
    ] = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model's blocks from stem to classifier, with shapes, FLOPs and params (and, with --device, what
    the table holds for each)."""

    specs = blocks_of(model, batch=batch, dtype=dtype)
    entries = {}
    if device is not None:
        entries = Estimator(Conditions(device, backend, threads, batch, dtype), db, use_calibration=False).entry_map()
    rows = []
    for i, s in enumerate(specs):
        row = {
            "index": i,
            "key": s.key,
            "kind": s.kind,
            "input_shape": list(s.input_shape),
            "output_shape": list(s.output_shape),
            "flops_m": s.flops_m,
            "params_m": s.params_m,
        }
        if device is not None:
            entry = entries.get(s.key)
            row["latency_ms"] = entry.median_us / 1e3 if entry else None
            row["source"] = entry.source if entry else None
            row["outside_delegate"] = entry.outside_delegate if entry else {}
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    title = f"{model}: {len(rows)} blocks" + (f", as the table holds them on {device}" if device else "")
    table = Table(title=title)
    columns = ["#", "key", "kind", "input", "output", "FLOPs (M)", "params (M)"]
    if device is not None:
        columns += ["latency (ms)", "source", "outside delegate"]
    for column in columns:
        table.add_column(
            column, justify="right" if column in ("#", "FLOPs (M)", "params (M)", "latency (ms)") else "left"
        )
    for row in rows:
        cells = [
            str(row["index"]),
            row["key"],
            row["kind"],
            "x".join(map(str, row["input_shape"])),
            "x".join(map(str, row["output_shape"])),
            f"{row['flops_m']:.3f}",
            f"{row['params_m']:.4f}",
        ]
        if device is not None:
            latency = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.4f}"
            cells += [latency, row["source"] or "not in the table", ops_text(row["outside_delegate"])]
        table.add_row(*cells)
    table.add_section()
    total = [
        "",
        "total",
        "",
        "",
        "",
        f"{sum(r['flops_m'] for r in rows):.3f}",
        f"{sum(r['params_m'] for r in rows):.4f}",
    ]
    if device is not None:
        held = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
        total += [f"{sum(held):.4f}" if len(held) == len(rows) else "-", "", ""]
    table.add_row(*total)
    console.print(table)
