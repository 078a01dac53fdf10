"""`lut serve`: the table as a read-only service (JSON API and pages) over HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from latency.cli import common
from latency.cli.common import DbOpt, user_errors
from latency.vocab.errors import LutError

app = typer.Typer()


@app.command()
@user_errors
def serve(
    db: DbOpt = None,
    host: Annotated[
        str, typer.Option(envvar="LUT_SERVE_HOST", help="Address to bind: 127.0.0.1 is this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, envvar="LUT_SERVE_PORT", help="Port to listen on.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="LUT_SERVE_TOKEN",
            help="Required on every request as 'Authorization: Bearer TOKEN' (pages: open /?token=TOKEN once).",
        ),
    ] = None,
) -> None:
    """Serve the table read-only: a JSON API (/api, described at /api/openapi.json) and pages (/)."""
    try:
        import uvicorn
    except ImportError:
        raise LutError("lut serve needs FastAPI and uvicorn: pip install 'lut[serve]'.", exit_code=2) from None
    from latency.serve import create_app
    from lut_db import LutStore

    store = LutStore(db, read_only=True)
    config = uvicorn.Config(
        create_app(store, token=token or None),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=30,  # SIGTERM: requests in flight finish, new ones are refused
    )
    server = uvicorn.Server(config)
    where = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else "the network"
    common.err_console.print(
        f"serving {store.url} read-only on http://{host}:{port} (open to {where}"
        + ("" if host != "127.0.0.1" else "; --host 0.0.0.0 opens it to others")
        + ("; token required" if token else "")
        + ")",
        highlight=False,
        soft_wrap=True,
    )
    server.run()
