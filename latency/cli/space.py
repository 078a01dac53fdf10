"""`lut space show`: a search space's options and size."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from latency.cli.common import (
    JsonOpt,
    console,
    print_json,
    user_errors,
)
from latency.vocab.family import get_arch, list_models
from latency.vocab.space import get_space

group = typer.Typer(help="Search spaces: options, size.", no_args_is_help=True)


@group.command("show")
@user_errors
def space_show(
    name: Annotated[str, typer.Argument(help="The space's name, or a space file NAME.json.")] = "fbnetv2_f4",
    as_json: JsonOpt = False,
) -> None:
    """Print a search space's blocks, width and resolution options, and its size."""

    space = get_space(name)
    if as_json:
        print_json({**space.to_dict(), "grid_blocks": len(space.all_specs())})
        return
    console.print(Text(space.name, style="bold") + Text(f": {space.about}"), highlight=False)
    console.print(f"resolutions: {', '.join(map(str, space.resolutions))}")
    table = Table(title="blocks")
    for column in ("#", "op", "stride", "output width", "mid options"):
        table.add_column(column)
    for i, block in enumerate(space.blocks):
        out = f"{block.group}: {', '.join(map(str, space.widths(block.group)))}" if block.group else str(block.c_out)
        table.add_row(str(i), block.op, str(block.stride), out, ", ".join(map(str, block.mids or ())) or "-")
    console.print(table)
    members = [
        f"{model} ({space.point_name(point)})"
        for model in list_models(available_only=True)
        if (point := space.point_of(get_arch(model))) is not None
    ]
    console.print(
        f"{len(space.dimensions)} searched dimensions, {space.size:.3e} architectures, "
        f"{len(space.all_specs())} distinct block shapes; family models in it: "
        + (", ".join(members) if members else "none"),
        soft_wrap=True,  # one line, however long: scripts grep it
    )
