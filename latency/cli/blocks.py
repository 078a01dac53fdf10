"""`lut blocks`: a network's blocks, their keys, FLOPs and parameters."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from latency.cli.common import (
    JsonOpt,
    console,
    print_json,
    user_errors,
)
from latency.vocab.family import blocks_of

app = typer.Typer()


@app.command()
@user_errors
def blocks(
    model: Annotated[str, typer.Argument(help="A model name (see `lut models`) or an ARCH.json file.")],
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the block inputs.")] = 1,
    dtype: Annotated[str, typer.Option(help="Data type: fp32, fp16, bf16 or int8.")] = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """Show a model's blocks from stem to classifier, with shapes, FLOPs and params."""

    specs = blocks_of(model, batch=batch, dtype=dtype)
    rows = [
        {
            "index": i,
            "key": s.key,
            "kind": s.kind,
            "input_shape": list(s.input_shape),
            "output_shape": list(s.output_shape),
            "flops_m": s.flops_m,
            "params_m": s.params_m,
        }
        for i, s in enumerate(specs)
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{model}: {len(rows)} blocks")
    for column in ("#", "key", "kind", "input", "output", "FLOPs (M)", "params (M)"):
        table.add_column(column, justify="right" if column in ("#", "FLOPs (M)", "params (M)") else "left")
    for row in rows:
        table.add_row(
            str(row["index"]),
            row["key"],
            row["kind"],
            "x".join(map(str, row["input_shape"])),
            "x".join(map(str, row["output_shape"])),
            f"{row['flops_m']:.3f}",
            f"{row['params_m']:.4f}",
        )
    table.add_section()
    table.add_row(
        "", "total", "", "", "", f"{sum(r['flops_m'] for r in rows):.3f}", f"{sum(r['params_m'] for r in rows):.4f}"
    )
    console.print(table)
