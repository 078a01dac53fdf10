"""The `lut` command: typer apps that parse, call one job and print.

Each command imports its job (latency.jobs, search_cost) inside itself: the jobs import torch and the
runtimes, seconds on a loaded machine, and `lut --help` or a mistyped option should answer at once.
"""

from latency.cli.app import app, main

__all__ = ["app", "main"]
