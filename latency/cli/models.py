"""`lut models`: the FBNetV2 family."""

from __future__ import annotations

import typer
from rich.table import Table

from latency.cli.common import (
    JsonOpt,
    console,
    fmt,
    print_json,
    user_errors,
)
from latency.vocab.family import list_models, model_info

app = typer.Typer()


@app.command()
@user_errors
def models(as_json: JsonOpt = False) -> None:
    """List the FBNetV2 family: resolution, FLOPs, params, published top-1, availability."""

    infos = [model_info(name) for name in list_models()]
    if as_json:
        print_json([info.to_dict() for info in infos])
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
