"""`lut search`: the channel/resolution DNAS against a latency target."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from latency.cli.common import (
    BackendOpt,
    DbOpt,
    DeployEnvOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ProtocolOpt,
    RichProgress,
    SpaceOpt,
    ThreadsOpt,
    check_protocol,
    check_writable,
    console,
    err_console,
    finite,
    open_store,
    parse_deploy_env,
    print_json,
    split_items,
    user_errors,
)
from latency.vocab.conditions import Conditions
from latency.vocab.errors import LutError
from latency.vocab.space import get_space
from profilers.devices import with_backend

app = typer.Typer()


TargetMsOpt = Annotated[float, typer.Option(callback=finite, help="The latency budget on the device (ms).")]
EpochsOpt = Annotated[int, typer.Option(min=1, help="Search epochs on the proxy task.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of weights, data split and Gumbel noise.")]
LossOpt = Annotated[str, typer.Option(help="target: CE + w (log E[lat] - log T)^2; fbnet: CE * a * log(E[lat])^b.")]
OutOpt = Annotated[Path | None, typer.Option(help="Where to write the found ARCH.json [default: search-<T>ms.json].")]
CheckpointOpt = Annotated[Path | None, typer.Option(help="Checkpoint to resume from [default: <out>.ckpt].")]
ProfileBudgetOpt = Annotated[
    float,
    typer.Option(min=0.0, callback=finite, help="Minutes to fill the space's table first, if it is not filled yet."),
]
MeasureOpt = Annotated[bool, typer.Option(help="Measure the found architecture end to end.")]
ProxyResolutionsOpt = Annotated[
    str | None,
    typer.Option(
        help="Proxy-task image sizes, one per resolution option of the space (comma-separated) "
        "[default: the space's resolutions with --data, else 16,20,24,... one per option]."
    ),
]
ImagesOpt = Annotated[int | None, typer.Option(min=50, help="Use only the first N digits (a smoke test).")]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        help="An image folder to search on (train/<class>/*.jpg, val/<class>/*.jpg; without val/ a seeded fifth "
        "of train/ is held out) [default: scikit-learn's digits]."
    ),
]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Images per step (weights and architecture).")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        min=0, max=64, help="Processes loading the image folder's images [default: 4, or fewer on fewer CPUs]."
    ),
]
TrainDeviceOpt = Annotated[
    str | None,
    typer.Option(help="Where the supernet trains: cpu, cuda or cuda:N (mixed precision) [default: cuda if any]."),
]
MixedPrecisionOpt = Annotated[
    bool, typer.Option(help="bfloat16 autocast for the supernet on a GPU (the CPU trains in float32).")
]


@app.command()
@user_errors
def search(
    target_ms: TargetMsOpt,
    device: DeviceOpt = "cpu",
    space: SpaceOpt = "fbnetv2_f4",
    epochs: EpochsOpt = 16,
    seed: SeedOpt = 0,
    loss: LossOpt = "target",
    out: OutOpt = None,
    checkpoint: CheckpointOpt = None,
    profile_budget_min: ProfileBudgetOpt = 10.0,
    measure: MeasureOpt = True,
    proxy_resolutions: ProxyResolutionsOpt = None,
    images: ImagesOpt = None,
    data: DataOpt = None,
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = None,
    train_device: TrainDeviceOpt = None,
    mixed_precision: MixedPrecisionOpt = True,
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    dtype: DtypeOpt = "fp32",
    protocol: ProtocolOpt = "standard",
    deploy_env: DeployEnvOpt = "default",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run FBNetV2's channel/resolution search against the table's latency cost; write the result."""
    from latency.jobs.search import SearchRequest, run_search
    from search_cost.data import scan_folder
    from search_cost.search import SearchConfig, check_checkpoint, default_proxy_resolutions, pick_train_device

    # Every option is checked here, before minutes of filling the table or training.
    conditions = with_backend(Conditions(device, backend, threads, dtype=dtype))
    search_space = get_space(space)
    count = len(search_space.resolutions)
    # On the user's images the search trains at the space's own resolutions; the digits are upsampled 8x8.
    sizes = tuple(search_space.resolutions) if data is not None else default_proxy_resolutions(count)
    if proxy_resolutions is not None:
        sizes = _proxy_sizes(proxy_resolutions, count, space)
    out = out or Path(f"search-{target_ms:g}ms.json")
    checkpoint = checkpoint or out.with_suffix(out.suffix + ".ckpt")
    check_writable(out, "--out")
    check_writable(checkpoint, "--checkpoint")
    if checkpoint.exists():
        check_checkpoint(checkpoint)  # a file that is no checkpoint is found now, not after the fill
    if data is not None:
        scan_folder(data, seed)  # a folder the search cannot use is refused now, in one sentence
    try:
        config = SearchConfig(
            target_ms=target_ms,
            epochs=epochs,
            seed=seed,
            loss=loss,
            proxy_resolutions=sizes,
            images=images,
            batch=batch_size,
            data=None if data is None else str(data),
            workers=min(4, os.cpu_count() or 1) if workers is None else workers,
            train_device=pick_train_device(train_device),
            mixed_precision=mixed_precision,
        )
    except ValueError as exc:
        raise LutError(f"{exc}.", exit_code=2) from None
    request = SearchRequest(
        space=search_space,
        config=config,
        out=out,
        checkpoint=checkpoint,
        conditions=conditions,
        profile_budget_min=profile_budget_min,
        measure=measure,
        protocol=check_protocol(protocol),
        deploy_env=parse_deploy_env(deploy_env),
    )
    found = run_search(request, open_store(db), RichProgress, _say, _epoch_line(epochs))
    if found is None:  # another process of a torchrun search: the first one reports
        return
    if as_json:
        print_json(found.to_dict())
        return
    _print_found(found, out, target_ms)


def _say(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)  # a path stays whole, in a log file too


def _epoch_line(epochs: int) -> Callable[[Any], None]:
    def report(log: Any) -> None:
        err_console.print(
            f"epoch {log.epoch + 1:3d}/{epochs}  temperature {log.temperature:.3f}  proxy accuracy "
            f"{log.proxy_accuracy:6.1%}  expected latency {log.expected_latency_ms:8.3f} ms  ({log.seconds:.0f} s, "
            f"{log.images_per_s:.0f} images/s)",
            highlight=False,
            soft_wrap=True,  # one line per epoch in a log file too
        )

    return report


def _print_found(found: Any, out: Path, target_ms: float) -> None:
    """The search's result for a reader: what was written, and the target against estimate and measurement."""
    estimated, measured, estimated_then = found.estimated_ms, found.measured_ms, found.estimated_then_ms
    console.print(
        f"wrote {out}: {found.flops_m:.1f} M FLOPs, proxy accuracy "
        f"{found.proxy_accuracy:.1%}" + (" (argmax projected onto the budget)" if found.projected else "")
    )
    console.print(
        f"target {target_ms:.3f} ms | estimated {estimated:.3f} ms ({estimated / target_ms - 1:+.1%})"
        + (
            f" | measured {measured:.3f} ms ({measured / target_ms - 1:+.1%} from the target, "
            f"{measured / estimated - 1:+.1%} from the estimate)"
            if measured
            else ""
        )
    )
    if measured and estimated_then:
        console.print(
            f"(beside it: the machine ran at {estimated_then / estimated:.0%} of the table's time during the "
            f"measurement, by its canary; measured {measured / estimated_then - 1:+.1%} from the estimate at that "
            f"speed, {estimated_then:.3f} ms)"
            + ("" if found.calibrated else "; uncalibrated: `lut calibrate` fits the block sum to end-to-end runs")
        )


def _proxy_sizes(text: str, count: int, space: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in split_items(text, "--proxy-resolutions"))
    except ValueError:
        sizes = ()
    if len(sizes) != count:
        raise LutError(
            f"--proxy-resolutions needs {count} whole numbers (pixels), one per resolution option of {space}; "
            f"got '{text}'.",
            exit_code=2,
        )
    return sizes
