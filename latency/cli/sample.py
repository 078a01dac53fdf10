"""`lut sample`: architectures drawn from a search space, as ARCH.json files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latency.cli.common import (
    JsonOpt,
    SpaceOpt,
    console,
    print_json,
    user_errors,
)
from latency.vocab.space import get_space

app = typer.Typer()


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
