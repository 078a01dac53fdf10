"""The estimator a command answers from: the table covered by measurements first, with a progress bar."""

from __future__ import annotations

from typing import Any

import typer

from latency.cli.common import (
    RichProgress,
    check_protocol,
    open_store,
    parse_deploy_env,
)
from latency.vocab.conditions import Conditions

app = typer.Typer()


def ready_estimator(
    archs: list[Any],
    conditions: Conditions,
    db: str | None,
    measure_missing: bool,
    strict: bool,
    protocol: str = "standard",
    deploy_env: str = "default",
) -> Any:
    """The covering_estimator job with the command's options checked and its progress bar."""
    from latency.jobs.cover import covering_estimator

    return covering_estimator(
        archs,
        conditions,
        open_store(db),
        RichProgress,
        measure_missing=measure_missing,
        strict=strict,
        protocol=check_protocol(protocol),
        deploy_env=parse_deploy_env(deploy_env),
    )
