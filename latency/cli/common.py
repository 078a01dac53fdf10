"""What every command module shares: the consoles, the common options, the error wrapper, progress."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from latency.vocab.deploy_env import DeployEnv
from latency.vocab.errors import LutError
from profilers.devices import DEVICE_BACKENDS

if TYPE_CHECKING:
    from lut_db import LutStore

# Wide enough for the block keys when piped (rich falls back to 80 columns there). No markup: what we
# print holds paths, model names and pip extras, whose brackets are text.
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err_console = Console(stderr=True, markup=False)

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LUT_DB_URL",
        help="SQLAlchemy URL or SQLite file of the table [default: a SQLite file in the user cache directory].",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", envvar="LUT_DEVICE", help="Device: cpu (this host), cuda[:N], or a phone's name (pixel)."),
]
BACKEND_HELP = (
    "Backend: "
    + "; ".join(f"on {kind} {', '.join(backends)}" for kind, backends in DEVICE_BACKENDS.items())
    + " [default: the first of the device's]."
)
BackendOpt = Annotated[str | None, typer.Option(envvar="LUT_BACKEND", help=BACKEND_HELP)]
ThreadsOpt = Annotated[int, typer.Option(min=1, envvar="LUT_THREADS", help="Threads of the runtime.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Batch size.")]
DtypeOpt = Annotated[str, typer.Option(help="fp32, fp16, bf16 or int8 (int8: with --backend executorch).")]
# One phrase per protocol of profilers.protocol.PROTOCOLS (a test holds them equal).
PROTOCOL_HELP = {
    "standard": "the full budgets",
    "brief": "a tenth of them (steady devices, short leases)",
    "quick": "a smoke test with tiny budgets",
}
ProtocolOpt = Annotated[
    str,
    typer.Option(
        envvar="LUT_PROTOCOL",
        help="Measurement protocol: " + "; ".join(f"{name}: {what}" for name, what in PROTOCOL_HELP.items()) + ".",
    ),
]
SpaceOpt = Annotated[
    str, typer.Option(help="The search space to sample from: a name (see `lut space show`) or a space file NAME.json.")
]
DeployEnvOpt = Annotated[
    str,
    typer.Option(
        "--deploy-env",
        envvar="LUT_DEPLOY_ENV",
        help="The process the deployed network runs in, which end-to-end times refer to: 'default' (a plain "
        "process, the runtime's defaults), 'tuned-malloc', or VAR=VALUE pairs (e.g. LD_PRELOAD=...jemalloc.so.2).",
    ),
]
SerialOpt = Annotated[
    str | None, typer.Option(envvar="ANDROID_SERIAL", help="A phone's adb serial (when several are connected).")
]
RunnerOpt = Annotated[
    str | None, typer.Option(envvar="LUT_ANDROID_RUNNER", help="ExecuTorch executor_runner built for the phone.")
]


def phone_options(serial: str | None, runner: str | None) -> dict[str, str | None] | None:
    """The device options a phone takes (`--serial`, `--runner`), or None when neither was given."""
    return {"serial": serial, "runner": runner} if serial or runner else None


def finite(value: float | None) -> float | None:
    """Option callback: NaN and infinity are refused (typer's min/max let them through)."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number.")
    return value


def user_errors(func: F) -> F:
    """Turn a LutError into one sentence on stderr and its exit code (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LutError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: what was measured is stored; run the same command again to finish.")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except OSError as exc:  # a file we were told to read or write
            where = f"{exc.filename}: " if exc.filename else ""
            print_error(f"{where}{exc.strerror or exc}.")
            raise typer.Exit(1) from None
        except Exception as exc:
            if os.environ.get("LUT_DEBUG"):
                raise
            print_error(
                f"unexpected {type(exc).__name__}: {exc} (a bug in lut: please report it with the command; "
                "LUT_DEBUG=1 shows the traceback)."
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_error(message: str) -> None:
    err_console.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class RichProgress:
    """Progress fed by the profilers, on stderr (so --json output stays clean): a rich bar on a terminal,
    plain lines every PLAIN_EVERY_S seconds (and at the start and end) in a log or a pipe."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._description = description
        self._plain = not err_console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[item]}", style="dim", markup=False),
            console=err_console,
            transient=True,
            disable=self._plain,
        )
        self._task = self._progress.add_task(description, total=0, item="")
        self._started = False
        self._started_at = self._last_line_at = 0.0

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._progress.stop()
            if self._plain:
                self._line("done" if exc[0] is None else "stopped")

    def _line(self, state: str) -> None:
        task = self._progress.tasks[0]
        done, total = int(task.completed), int(task.total or 0)
        elapsed_s = time.monotonic() - self._started_at
        eta = f", about {duration(elapsed_s * (total - done) / done)} left" if 0 < done < total else ""
        sys.stderr.write(f"{self._description}: {done}/{total} {state}, {duration(elapsed_s)} elapsed{eta}\n")
        sys.stderr.flush()
        self._last_line_at = time.monotonic()

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        self._progress.update(self._task, advance=steps, item=(description or "")[:48])
        if self._plain and time.monotonic() - self._last_line_at >= self.PLAIN_EVERY_S:
            self._line("measured")

    def add_total(self, steps: int) -> None:
        if not self._started:  # the bar appears once there is work, not before validation
            self._progress.start()
            self._started = True
            self._started_at = time.monotonic()
        total = self._progress.tasks[0].total or 0
        self._progress.update(self._task, total=total + steps)
        if self._plain and self._last_line_at == 0.0:
            self._line("started")


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def open_store(db: str | None) -> LutStore:
    from lut_db import LutStore

    return LutStore(db)


def split_items(values: str | None, option: str = "the list") -> list[str]:
    """A comma-separated option's items; an item left empty (`--models ,`, `a,,b`) is refused, not skipped."""
    if values is None or not values.strip():
        return []
    items = [v.strip() for v in values.split(",")]
    if not all(items):
        raise LutError(f"{option} '{values}' has an empty item; give comma-separated names.", exit_code=2)
    return items


def check_protocol(name: str) -> str:
    from profilers.protocol import PROTOCOLS

    if name not in PROTOCOLS:
        raise LutError(f"Unknown protocol '{name}'; known: {', '.join(PROTOCOLS)}.", exit_code=2)
    return name


def parse_deploy_env(text: str) -> Any:

    return DeployEnv.parse(text)


def ops_text(counts: dict[str, int]) -> str:
    """Operators with how often each runs ("dim_order_ops::_to_dim_order_copy x2"), or "-" for none."""
    return ", ".join(f"{op} x{n}" if n > 1 else op for op, n in counts.items()) or "-"


def uncalibrated_hint(device: str, deploy_env: str, others: tuple[str, ...]) -> str:
    option = "" if deploy_env == "default" else f" --deploy-env {deploy_env}"
    hint = f"uncalibrated: the plain sum of blocks; run `lut calibrate --device {device}{option}`"
    if others:  # e.g. a table calibrated before runs were taken in the user's process
        hint += (
            f" (the table's calibration is for deployment '{others[0]}', not '{deploy_env}': its runs were taken "
            f"in another process environment; pass --deploy-env {others[0]} to use it)"
        )
    return hint


def check_writable(path: Path, option: str) -> None:
    """Refuse now an output that could only fail after the work: a folder, or a place we cannot write."""
    if path.is_dir():
        raise LutError(f"{option} {path} is a folder; give a file name.", exit_code=2)
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        raise LutError(f"{option} {path} cannot be written (no permission).", exit_code=2)
    if not path.exists() and not (folder.is_dir() and os.access(folder, os.W_OK)):
        raise LutError(f"{option} {path}: the folder {folder} does not exist or cannot be written.", exit_code=2)
