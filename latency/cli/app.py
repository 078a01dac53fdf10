"""The `lut` command: typer apps joined here, one module per command (named after it; `import_` for
`lut import`); each command parses, calls the library, prints."""

from __future__ import annotations

import typer

from latency.cli import (
    blocks,
    calibrate,
    devices,
    estimate,
    export,
    import_,
    jobs,
    models,
    profile,
    rank,
    sample,
    search,
    serve,
    space,
    time,
    validate,
    worker,
)

app = typer.Typer(
    name="lut",
    help="Hardware-aware latency lookup tables for the FBNetV2 family and its search space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts verbatim: "[default: ...]" and "lut[executorch]" are text, not markup
)

# One module per command, in the order `lut --help` lists them; `space` and `jobs` are groups.
for command in (models, blocks, profile, devices, export, import_, estimate, time, rank, calibrate, validate, sample):
    app.add_typer(command.app)
app.add_typer(space.group, name="space")
for command in (search, worker, serve):
    app.add_typer(command.app)
app.add_typer(jobs.jobs, name="jobs")


def main() -> None:
    app()
