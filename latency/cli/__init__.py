"""The `lut` command: typer apps that parse, call one job and print.

Each command imports its job (latency.jobs, search_cost), and `common` the store and the protocols, inside the
function that needs them: the jobs import torch and the runtimes, the store SQLAlchemy (seconds on a loaded
machine), and `lut --help` or a mistyped option should answer at once.
"""

from latency.cli.app import app, main

__all__ = ["app", "main"]
