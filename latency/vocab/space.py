"""DMasking search spaces as data: per width group a set of output widths, per ir block a set of
mid (expansion) widths, and a set of input resolutions; block types, kernels, SE and activations
are fixed per block (latency/vocab/spaces/*.json).

A point of the space is one choice index per searched dimension. Every block's shape is then a
function of at most four choices (its input width, its mid width, its output width and the
resolution), which is what makes the expected latency exact and cheap (search_cost).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from latency.vocab.arch import OPS, Arch, LayerDef, head_width, se_width
from latency.vocab.blocks import BlockSpec
from latency.vocab.errors import LutError

STEM_IN_CHANNELS = 3


class SpaceError(LutError):
    exit_code = 2


@dataclass(frozen=True)
class SpaceBlock:
    """One block position: its op and stride, which width group sets its output (or a fixed
    width), and its mid-width options (ir blocks)."""

    op: str
    stride: int
    group: str | None
    c_out: int | None
    mids: tuple[int, ...] | None


@dataclass(frozen=True)
class Position:
    """How one block's shape depends on the choices: indices into the point's dimensions, or None
    where the block does not depend on them (a fixed width, or no mid)."""

    index: int
    in_group: str | None
    mid_dim: int | None  # index among the searched mid dimensions
    out_group: str | None


@dataclass(frozen=True)
class SpacePoint:
    """Choice indices: resolution, one width per group (in group order), one mid per ir block."""

    resolution: int
    widths: tuple[int, ...]
    mids: tuple[int, ...]

    @property
    def row(self) -> tuple[int, ...]:
        """The flat choice row, ordered as `Space.dimensions`; `Space.point_from_row` is its inverse."""
        return (self.resolution, *self.widths, *self.mids)


@dataclass(frozen=True)
class Space:
    name: str
    about: str
    resolutions: tuple[int, ...]
    width_groups: tuple[tuple[str, tuple[int, ...]], ...]
    blocks: tuple[SpaceBlock, ...]
    width_divisor: int = 8

    # ---- structure ------------------------------------------------------------------------
    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.width_groups)

    def widths(self, group: str) -> tuple[int, ...]:
        return dict(self.width_groups)[group]

    @property
    def mid_blocks(self) -> tuple[int, ...]:
        """Block indices with searched mid widths, in order."""
        return tuple(i for i, b in enumerate(self.blocks) if b.mids is not None)

    @property
    def dimensions(self) -> list[tuple[str, int]]:
        """(name, number of options) of every searched dimension, in point order."""
        dims = [("resolution", len(self.resolutions))]
        dims += [(f"width:{g}", len(w)) for g, w in self.width_groups]
        dims += [(f"mid:{i}", len(self.blocks[i].mids or ())) for i in self.mid_blocks]
        return dims

    @property
    def size(self) -> int:
        return int(np.prod([n for _, n in self.dimensions], dtype=object))

    @property
    def positions(self) -> list[Position]:
        positions = []
        previous: str | None = None
        mid_dims = {block: d for d, block in enumerate(self.mid_blocks)}
        for i, block in enumerate(self.blocks):
            positions.append(Position(i, previous, mid_dims.get(i), block.group))
            previous = block.group
        return positions

    # ---- points -> architectures ----------------------------------------------------------
    def widths_of(self, point: SpacePoint) -> dict[str, int]:
        return {g: self.widths(g)[point.widths[k]] for k, g in enumerate(self.groups)}

    def arch(self, point: SpacePoint, name: str | None = None) -> Arch:
        self._check_point(point)
        widths = self.widths_of(point)
        mids = {b: self.blocks[b].mids[point.mids[d]] for d, b in enumerate(self.mid_blocks)}  # type: ignore[index]
        layers = []
        c_in = STEM_IN_CHANNELS
        for i, block in enumerate(self.blocks):
            c_out = widths[block.group] if block.group else block.c_out
            assert c_out is not None
            mid = mids.get(i)
            kind = OPS[block.op].kind
            if kind == "head":
                mid = head_width(c_in, self.width_divisor)
            se = se_width(mid, self.width_divisor) if OPS[block.op].se and mid else 0
            layers.append(LayerDef(op=block.op, c_out=c_out, stride=block.stride, mid=mid, se=se))
            c_in = c_out
        return Arch(
            name=name or self.point_name(point),
            resolution=self.resolutions[point.resolution],
            layers=tuple(layers),
            width_divisor=self.width_divisor,
        )

    def point_name(self, point: SpacePoint) -> str:
        return f"{self.name}-r{point.resolution}-w{''.join(map(str, point.widths))}-m{''.join(map(str, point.mids))}"

    def point_of(self, arch: Arch) -> SpacePoint | None:
        """The point whose architecture equals `arch` (names aside), or None when outside the space."""
        if len(arch.layers) != len(self.blocks) or arch.resolution not in self.resolutions:
            return None
        widths, mids = [], []
        for group in self.groups:
            outs = {arch.layers[i].c_out for i, b in enumerate(self.blocks) if b.group == group}
            if len(outs) != 1 or (width := outs.pop()) not in self.widths(group):
                return None
            widths.append(self.widths(group).index(width))
        for i in self.mid_blocks:
            options = self.blocks[i].mids or ()
            if arch.layers[i].mid not in options:
                return None
            mids.append(options.index(arch.layers[i].mid))
        point = SpacePoint(self.resolutions.index(arch.resolution), tuple(widths), tuple(mids))
        candidate = self.arch(point, name=arch.name)
        same = candidate.layers == arch.layers and candidate.in_channels == arch.in_channels
        return point if same and candidate.conv_bias == arch.conv_bias else None

    def _check_point(self, point: SpacePoint) -> None:
        counts = [n for _, n in self.dimensions]
        values = point.row
        if len(values) != len(counts) or any(not 0 <= v < n for v, n in zip(values, counts, strict=True)):
            raise SpaceError(f"{point} is not a point of space '{self.name}' (dimensions: {counts}).")

    # ---- sampling ---------------------------------------------------------------------------
    def sample_indices(self, n: int, seed: int) -> np.ndarray:
        """An (n, dimensions) int array of uniform random choices."""
        rng = np.random.default_rng(seed)
        return np.stack([rng.integers(0, k, size=n) for _, k in self.dimensions], axis=1)

    def point_from_row(self, row: Sequence[int] | np.ndarray) -> SpacePoint:
        """The point of a flat choice row (ordered as `dimensions`); `SpacePoint.row` is its inverse."""
        g, m = len(self.groups), len(self.mid_blocks)
        values = [int(v) for v in row]
        return SpacePoint(values[0], tuple(values[1 : 1 + g]), tuple(values[1 + g : 1 + g + m]))

    def sample(self, n: int, seed: int = 0) -> list[SpacePoint]:
        return [self.point_from_row(row) for row in self.sample_indices(n, seed)]

    def sampled_archs(self, n: int, seed: int = 0) -> list[Arch]:
        """`n` uniform samples as architectures named `{space}-s{seed}-{i:04d}`."""
        return [self.arch(p, name=f"{self.name}-s{seed}-{i:04d}") for i, p in enumerate(self.sample(n, seed))]

    # ---- the grid of block shapes -----------------------------------------------------------
    def position_specs(self, position: Position, batch: int = 1, dtype: str = "fp32") -> np.ndarray:
        """Every shape the block at `position` can take, as an object array indexed
        [input width, mid, output width, resolution] (size-1 axes where it does not vary)."""
        block = self.blocks[position.index]
        ins = self.widths(position.in_group) if position.in_group else (STEM_IN_CHANNELS,)
        if position.index > 0 and position.in_group is None:
            ins = (self.blocks[position.index - 1].c_out,)  # type: ignore[assignment]
        mids = block.mids if block.mids is not None else (None,)
        outs = self.widths(block.group) if block.group else (block.c_out,)
        table = np.empty((len(ins), len(mids), len(outs), len(self.resolutions)), dtype=object)
        for (a, c_in), (m, mid), (b, c_out), (r, _) in itertools.product(
            enumerate(ins), enumerate(mids), enumerate(outs), enumerate(self.resolutions)
        ):
            table[a, m, b, r] = self._spec_at(position.index, c_in, mid, c_out, r, batch, dtype)
        return table

    def _spec_at(
        self, index: int, c_in: int, mid: int | None, c_out: int, resolution_index: int, batch: int, dtype: str
    ) -> BlockSpec:
        # Build a one-off point with these widths to reuse Arch's shape propagation.
        point = self._any_point_with(index, c_in, mid, c_out, resolution_index)
        return self.arch(point).specs(batch=batch, dtype=dtype)[index]

    def _any_point_with(self, index: int, c_in: int, mid: int | None, c_out: int, resolution_index: int) -> SpacePoint:
        widths = [0] * len(self.groups)
        mids = [0] * len(self.mid_blocks)
        position = self.positions[index]
        if position.in_group is not None:
            widths[self.groups.index(position.in_group)] = self.widths(position.in_group).index(c_in)
        if position.out_group is not None:
            widths[self.groups.index(position.out_group)] = self.widths(position.out_group).index(c_out)
        if position.mid_dim is not None:
            mids[position.mid_dim] = (self.blocks[index].mids or ()).index(mid)
        return SpacePoint(resolution_index, tuple(widths), tuple(mids))

    def realizations(self, batch: int = 1, dtype: str = "fp32") -> dict[str, list[dict[int, int]]]:
        """Every block shape some architecture of the space holds, by key: for each position it can take, the
        choices that put it there (dimension, as in `dimensions`, -> option index). Shapes of the grid that no
        architecture holds (a block whose input and output widths are one group's, at two different widths)
        have none."""
        found: dict[str, list[dict[int, int]]] = {}
        groups = len(self.groups)
        for position in self.positions:
            for (a, m, b, r), spec in np.ndenumerate(self.position_specs(position, batch, dtype)):
                choices = {0: r}
                if position.mid_dim is not None:
                    choices[1 + groups + position.mid_dim] = m
                if position.out_group is not None:
                    choices[1 + self.groups.index(position.out_group)] = b
                if position.in_group is not None:
                    dimension = 1 + self.groups.index(position.in_group)
                    if choices.setdefault(dimension, a) != a:
                        continue
                found.setdefault(spec.key, []).append(choices)
        return found

    def points_holding(self, keys: set[str], batch: int = 1, dtype: str = "fp32", seed: int = 0) -> list[SpacePoint]:
        """A few points whose architectures together hold every shape of `keys` that the space's architectures
        hold (blocks timed in context need networks that hold them): each shape joins the first point whose
        choices so far allow it, else starts one; choices no shape fixed are drawn with `seed`."""
        ways = self.realizations(batch, dtype)
        partial: list[dict[int, int]] = []
        for key in sorted(k for k in keys if k in ways):
            fits = (
                (point, choices)
                for choices in ways[key]
                for point in partial
                if all(point.get(d, v) == v for d, v in choices.items())
            )
            match = next(fits, None)
            if match is None:
                partial.append(dict(ways[key][0]))
            else:
                match[0].update(match[1])
        rng = np.random.default_rng(seed)
        counts = [n for _, n in self.dimensions]
        return [
            self.point_from_row([point[d] if d in point else int(rng.integers(n)) for d, n in enumerate(counts)])
            for point in partial
        ]

    def all_specs(self, batch: int = 1, dtype: str = "fp32") -> list[BlockSpec]:
        """Every distinct block shape of the space (the full grid), in position order."""
        unique: dict[str, BlockSpec] = {}
        for position in self.positions:
            for spec in self.position_specs(position, batch, dtype).flat:
                unique.setdefault(spec.key, spec)
        return list(unique.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "about": self.about,
            "resolutions": list(self.resolutions),
            "widths": {g: list(w) for g, w in self.width_groups},
            "blocks": [
                {
                    k: v
                    for k, v in (
                        ("op", b.op),
                        ("stride", b.stride),
                        ("c_out", b.group or b.c_out),
                        ("mid", list(b.mids) if b.mids else None),
                    )
                    if v is not None
                }
                for b in self.blocks
            ],
            "dimensions": dict(self.dimensions),
            "size": self.size,
        }


def _parse_space(data: dict[str, Any], source: str) -> Space:
    def fail(why: str) -> SpaceError:
        return SpaceError(f"{source}: {why}.")

    if not isinstance(data, dict):
        raise fail("a search space is a JSON object (see latency/vocab/spaces/*.json)")
    widths = data.get("widths")
    if not isinstance(widths, dict) or not widths:
        raise fail("'widths' must map group names to lists of widths")
    blocks = []
    for i, raw in enumerate(data.get("blocks", [])):
        op = raw.get("op")
        if op not in OPS:
            raise fail(f"blocks[{i}].op '{op}' is not a known op")
        c_out = raw.get("c_out")
        group = c_out if isinstance(c_out, str) else None
        if group is not None and group not in widths:
            raise fail(f"blocks[{i}].c_out names an unknown width group '{group}'")
        mids = raw.get("mid")
        blocks.append(
            SpaceBlock(
                op=op,
                stride=int(raw.get("stride", 1)),
                group=group,
                c_out=None if group else int(c_out),
                mids=tuple(mids) if mids else None,
            )
        )
    return Space(
        name=data["name"],
        about=data.get("about", ""),
        resolutions=tuple(data["resolutions"]),
        width_groups=tuple((g, tuple(w)) for g, w in widths.items()),
        blocks=tuple(blocks),
        width_divisor=int(data.get("width_divisor", 8)),
    )


_SPACES = resources.files("latency.vocab") / "spaces"


def list_spaces() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in _SPACES.iterdir() if p.name.endswith(".json"))


@cache
def get_space(name: str = "fbnetv2_f4") -> Space:
    """A shipped space by name, or a space file of your own (a path ending in .json, same format)."""
    if name.endswith(".json"):
        path = Path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpaceError(f"{path}: cannot read a search space from it ({exc}).") from None
        return _parse_space(data, str(path))
    if name not in list_spaces():
        raise SpaceError(
            f"Unknown search space '{name}'; known spaces: {', '.join(list_spaces())} (or a space file, NAME.json)."
        )
    return _parse_space(json.loads((_SPACES / f"{name}.json").read_text()), f"{name}.json")
