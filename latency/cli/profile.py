"""`lut profile`: measure what the table lacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from latency.cli.common import (
    BACKEND_HELP,
    BatchOpt,
    DbOpt,
    DeployEnvOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ProtocolOpt,
    RichProgress,
    RunnerOpt,
    SerialOpt,
    ThreadsOpt,
    check_protocol,
    console,
    err_console,
    finite,
    open_store,
    parse_deploy_env,
    phone_options,
    print_json,
    split_items,
    user_errors,
)
from latency.vocab.blocks import BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DeployEnv
from latency.vocab.errors import LutError
from latency.vocab.family import expand_models, resolve_arch
from latency.vocab.space import get_space

if TYPE_CHECKING:
    from latency.jobs.measure import ProfileSummary
    from lut_db import LutStore

app = typer.Typer()


ProfileBackendOpt = Annotated[str | None, typer.Option("--backend", help=BACKEND_HELP)]
ModelsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated model names, or 'all' [default: all, unless --arch is given].")
]
ArchFilesOpt = Annotated[list[str] | None, typer.Option("--arch", help="An ARCH.json file (repeatable).")]
ForceOpt = Annotated[bool, typer.Option(help="Measure again blocks the table already has.")]
SpaceFillOpt = Annotated[
    str | None,
    typer.Option(
        "--space",
        help="Fill the table for a search space (a name or a space file NAME.json) instead: all corners, "
        "then adaptive samples until --budget-min is spent, the rest predicted.",
    ),
]
BudgetOpt = Annotated[
    float,
    typer.Option(
        min=0.0, callback=finite, help="Minutes of measuring for --space (the corners are always measured in full)."
    ),
]
QueueOpt = Annotated[
    bool,
    typer.Option(
        "--queue",
        help="Queue the missing blocks as jobs for the device farm's workers (`lut worker`) instead of "
        "measuring them here (with --space: its corners); needs a PostgreSQL table.",
    ),
]
JobSizeOpt = Annotated[
    int | None, typer.Option(min=1, help="Blocks per queued job [default: the protocol's group of blocks, 12].")
]
InContextOpt = Annotated[
    bool | None,
    typer.Option(
        "--in-context/--isolated",
        help="Time the blocks inside the whole networks asked for (with --space: networks of the space that "
        "hold the shapes to measure), run as --deploy-env runs them (a plain process by default): a network's "
        "blocks then sum to its time in that process; or each block alone, again and again. [default: in "
        "context where the backend runs a network block by block on this host (torch), alone elsewhere and "
        "for --queue]",
    ),
]


@app.command()
@user_errors
def profile(
    device: DeviceOpt = "cpu",
    backend: ProfileBackendOpt = None,
    models: ModelsOpt = None,
    arch: ArchFilesOpt = None,
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    force: ForceOpt = False,
    space: SpaceFillOpt = None,
    budget_min: BudgetOpt = 20.0,
    serial: SerialOpt = None,
    runner: RunnerOpt = None,
    protocol: ProtocolOpt = "standard",
    queue: QueueOpt = False,
    job_size: JobSizeOpt = None,
    in_context: InContextOpt = None,
    deploy_env: DeployEnvOpt = "default",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure every block of the models asked for that the table lacks, and store each at once."""
    from latency.jobs.measure import collect_specs, profile_blocks

    check_protocol(protocol)
    conditions = Conditions(device, backend, threads, batch, dtype)
    if queue and force:
        raise LutError("--queue queues what the table lacks; --force cannot go with it.", exit_code=2)
    if in_context and queue:
        raise LutError("--in-context times whole networks here: --queue sends blocks to the farm alone.", exit_code=2)
    if in_context is None:
        from latency.jobs.in_context import times_in_context

        in_context = not queue and times_in_context(conditions)
    if deploy_env != "default" and not in_context:
        raise LutError("--deploy-env applies to blocks timed inside networks: drop --isolated.", exit_code=2)
    if queue and space is not None:  # the corners, which a space fill always measures in full
        from latency.jobs.space_fill import corner_specs

        _queue(corner_specs(get_space(space), batch, dtype), conditions, protocol, job_size, db, as_json)
        return
    if space is not None:
        env = parse_deploy_env(deploy_env)
        phone = phone_options(serial, runner)
        _profile_space(space, conditions, budget_min, protocol, db, as_json, phone, in_context, env)
        return
    model_names = split_items(models, "--models") or ([] if arch else ["all"])
    specs = collect_specs(model_names, arch or [], batch=batch, dtype=dtype)
    if queue:
        _queue(specs, conditions, protocol, job_size, db, as_json)
        return
    store = open_store(db)
    with RichProgress(f"profiling on {device}") as bar:
        if in_context:
            from latency.jobs.in_context import profile_in_context

            networks = [resolve_arch(source) for source in [*expand_models(model_names), *(arch or [])]]
            env = parse_deploy_env(deploy_env)
            summary = profile_in_context(networks, store, conditions, protocol, env, force, progress=bar)
        else:
            summary = profile_blocks(
                specs,
                store,
                conditions,
                protocol,
                force,
                progress=bar,
                device_options=phone_options(serial, runner),
            )
    if as_json:
        print_json({**summary.to_dict(), "db": str(store.url)})
    else:
        _print_summary(summary, store)
    if summary.interrupted:
        err_console.print("interrupted: what was measured is stored; run the same command again to finish.")
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(summary: ProfileSummary, store: LutStore) -> None:
    console.print(
        f"{summary.requested} blocks asked for on {summary.device} ({summary.backend} "
        f"{summary.backend_version}, {summary.threads} thread(s)): {summary.measured} measured, "
        f"{summary.already_present} already in the table, {len(summary.unstable)} unstable after "
        f"re-measurement, {len(summary.failed)} failed; {summary.seconds:.1f} s."
    )
    console.print(f"table: {store.url}", highlight=False)
    for key, error in summary.failed.items():
        err_console.print(f"failed: {key}: {error}", highlight=False, soft_wrap=True)


def _queue(
    specs: list[BlockSpec], conditions: Conditions, protocol: str, job_size: int | None, db: str | None, as_json: bool
) -> None:
    from latency.jobs.farm import enqueue_blocks

    store = open_store(db)
    summary = enqueue_blocks(store, conditions, specs, protocol, job_size)
    if as_json:
        print_json({**summary.to_dict(), "db": str(store.url)})
        return
    console.print(
        f"{summary.requested} blocks asked for on {summary.device} ({summary.backend}, {summary.threads} thread(s)): "
        f"{summary.queued_blocks} queued in {len(summary.jobs)} job(s), {summary.already_present} already in the "
        f"table, {summary.already_queued} already queued; `lut worker --device {summary.device}` measures them."
    )


def _profile_space(
    name: str,
    conditions: Conditions,
    budget_min: float,
    protocol: str,
    db: str | None,
    as_json: bool,
    device_options: dict[str, str | None] | None,
    in_context: bool,
    deploy_env: DeployEnv,
) -> None:
    from latency.jobs.space_fill import profile_space

    search_space = get_space(name)
    store = open_store(db)
    with RichProgress(f"profiling {name} on {conditions.device}") as bar:
        summary = profile_space(
            search_space,
            store,
            conditions,
            budget_min,
            protocol,
            bar,
            device_options=device_options,
            deploy_env=deploy_env,
            in_context=in_context,
        )
    if as_json:
        print_json({**summary.to_dict(), "db": str(store.url)})
    else:
        p = summary.predictor
        how = f"timed inside {summary.networks} networks of the space" if summary.in_context else "timed alone"
        console.print(
            f"{name} on {conditions.device} ({summary.backend}): {summary.grid} block shapes; "
            f"{summary.measured_before} measured before, {summary.measured_now} measured now ({how}; "
            f"{summary.rounds} adaptive rounds), {summary.predicted} predicted; {summary.seconds / 60:.1f} min."
        )
        if p:
            console.print(
                f"predictor, 5-fold CV on {p['cv_blocks']} measured blocks: median error {p['cv_median_error']:.1%}, "
                f"p90 {p['cv_p90_error']:.1%}, within 10%: {p['cv_within_10pct']:.0%}"
            )
    if summary.interrupted:
        raise KeyboardInterrupt
