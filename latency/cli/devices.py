"""`lut devices`: the devices in the table, their rows and identities."""

from __future__ import annotations

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

app = typer.Typer()


@app.command()
@user_errors
def devices(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """The devices in the table with their fingerprints and entry counts."""
    store = open_store(db)
    rows = store.devices()
    if as_json:
        print_json([d.to_dict() for d in rows])
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
