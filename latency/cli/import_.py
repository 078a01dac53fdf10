"""`lut import`: a CSV file written by `lut export`, merged into the table."""

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

app = typer.Typer()


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
