"""The `lut` command: typer apps that parse, call one job and print."""

from latency.cli.app import app, main

__all__ = ["app", "main"]
