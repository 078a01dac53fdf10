"""`lut export`: the table's measurements to a CSV file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latency.cli.common import (
    DbOpt,
    JsonOpt,
    console,
    open_store,
    print_json,
    user_errors,
)
from latency.vocab.errors import LutError

app = typer.Typer()


@app.command("export")
@user_errors
def export_table(
    out: Annotated[Path, typer.Option("--out", help="The CSV file to write.")],
    device: Annotated[str | None, typer.Option(help="Only this device's rows [default: all].")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the table's measurements (with block fields and device) to a CSV file."""
    store = open_store(db)
    if device is not None and store.device(device) is None:
        raise LutError(f"Device '{device}' is not in {store.url}; see `lut devices`.")
    rows = store.export_csv(out, device=device)
    if as_json:
        print_json({"rows": rows, "out": str(out)})
    else:
        console.print(f"wrote {rows} measurements to {out}")
