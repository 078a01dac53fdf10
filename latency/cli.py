"""The `lut` command: one function per sub-command; the work lives in the library modules."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from latency.errors import LutError

if TYPE_CHECKING:
    from lut_db import LutStore

app = typer.Typer(
    name="lut",
    help="Hardware-aware latency lookup tables for the FBNetV2 family and its search space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide enough for the block keys when piped (rich falls back to 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

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
BackendOpt = Annotated[
    str | None, typer.Option(envvar="LUT_BACKEND", help="Backend [default: the one with most entries in the table].")
]
ThreadsOpt = Annotated[int, typer.Option(min=1, envvar="LUT_THREADS", help="Threads of the runtime.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Batch size.")]
DtypeOpt = Annotated[str, typer.Option(help="fp32, fp16 or bf16.")]
ProtocolOpt = Annotated[
    str,
    typer.Option(envvar="LUT_PROTOCOL", help="Measurement protocol: standard, or quick (a smoke test: tiny budgets)."),
]
SpaceOpt = Annotated[str, typer.Option(help="The search space to sample from (see `lut space show`).")]


def user_errors(func: F) -> F:
    """Turn a LutError into one sentence on stderr and its exit code (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LutError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: what was measured is stored; run the same command again to finish.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@app.command()
@user_errors
def models(as_json: JsonOpt = False) -> None:
    """List the FBNetV2 family: resolution, FLOPs, params, published top-1, availability."""
    from latency.models import list_models, model_info

    infos = [model_info(name) for name in list_models()]
    if as_json:
        print_json(
            [
                {
                    "name": info.name,
                    "resolution": info.resolution,
                    "flops_m": info.flops_m,
                    "params_m": info.params_m,
                    "top1": info.top1,
                    "available": info.available,
                    "published": {k: v for k, v in vars(info.published).items() if v is not None},
                    "unavailable_reason": info.unavailable_reason,
                }
                for info in infos
            ]
        )
        return
    table = Table(
        title="FBNetV2 family",
        caption="FLOPs: multiply-adds; params: conv/linear weights; README: the published table (* a copy error there)",
    )
    for column in (
        "model",
        "res",
        "FLOPs (M)",
        "params (M)",
        "top-1",
        "available",
        "README res",
        "README FLOPs",
        "README top-1",
    ):
        table.add_column(column, justify="left" if column in ("model", "available") else "right", no_wrap=True)
    for info in infos:
        pub = info.published
        table.add_row(
            info.name,
            str(info.resolution),
            _fmt(info.flops_m),
            _fmt(info.params_m, 3 if info.available else 2),
            f"{info.top1:.1f}",
            "yes" if info.available else "no public arch",
            f"{pub.resolution}{'*' if info.published_mismatch else ''}",
            "-" if pub.flops_m is None else f"{pub.flops_m:g}",
            _fmt(pub.top1, 1),
        )
    console.print(table)


@app.command()
@user_errors
def blocks(
    model: Annotated[str, typer.Argument(help="A model name (see `lut models`) or an ARCH.json file.")],
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the block inputs.")] = 1,
    dtype: Annotated[str, typer.Option(help="Data type: fp32, fp16 or bf16.")] = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """Show a model's blocks from stem to classifier, with shapes, FLOPs and params."""
    from latency.models import blocks_of

    specs = blocks_of(model, batch=batch, dtype=dtype)
    rows = [
        {
            "index": i,
            "key": s.key,
            "kind": s.kind,
            "input_shape": list(s.input_shape),
            "output_shape": list(s.output_shape),
            "flops_m": s.flops_m,
            "params_m": s.params_m,
        }
        for i, s in enumerate(specs)
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{model}: {len(rows)} blocks")
    for column in ("#", "key", "kind", "input", "output", "FLOPs (M)", "params (M)"):
        table.add_column(column, justify="right" if column in ("#", "FLOPs (M)", "params (M)") else "left")
    for row in rows:
        table.add_row(
            str(row["index"]),
            row["key"],
            row["kind"],
            "x".join(map(str, row["input_shape"])),
            "x".join(map(str, row["output_shape"])),
            f"{row['flops_m']:.3f}",
            f"{row['params_m']:.4f}",
        )
    table.add_section()
    table.add_row(
        "", "total", "", "", "", f"{sum(r['flops_m'] for r in rows):.3f}", f"{sum(r['params_m'] for r in rows):.4f}"
    )
    console.print(table)


class RichProgress:
    """A rich progress bar (on stderr, so --json output stays clean) fed by the profilers."""

    def __init__(self, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[item]}", style="dim"),
            console=err_console,
            transient=True,
            disable=not err_console.is_terminal,  # no bar in logs and pipes
        )
        self._task = self._progress.add_task(description, total=0, item="")
        self._started = False

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._progress.stop()

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        self._progress.update(self._task, advance=steps, item=(description or "")[:48])

    def add_total(self, steps: int) -> None:
        if not self._started:  # the bar appears once there is work, not before validation
            self._progress.start()
            self._started = True
        total = self._progress.tasks[0].total or 0
        self._progress.update(self._task, total=total + steps)


def _open_store(db: str | None) -> LutStore:
    from lut_db import LutStore

    return LutStore(db)


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


@app.command()
@user_errors
def profile(
    device: DeviceOpt = "cpu",
    backend: Annotated[str | None, typer.Option(help="torch or onnxruntime [default: the device's first].")] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model names, or 'all' [default: all, unless --arch is given].")
    ] = None,
    arch: Annotated[list[str] | None, typer.Option("--arch", help="An ARCH.json file (repeatable).")] = None,
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    force: Annotated[bool, typer.Option(help="Measure again blocks the table already has.")] = False,
    space: Annotated[
        str | None,
        typer.Option(
            help="Fill the table for a search space instead: corners, then adaptive samples "
            "within --budget-min, the rest predicted."
        ),
    ] = None,
    budget_min: Annotated[float, typer.Option(min=0.0, help="Minutes of measuring for --space.")] = 20.0,
    serial: Annotated[
        str | None, typer.Option(envvar="ANDROID_SERIAL", help="A phone's adb serial (when several are connected).")
    ] = None,
    runner: Annotated[
        str | None, typer.Option(envvar="LUT_ANDROID_RUNNER", help="ExecuTorch executor_runner built for the phone.")
    ] = None,
    protocol: ProtocolOpt = "standard",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure every block of the models asked for that the table lacks, and store each at once."""
    from latency.profile import collect_specs, profile_blocks

    _protocol(protocol)
    if space is not None:
        _profile_space(space, device, backend, threads, batch, dtype, budget_min, protocol, db, as_json)
        return
    model_names = _split(models) or ([] if arch else ["all"])
    specs = collect_specs(model_names, arch or [], batch=batch, dtype=dtype)
    store = _open_store(db)
    with RichProgress(f"profiling on {device}") as bar:
        summary = profile_blocks(
            specs,
            store,
            device,
            backend,
            threads,
            protocol,
            force,
            progress=bar,
            device_options={"serial": serial, "runner": runner} if serial or runner else None,
        )
    if as_json:
        print_json({**summary.to_dict(), "db": str(store.url)})
    else:
        console.print(
            f"{summary.requested} blocks asked for on {summary.device} ({summary.backend} "
            f"{summary.backend_version}, {summary.threads} thread(s)): {summary.measured} measured, "
            f"{summary.already_present} already in the table, {len(summary.unstable)} unstable after "
            f"re-measurement, {len(summary.failed)} failed; {summary.seconds:.1f} s."
        )
        console.print(f"table: {store.url}", highlight=False)
        for key, error in summary.failed.items():
            err_console.print(f"failed: {key}: {error}", highlight=False, soft_wrap=True)
    if summary.interrupted:
        err_console.print("interrupted: what was measured is stored; run the same command again to finish.")
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def _profile_space(
    name: str,
    device: str,
    backend: str | None,
    threads: int,
    batch: int,
    dtype: str,
    budget_min: float,
    protocol: str,
    db: str | None,
    as_json: bool,
) -> None:
    from latency.space import get_space
    from latency.space_profile import profile_space

    search_space = get_space(name)
    store = _open_store(db)
    with RichProgress(f"profiling {name} on {device}") as bar:
        summary = profile_space(search_space, store, device, backend, threads, batch, dtype, budget_min, protocol, bar)
    if as_json:
        print_json({**summary.to_dict(), "db": str(store.url)})
    else:
        p = summary.predictor
        console.print(
            f"{name} on {device} ({summary.backend}): {summary.grid} block shapes; {summary.measured_before} measured "
            f"before, {summary.measured_now} measured now ({summary.rounds} adaptive rounds), {summary.predicted} "
            f"predicted; {summary.seconds / 60:.1f} min."
        )
        if p:
            console.print(
                f"predictor, 5-fold CV on {p['cv_blocks']} measured blocks: median error {p['cv_median_error']:.1%}, "
                f"p90 {p['cv_p90_error']:.1%}, within 10%: {p['cv_within_10pct']:.0%}"
            )
    if summary.interrupted:
        raise KeyboardInterrupt


@app.command()
@user_errors
def devices(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """The devices in the table with their fingerprints and entry counts."""
    store = _open_store(db)
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
    store = _open_store(db)
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
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Merge a CSV file written by `lut export` into the table (all or nothing)."""
    store = _open_store(db)
    rows = store.import_csv(csv_file)
    if as_json:
        print_json({"rows": rows, "db": str(store.url)})
    else:
        console.print(f"imported {rows} measurements into {store.url}")


def _protocol(name: str) -> str:
    from profilers.protocol import PROTOCOLS

    if name not in PROTOCOLS:
        raise LutError(f"Unknown protocol '{name}'; known: {', '.join(PROTOCOLS)}.", exit_code=2)
    return name


def _ready_estimator(
    archs: list[Any],
    device: str,
    backend: str | None,
    threads: int,
    batch: int,
    dtype: str,
    db: str | None,
    measure_missing: bool,
    strict: bool,
    protocol: str = "standard",
) -> Any:
    """An Estimator whose table covers `archs`: missing blocks are measured on a local device
    (unless told not to), or predicted elsewhere; `strict` makes any missing block an error."""
    from latency.estimate import Estimator
    from latency.profile import fill_missing

    estimator = Estimator(device, backend=backend, threads=threads, batch=batch, dtype=dtype, store=_open_store(db))
    if not strict:
        with RichProgress(f"measuring missing blocks on {device}") as bar:
            fill_missing(estimator, archs, measure=measure_missing, protocol=_protocol(protocol), progress=bar)
    return estimator


@app.command()
@user_errors
def estimate(
    model: Annotated[str, typer.Argument(help="A model name or an ARCH.json file.")],
    device: DeviceOpt = "cpu",
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    breakdown: Annotated[bool, typer.Option(help="Show every block's latency and source.")] = False,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="Never measure missing blocks.")] = False,
    strict: Annotated[bool, typer.Option(help="Any block missing from the table is an error.")] = False,
    protocol: ProtocolOpt = "standard",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate a model's end-to-end latency on a device from the lookup table."""
    from latency.models import resolve_arch

    arch = resolve_arch(model)
    estimator = _ready_estimator([arch], device, backend, threads, batch, dtype, db, not no_profile, strict, protocol)
    result = estimator.estimate(arch)
    if as_json:
        print_json(result.to_dict())
        return
    low, high = result.interval_ms
    console.print(
        f"[bold]{result.model}[/] on {result.device} ({result.backend}, {result.threads} thread(s), batch "
        f"{result.batch}, {result.dtype}): [bold]{result.latency_ms:.3f} ms[/] (interval {low:.3f}-{high:.3f} ms)"
    )
    predicted = sum(b.source == "predicted" for b in result.blocks)
    console.print(
        f"sum of {len(result.blocks)} block medians: {result.sum_ms:.3f} ms"
        + (f"; {predicted} blocks predicted, not measured" if predicted else "")
    )
    if result.calibrated:
        cal = result.calibration
        console.print(
            f"calibrated: {cal['model']} correction, cross-validated RMSPE {cal.get('cv_rmspe', float('nan')):.1%}"
            f" over {cal.get('cv_n', 0)} runs"
        )
    else:
        console.print(f"uncalibrated: the plain sum of blocks; run `lut calibrate --device {result.device}`")
    if breakdown:
        table = Table()
        for column in ("#", "block", "source", "latency (ms)", "share"):
            table.add_column(column, justify="right" if column in ("#", "latency (ms)", "share") else "left")
        for i, block in enumerate(result.blocks):
            table.add_row(
                str(i), block.key, block.source, f"{block.latency_ms:.4f}", f"{block.latency_ms / result.sum_ms:.1%}"
            )
        console.print(table)


@app.command()
@user_errors
def calibrate(
    device: DeviceOpt = "cpu",
    backend: Annotated[str | None, typer.Option(help="Backend [default: the device's first].")] = None,
    random: Annotated[int, typer.Option("--random", min=0, help="Sampled architectures to add.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    models: Annotated[str, typer.Option(help="Family members to include: 'all', 'none' or names.")] = "all",
    space: SpaceOpt = "fbnetv2_f4",
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    protocol: ProtocolOpt = "standard",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure end-to-end runs, fit the sum-to-end-to-end correction, store it with its CV error."""
    from latency.calibrate import calibrate as run_calibration
    from latency.calibrate import family_archs, sampled_archs
    from profilers.devices import resolve_device

    backend = backend or resolve_device(device).default_backend
    archs = (family_archs(_split(models)) if models != "none" else []) + sampled_archs(random, seed, space)
    store = _open_store(db)
    with RichProgress(f"calibrating {device}") as bar:
        report = run_calibration(store, archs, device, backend, threads, batch, dtype, _protocol(protocol), bar)
    if as_json:
        print_json(report.to_dict())
        return
    metrics = report.correction.metrics
    console.print(
        f"calibrated {device}/{backend} on {report.runs} end-to-end runs: {report.correction.model} correction; "
        f"cross-validated RMSPE {metrics['cv_rmspe']:.1%}, MAPE {metrics['cv_mape']:.1%}, within 10% "
        f"{metrics['cv_within_10pct']:.0%}"
    )


@app.command()
@user_errors
def validate(
    device: DeviceOpt = "cpu",
    backend: Annotated[str | None, typer.Option(help="Backend [default: the device's first].")] = None,
    models: Annotated[str, typer.Option(help="Family members to validate on: 'all', 'none' or names.")] = "all",
    random: Annotated[int, typer.Option("--random", min=0, help="Sampled architectures to add.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the sample (keep it apart from calibration's).")] = 1,
    space: SpaceOpt = "fbnetv2_f4",
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    protocol: ProtocolOpt = "standard",
    plot: Annotated[Path | None, typer.Option(help="Draw estimated vs measured latency to this PNG.")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure end-to-end runs calibration did not use and report the estimate's accuracy."""
    from latency.calibrate import family_archs, sampled_archs
    from latency.validate import validate as run_validation
    from profilers.devices import resolve_device

    backend = backend or resolve_device(device).default_backend
    archs = (family_archs(_split(models)) if models != "none" else []) + sampled_archs(random, seed, space)
    if not archs:
        raise LutError("Nothing to validate: give --models or --random.", exit_code=2)
    store = _open_store(db)
    with RichProgress(f"validating on {device}") as bar:
        report = run_validation(store, archs, device, backend, threads, batch, dtype, _protocol(protocol), bar)
    if plot is not None:
        from latency.report import plot_validation

        title = f"{device} / {backend}: " + ("calibrated" if report.calibrated else "uncalibrated") + " estimate"
        plot_validation(report.rows, report.metrics, title, plot)
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=f"estimate vs end-to-end runs on {device} ({backend})")
    for column in ("architecture", "estimated (ms)", "measured (ms)", "error", "calibration saw it"):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for row in report.rows:
        table.add_row(
            row["name"],
            f"{row['estimated_then_ms']:.3f}",
            f"{row['measured_ms']:.3f}",
            f"{row['error']:+.1%}",
            "yes" if row["in_calibration"] else "no",
        )
    console.print(table)
    m = report.metrics
    console.print(
        f"n={m['n']}  within 10%: {m['within_10pct']:.0%}  RMSPE {m['rmspe']:.1%}  MAPE {m['mape']:.1%}  "
        f"Kendall tau {m.get('kendall_tau', float('nan')):.3f}  Spearman rho {m.get('spearman_rho', float('nan')):.3f}"
    )
    plain = report.plain_metrics
    console.print(
        f"(each estimate stated at its run's speed, from the canary timed in the run's trials; at the table's "
        f"speed: within 10% {plain['within_10pct']:.0%}, RMSPE {plain['rmspe']:.1%}, "
        f"Kendall tau {plain.get('kendall_tau', float('nan')):.3f})"
    )
    if not report.calibrated:
        console.print(f"uncalibrated estimate: run `lut calibrate --device {device}` first")
    if plot is not None:
        console.print(f"plot: {plot}")


@app.command()
@user_errors
def rank(
    device: DeviceOpt = "cpu",
    devices: Annotated[str | None, typer.Option(help="Several devices, comma-separated (overrides --device).")] = None,
    budget_ms: Annotated[float | None, typer.Option(help="A latency budget: the best model under it.")] = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    no_profile: Annotated[bool, typer.Option("--no-profile", help="Never measure missing blocks.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Draw accuracy vs latency per device to this PNG.")] = None,
    protocol: ProtocolOpt = "standard",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The family ordered by estimated latency, with accuracy, Pareto front and the best under a budget."""
    from latency.calibrate import family_archs
    from latency.rank import rank_family

    names = _split(devices) or [device]
    if budget_ms is not None and budget_ms <= 0:
        raise LutError(f"--budget-ms must be positive, got {budget_ms:g}.", exit_code=2)
    archs = family_archs(["all"])
    estimators = {
        d: _ready_estimator(archs, d, backend, threads, batch, dtype, db, not no_profile, False, protocol)
        for d in names
    }
    ranking = rank_family(names, lambda d, n: estimators[d].estimate(n), budget_ms)
    if plot is not None:
        from latency.report import plot_ranking

        plot_ranking(ranking, plot)
    if as_json:
        print_json(ranking.to_dict())
        return
    table = Table(title="FBNetV2 family by estimated latency" + (f" (budget {budget_ms:g} ms)" if budget_ms else ""))
    for column in (
        "model",
        *(f"{d} (ms)" for d in names),
        *(f"rank {d}" for d in names if len(names) > 1),
        "FLOPs (M)",
        "params (M)",
        "top-1",
        "Pareto",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in ranking.rows:
        table.add_row(
            row.name,
            *(f"{row.latency_ms[d]:.3f}" for d in names),
            *(str(row.rank[d]) for d in names if len(names) > 1),
            f"{row.flops_m:.1f}",
            f"{row.params_m:.3f}",
            f"{row.top1:.1f}",
            ", ".join(d for d in names if row.pareto[d]) or "-",
        )
    console.print(table)
    for d in names:
        if not all(row.calibrated[d] for row in ranking.rows):
            console.print(f"{d}: uncalibrated estimates (run `lut calibrate --device {d}`)")
        if budget_ms is not None:
            best = ranking.best_under_budget(d)
            console.print(
                f"best under {budget_ms:g} ms on {d}: "
                + (f"{best.name} ({best.latency_ms[d]:.3f} ms, top-1 {best.top1:.1f})" if best else "none fits")
            )
    for change in ranking.rank_changes():
        console.print(f"rank change: {change['name']} " + ", ".join(f"{d} #{r}" for d, r in change["rank"].items()))
    if plot is not None:
        console.print(f"plot: {plot}")


@app.command()
@user_errors
def sample(
    n: Annotated[int, typer.Option("--n", min=1, help="How many architectures.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    out: Annotated[Path, typer.Option(help="Directory for the ARCH.json files.")] = Path("samples"),
    space: SpaceOpt = "fbnetv2_f4",
    as_json: JsonOpt = False,
) -> None:
    """Write architectures sampled uniformly from a search space as ARCH.json files."""
    from latency.space import get_space

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for arch in get_space(space).sampled_archs(n, seed):
        path = out / f"{arch.name}.json"
        path.write_text(arch.to_json())
        paths.append(str(path))
    if as_json:
        print_json({"space": space, "seed": seed, "files": paths})
    else:
        console.print(f"wrote {len(paths)} architectures of {space} to {out}/")


space_app = typer.Typer(help="Search spaces: options, size.", no_args_is_help=True)
app.add_typer(space_app, name="space")


@space_app.command("show")
@user_errors
def space_show(
    name: Annotated[str, typer.Argument(help="The space's name.")] = "fbnetv2_f4",
    as_json: JsonOpt = False,
) -> None:
    """Print a search space's blocks, width and resolution options, and its size."""
    from latency.models import get_arch
    from latency.space import get_space

    space = get_space(name)
    if as_json:
        print_json({**space.to_dict(), "grid_blocks": len(space.all_specs())})
        return
    console.print(f"[bold]{space.name}[/]: {space.about}", highlight=False)
    console.print(f"resolutions: {', '.join(map(str, space.resolutions))}")
    table = Table(title="blocks")
    for column in ("#", "op", "stride", "output width", "mid options"):
        table.add_column(column)
    for i, block in enumerate(space.blocks):
        out = f"{block.group}: {', '.join(map(str, space.widths(block.group)))}" if block.group else str(block.c_out)
        table.add_row(str(i), block.op, str(block.stride), out, ", ".join(map(str, block.mids or ())) or "-")
    console.print(table)
    f4 = space.point_of(get_arch("dmasking_f4"))
    console.print(
        f"{len(space.dimensions)} searched dimensions, {space.size:.3e} architectures, "
        f"{len(space.all_specs())} distinct block shapes; dmasking_f4 is "
        + (f"the point {space.point_name(f4)}" if f4 else "not a point of it")
    )


@app.command()
@user_errors
def search(
    target_ms: Annotated[float, typer.Option(help="The latency budget on the device (ms).")],
    device: DeviceOpt = "cpu",
    space: SpaceOpt = "fbnetv2_f4",
    epochs: Annotated[int, typer.Option(min=1, help="Search epochs on the proxy task.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of weights, data split and Gumbel noise.")] = 0,
    loss: Annotated[
        str, typer.Option(help="target: CE + w (log E[lat] - log T)^2; fbnet: CE * a * log(E[lat])^b.")
    ] = "target",
    out: Annotated[
        Path | None, typer.Option(help="Where to write the found ARCH.json [default: search-<T>ms.json].")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint to resume from [default: <out>.ckpt].")] = None,
    profile_budget_min: Annotated[
        float, typer.Option(min=0.0, help="Minutes to fill the space's table first, if it is not filled yet.")
    ] = 10.0,
    measure: Annotated[bool, typer.Option(help="Measure the found architecture end to end.")] = True,
    proxy_resolutions: Annotated[
        str, typer.Option(help="Proxy-task image sizes, one per resolution option of the space (comma-separated).")
    ] = "16,20,24,28",
    images: Annotated[int | None, typer.Option(min=50, help="Use only the first N digits (a smoke test).")] = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    protocol: ProtocolOpt = "standard",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run FBNetV2's channel/resolution search against the table's latency cost; write the result."""
    from latency.estimate import Estimator, MissingBlocksError
    from latency.space import get_space

    if not target_ms > 0:
        raise LutError(f"--target-ms must be a positive number of milliseconds, got {target_ms:g}.", exit_code=2)
    search_space = get_space(space)
    store = _open_store(db)
    estimator = Estimator(device, backend=backend, threads=threads, store=store)
    try:
        estimator.space_tables(search_space)
    except MissingBlocksError:
        from profilers.devices import is_local

        if not is_local(device):
            raise
        from latency.space_profile import profile_space

        err_console.print(f"the table does not cover {space} on {device} yet: filling it ({profile_budget_min:g} min)")
        with RichProgress(f"profiling {space}") as bar:
            filled = profile_space(
                search_space,
                store,
                device,
                estimator.backend,
                threads,
                1,
                "fp32",
                profile_budget_min,
                _protocol(protocol),
                bar,
            )
        if filled.interrupted:
            raise KeyboardInterrupt from None
        estimator.reload()
    from search_cost.cost import LatencyCost
    from search_cost.search import Search, SearchConfig

    cost = LatencyCost(search_space, estimator=estimator)
    smallest = search_space.arch(search_space.point_from_row([0] * len(search_space.dimensions)))
    fastest = estimator.estimate(smallest).latency_ms
    if target_ms < fastest:
        raise LutError(
            f"--target-ms {target_ms:g} is below the fastest architecture of {space} on {device} "
            f"({fastest:.3f} ms, every option at its smallest); no architecture can meet it.",
            exit_code=2,
        )
    out = out or Path(f"search-{target_ms:g}ms.json")
    checkpoint = checkpoint or out.with_suffix(out.suffix + ".ckpt")
    sizes = tuple(int(v) for v in _split(proxy_resolutions))
    if len(sizes) != len(search_space.resolutions) or min(sizes) < 1:
        raise LutError(
            f"--proxy-resolutions needs {len(search_space.resolutions)} positive sizes, one per resolution "
            f"option of {space}; got '{proxy_resolutions}'.",
            exit_code=2,
        )
    if loss not in ("target", "fbnet"):
        raise LutError(f"--loss must be target or fbnet, got '{loss}'.", exit_code=2)
    config = SearchConfig(
        target_ms=target_ms, epochs=epochs, seed=seed, loss=loss, proxy_resolutions=sizes, images=images
    )
    runner = Search(search_space, cost, config, checkpoint)
    if runner.resumed_at:
        err_console.print(f"resuming from {checkpoint} at epoch {runner.resumed_at}")

    def report(log: Any) -> None:
        err_console.print(
            f"epoch {log.epoch + 1:3d}/{epochs}  temperature {log.temperature:.3f}  proxy accuracy "
            f"{log.proxy_accuracy:6.1%}  expected latency {log.expected_latency_ms:8.3f} ms  ({log.seconds:.0f} s)",
            highlight=False,
            soft_wrap=True,  # one line per epoch in a log file too
        )

    result = runner.run(on_epoch=report)
    out.write_text(result.arch.to_json())
    estimated = estimator.estimate(result.arch).latency_ms
    measured = estimated_then = None
    if measure:
        from latency.profile import profile_archs

        with RichProgress(f"measuring {result.arch.name}") as bar:
            profile_archs(
                [result.arch],
                store,
                device,
                estimator.backend,
                threads,
                tag="search",
                protocol=_protocol(protocol),
                force=True,
                progress=bar,
            )
        runs = [
            r
            for r in store.e2e_runs(device, estimator.backend, tag="search", threads=threads)
            if r.arch_name == result.arch.name
        ]
        if runs:
            from latency.calibrate import at_run_speed

            measured = runs[-1].median_us / 1e3
            # The machine drifts as a whole: compare with the estimate at its speed during the run.
            estimated_then = at_run_speed(estimated, runs[-1], estimator.table_canary_us)
    payload = {
        "target_ms": target_ms,
        "estimated_ms": estimated,
        "measured_ms": measured,
        "estimated_then_ms": estimated_then,
        "expected_latency_ms": result.expected_latency_ms,
        "proxy_accuracy": result.proxy_accuracy,
        "projected": result.point != result.argmax,
        "arch": str(out),
        "calibrated": estimator.calibrated,
    }
    if as_json:
        print_json(payload)
        return
    console.print(
        f"wrote {out}: {sum(s.flops_m for s in result.arch.specs()):.1f} M FLOPs, proxy accuracy "
        f"{result.proxy_accuracy:.1%}" + (" (argmax projected onto the budget)" if payload["projected"] else "")
    )
    console.print(
        f"target {target_ms:.3f} ms | estimated {estimated:.3f} ms ({estimated / target_ms - 1:+.1%})"
        + (f" | measured {measured:.3f} ms ({measured / estimated - 1:+.1%} from the estimate)" if measured else "")
    )
    if measured and estimated_then:
        console.print(
            f"the machine ran at {estimated_then / estimated:.0%} of the table's time during the measurement "
            f"(canary): measured {measured / estimated_then - 1:+.1%} from the estimate at that speed "
            f"({estimated_then:.3f} ms)"
            + ("" if estimator.calibrated else "; uncalibrated: `lut calibrate` fits the block sum to end-to-end runs")
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
