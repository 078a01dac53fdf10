"""`lut time`: a network timed end to end as the deployment runs it, beside the table's estimate."""

from __future__ import annotations

from typing import Annotated

import typer

from latency.cli.common import (
    BackendOpt,
    BatchOpt,
    DbOpt,
    DeployEnvOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ProtocolOpt,
    RichProgress,
    ThreadsOpt,
    check_protocol,
    console,
    open_store,
    parse_deploy_env,
    print_json,
    user_errors,
)
from latency.vocab.conditions import Conditions
from latency.vocab.family import resolve_arch

app = typer.Typer()

app = typer.Typer()


@app.command("time")
@user_errors
def time_command(
    model: Annotated[str, typer.Argument(help="A model name or an ARCH.json file.")],
    device: DeviceOpt = "cpu",
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    batch: BatchOpt = 1,
    dtype: DtypeOpt = "fp32",
    no_profile: Annotated[
        bool, typer.Option("--no-profile", help="Never measure missing blocks (then no estimate).")
    ] = False,
    protocol: ProtocolOpt = "standard",
    deploy_env: DeployEnvOpt = "default",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Time a network end to end as your own process runs it, beside lut's estimate and their difference."""
    from latency.jobs.timing import time_network

    arch = resolve_arch(model)
    env = parse_deploy_env(deploy_env)
    store = open_store(db)
    with RichProgress(f"timing {arch.name} on {device}") as bar:
        conditions = Conditions(device, backend, threads, batch, dtype)
        report = time_network(store, arch, conditions, check_protocol(protocol), bar, env, not no_profile)
    if as_json:
        print_json(report.to_dict())
        return
    console.print(
        f"{report.name} on {report.device} ({report.backend}, {report.threads} thread(s), batch "
        f"{report.batch}, {report.dtype}, deployment '{report.deploy_env}'): measured {report.measured_ms:.3f} ms"
        f" (median of {report.trials} fresh processes; IQR {report.iqr_ms:.3f} ms, p10-p90 "
        f"{report.p10_ms:.3f}-{report.p90_ms:.3f} ms, {report.calls} calls)"
        + ("" if report.stable else "; unstable: the machine was noisy")
    )
    if report.estimated_ms is None or report.estimated_then_ms is None:
        console.print(f"no estimate: {report.estimate_note}; run `lut estimate {model} --device {device}`")
        return
    state = "calibrated" if report.calibrated else "uncalibrated"
    console.print(
        f"lut estimate ({state}): {report.estimated_ms:.3f} ms; measured {report.difference:+.1%} from it (restated "
        f"at the machine's speed during this run, from its canary: {report.estimated_then_ms:.3f} ms, measured "
        f"{report.difference_at_run_speed:+.1%} from that)"
    )
    if report.blocks_timed_inside_it:
        console.print(
            f"{report.blocks_timed_inside_it} of its blocks were timed inside this network (blocks in context): the "
            "estimate holds its own earlier time, so this checks the machine's steadiness more than the estimator; "
            "`lut validate` reports networks the table never ran"
        )
