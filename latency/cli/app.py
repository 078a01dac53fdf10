"""The `lut` command: typer apps joined here, one module per command group; each command parses, calls
the library, prints."""

from __future__ import annotations

import typer

from latency.cli import calibrate, estimate, family, farm, profile, search, space, table

app = typer.Typer(
    name="lut",
    help="Hardware-aware latency lookup tables for the FBNetV2 family and its search space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts verbatim: "[default: ...]" and "lut[executorch]" are text, not markup
)

for group in (family, profile, table, estimate, calibrate, space):
    app.add_typer(group.app)
app.add_typer(space.group, name="space")
app.add_typer(search.app)
app.add_typer(farm.app)
app.add_typer(farm.jobs, name="jobs")


def main() -> None:
    app()
