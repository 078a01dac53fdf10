"""`lut models`, `lut blocks`: the family and its blocks."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from latency.cli.common import (
    JsonOpt,
    console,
    fmt,
    print_json,
    user_errors,
)

app = typer.Typer()


@app.command()
@user_errors
def models(as_json: JsonOpt = False) -> None:
    """List the FBNetV2 family: resolution, FLOPs, params, published top-1, availability."""
    from latency.vocab.family import list_models, model_info

    infos = [model_info(name) for name in list_models()]
    if as_json:
        print_json(
            [
                {
                    "name": info.name,
                    "resolution": info.resolution,
                    "flops_m": info.flops_m,
                    "params_m": info.params_m,
                    "top1": info.top1,
                    "available": info.available,
                    "published": {k: v for k, v in vars(info.published).items() if v is not None},
                    "unavailable_reason": info.unavailable_reason,
                }
                for info in infos
            ]
        )
        return
    table = Table(
        title="FBNetV2 family",
        caption="FLOPs: multiply-adds; params: conv/linear weights; README: the published table (* a copy error there)",
    )
    for column in (
        "model",
        "res",
        "FLOPs (M)",
        "params (M)",
        "top-1",
        "available",
        "README res",
        "README FLOPs",
        "README top-1",
    ):
        table.add_column(column, justify="left" if column in ("model", "available") else "right", no_wrap=True)
    for info in infos:
        pub = info.published
        table.add_row(
            info.name,
            str(info.resolution),
            fmt(info.flops_m),
            fmt(info.params_m, 3 if info.available else 2),
            f"{info.top1:.1f}",
            "yes" if info.available else "no public arch",
            f"{pub.resolution}{'*' if info.published_mismatch else ''}",
            "-" if pub.flops_m is None else f"{pub.flops_m:g}",
            fmt(pub.top1, 1),
        )
    console.print(table)


@app.command()
@user_errors
def blocks(
    model: Annotated[str, typer.Argument(help="A model name (see `lut models`) or an ARCH.json file.")],
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the block inputs.")] = 1,
    dtype: Annotated[str, typer.Option(help="Data type: fp32, fp16 or bf16.")] = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """Show a model's blocks from stem to classifier, with shapes, FLOPs and params."""
    from latency.vocab.family import blocks_of

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
