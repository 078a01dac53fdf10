"""`lut devices`, `lut export`, `lut import`: the table itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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


@app.command()
@user_errors
def devices(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """The devices in the table with their fingerprints and entry counts."""
    store = open_store(db)
    rows = store.devices()
    if as_json:
        print_json(
            [
                {
                    "name": d.name,
                    "kind": d.kind,
                    "fingerprint": d.fingerprint,
                    "measurements": d.n_measurements,
                    "e2e_runs": d.n_e2e_runs,
                    "created_at": d.created_at.isoformat(),
                    "last_seen_at": d.last_seen_at.isoformat(),
                }
                for d in rows
            ]
        )
        return
    table = Table(title=f"devices in {store.url}")
    for column in ("device", "kind", "blocks measured", "end-to-end runs", "last seen (UTC)", "fingerprint"):
        table.add_column(column)
    for d in rows:
        fingerprint = ", ".join(f"{k}={v}" for k, v in d.fingerprint.items() if v is not None)
        table.add_row(
            d.name,
            d.kind,
            str(d.n_measurements),
            str(d.n_e2e_runs),
            d.last_seen_at.strftime("%Y-%m-%d %H:%M"),
            fingerprint,
        )
    console.print(table)


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


@app.command("import")
@user_errors
def import_table(
    csv_file: Annotated[Path, typer.Argument(help="A CSV file written by `lut export`.")],
    replace: Annotated[
        bool, typer.Option(help="Let the file's rows replace newer rows of the table (never measured by predicted).")
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Merge a CSV file written by `lut export` into the table (all or nothing; impossible rows refused)."""
    store = open_store(db)
    summary = store.import_csv(csv_file, replace=replace)
    if as_json:
        print_json({**summary.to_dict(), "db": str(store.url)})
    else:
        repeats = f", {summary.duplicates} repeated lines counted once" if summary.duplicates else ""
        console.print(
            f"{csv_file}: {summary.rows} rows: {summary.new} new, {summary.updated} updated, "
            f"{summary.unchanged} unchanged, {summary.kept} kept as they were (the table's are newer or measured)"
            f"{repeats}; into {store.url}",
            markup=False,
            highlight=False,
        )
