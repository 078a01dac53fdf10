"""`lut` run in this process through typer's CliRunner: the same app, options, error wrappers and
output as the console script, without a new interpreter that imports torch for every call (a minute
each on a slow CI machine). Workers and deployment processes are still real processes. The tests
where the process itself is under test (signals, concurrency, no traceback, the installed wheel)
start `python -m latency.cli` instead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from latency.cli import app

RUNNER = CliRunner()


@dataclass(frozen=True)
class Ran:
    """What a finished `lut` command left: the fields of subprocess.CompletedProcess the tests read."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def lut(*args: str, env: dict[str, str] | None = None, check: bool = False) -> Ran:
    """Run `lut ARGS` with ENV added to this process's environment for the duration of the call.

    An exception that escapes the app's own wrappers is raised here, with its traceback: in a real
    process it would have been printed to the user, which is a bug."""
    result = RUNNER.invoke(app, list(args), env=env, catch_exceptions=False)
    ran = Ran(tuple(args), result.exit_code, result.stdout, result.stderr)
    if check and ran.returncode != 0:
        raise AssertionError(f"lut {' '.join(args)} exited {ran.returncode}: {ran.stderr}")
    return ran


QUICK = {"LUT_PROTOCOL": "quick"}  # tiny budgets, the same measurement path
TINY_SPACE = Path(__file__).parent / "data" / "tiny_space.json"  # 17 corners, 43 blocks: fills in a test
