"""Architectures as plain data: a resolution and the list of blocks from stem to classifier.

The same format serves the packaged family (latency/vocab/archs/*.json), the user's ARCH.json
files and the search space's samples. `Arch.specs()` propagates shapes and yields BlockSpecs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latency.vocab.blocks import BlockSpec, BlockSpecError
from latency.vocab.errors import LutError


class ArchError(LutError):
    """A malformed architecture definition; the message names the file and the field."""


@dataclass(frozen=True)
class OpDef:
    """What an op name builds (mobile-vision's op-name registry, as data)."""

    kind: str
    kernel: int
    act: str
    se: bool = False


def _op_registry() -> dict[str, OpDef]:
    ops = {
        "conv_k3": OpDef("stem", 3, "relu"),
        "conv_k3_hs": OpDef("stem", 3, "hswish"),
        "skip": OpDef("skip", 1, "relu"),
        "ir_pool_hs": OpDef("head", 1, "hswish"),
        "fc": OpDef("classifier", 1, "none"),
    }
    for kernel in (3, 5, 7):
        for se in (False, True):
            for act in ("relu", "hswish"):
                name = f"ir_k{kernel}" + ("_sehsig" if se else "") + ("_hs" if act == "hswish" else "")
                ops[name] = OpDef("ir", kernel, act, se)
    return ops


OPS: dict[str, OpDef] = _op_registry()
KIND_TO_DEFAULT_OP = {"stem": "conv_k3_hs", "skip": "skip", "head": "ir_pool_hs", "classifier": "fc"}

ARCH_BLOCK_FIELDS = ("op", "c_out", "stride", "mid", "expansion", "se")
MAX_EXPANSION = 64  # far beyond any mobile block (FBNetV2 uses up to 6)
ARCH_FIELDS = ("name", "resolution", "in_channels", "width_divisor", "conv_bias", "dropout", "blocks")
HEAD_EXPANSION = 6
SE_RATIO = 0.25


def head_width(c_in: int, divisor: int) -> int:
    """FBNet's head: a 1x1 conv to HEAD_EXPANSION times its input width."""
    return make_divisible(c_in * HEAD_EXPANSION, divisor)


def se_width(mid: int, divisor: int) -> int:
    """Squeeze-excitation's hidden width: SE_RATIO of the block's mid width."""
    return make_divisible(int(SE_RATIO * mid), divisor)


def make_divisible(value: float, divisor: int) -> int:
    """mobile-vision's channel rounding: nearest multiple of `divisor` (halves up), at least
    `divisor`, plus one `divisor` when rounding lost more than 5%."""
    rounded = max(divisor, int(value / divisor + 0.5) * divisor)
    if rounded < 0.95 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class LayerDef:
    """One block of an architecture, with every width resolved."""

    op: str
    c_out: int
    stride: int = 1
    mid: int | None = None
    se: int = 0

    @property
    def opdef(self) -> OpDef:
        return OPS[self.op]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "c_out": self.c_out, "stride": self.stride}
        if self.mid is not None:
            out["mid"] = self.mid
        if self.se:
            out["se"] = self.se
        return out


@dataclass(frozen=True)
class Arch:
    """A whole network: input resolution and blocks. Hashable, so it can key caches."""

    name: str
    resolution: int
    layers: tuple[LayerDef, ...]
    in_channels: int = 3
    width_divisor: int = 8
    conv_bias: bool = False
    dropout: float = 0.0

    def specs(self, batch: int = 1, dtype: str = "fp32") -> list[BlockSpec]:
        specs: list[BlockSpec] = []
        c_in, size = self.in_channels, self.resolution
        for layer in self.layers:
            op = layer.opdef
            mid = layer.mid if op.kind in ("ir", "head") else layer.c_out
            spec = BlockSpec(
                kind=op.kind,
                c_in=c_in,
                mid=mid,
                c_out=layer.c_out,
                kernel=op.kernel,
                stride=layer.stride,
                se=layer.se,
                act=op.act,
                h=size,
                w=size,
                batch=batch,
                dtype=dtype,
                bias=self.conv_bias and op.kind in ("ir", "head"),
            )
            specs.append(spec)
            c_in, size = spec.c_out, spec.out_h
        return specs

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "in_channels": self.in_channels,
            "width_divisor": self.width_divisor,
            "conv_bias": self.conv_bias,
            "dropout": self.dropout,
            "blocks": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self) -> str:
        blocks = ",\n".join("    " + json.dumps(b) for b in self.to_dict()["blocks"])
        head = {k: v for k, v in self.to_dict().items() if k != "blocks"}
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
        return "{\n" + "\n".join(lines) + '\n  "blocks": [\n' + blocks + "\n  ]\n}\n"

    @property
    def block_stages(self) -> list[tuple[int, int]]:
        """(stage, index in stage) of every block but the classifier, as mobile-vision names them
        (`xif{stage}_{index}`): the stem is stage 0, each stride-2 block opens a stage, the head is
        a stage of its own."""
        positions: list[tuple[int, int]] = []
        stage, index = 0, 0
        for i, layer in enumerate(self.layers):
            kind = layer.opdef.kind
            if kind == "classifier":
                break
            if kind == "stem":
                stage, index = 0, 0
            elif i == 1 or kind == "head" or layer.stride == 2:
                stage, index = stage + 1, 0
            positions.append((stage, index))
            index += 1
        return positions

    @classmethod
    def from_dict(cls, data: Any, source: str = "architecture") -> Arch:
        return _parse(data, source)

    @classmethod
    def from_json(cls, path: str | Path) -> Arch:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ArchError(f"Cannot read architecture file {path}: {exc.strerror or exc}.") from None
        except UnicodeDecodeError as exc:
            raise ArchError(f"{path} is not a UTF-8 text file ({exc.reason} at byte {exc.start}).") from None
        return cls.from_json_text(text, str(path), default_name=path.stem)

    @classmethod
    def from_json_text(cls, text: str, source: str, default_name: str = "arch") -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None
        except RecursionError:
            raise ArchError(f"{source}: nested too deeply to be an architecture.") from None
        if isinstance(data, dict) and "name" not in data:
            data = {**data, "name": default_name}
        return _parse(data, source)


@dataclass(frozen=True)
class _Checker:
    """Errors that name the file (`source`) and the field at fault."""

    source: str

    def fail(self, where: str, why: str) -> ArchError:
        return ArchError(f"{self.source}: {where} {why}.")

    def positive_int(self, value: Any, where: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be an integer, got {json.dumps(value)}")
        if value < minimum:
            word = "positive" if minimum == 1 else f"at least {minimum}"
            raise self.fail(where, f"must be {word}, got {value}")
        return value


def _parse(data: Any, source: str) -> Arch:
    check = _Checker(source)
    if not isinstance(data, dict):
        raise ArchError(f"{source}: an architecture must be a JSON object with 'resolution' and 'blocks'.")
    unknown = sorted(set(data) - set(ARCH_FIELDS))
    if unknown:
        raise check.fail(f"field '{unknown[0]}'", f"is unknown (known fields: {', '.join(ARCH_FIELDS)})")
    for required in ("resolution", "blocks"):
        if required not in data:
            raise check.fail(f"field '{required}'", "is missing")
    resolution = check.positive_int(data["resolution"], "resolution")
    in_channels = check.positive_int(data.get("in_channels", 3), "in_channels")
    divisor = check.positive_int(data.get("width_divisor", 8), "width_divisor")
    conv_bias = data.get("conv_bias", False)
    if not isinstance(conv_bias, bool):
        raise check.fail("conv_bias", f"must be true or false, got {json.dumps(conv_bias)}")
    dropout = data.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise check.fail("dropout", f"must be a number in [0, 1), got {json.dumps(dropout)}")
    name = data.get("name", "arch")
    if not isinstance(name, str) or not name:
        raise check.fail("name", "must be a non-empty string")
    blocks = data["blocks"]
    if not isinstance(blocks, list) or len(blocks) < 3:
        raise check.fail("blocks", "must be a list from the stem to the classifier (at least stem, head, classifier)")

    layers: list[LayerDef] = []
    c_in, size, n_down = in_channels, resolution, 0
    for i, block in enumerate(blocks):
        layer = _parse_layer(check, block, i, len(blocks), c_in, size, n_down, divisor)
        layers.append(layer)
        kind = OPS[layer.op].kind
        if kind != "classifier":
            c_in = layer.c_out
            size = 1 if kind == "head" else (size - 1) // layer.stride + 1
        n_down += layer.stride == 2
    arch = Arch(
        name=name,
        resolution=resolution,
        layers=tuple(layers),
        in_channels=in_channels,
        width_divisor=divisor,
        conv_bias=conv_bias,
        dropout=float(dropout),
    )
    try:
        arch.specs()
    except BlockSpecError as exc:  # a combination no single field check caught
        raise ArchError(f"{source}: {exc}") from None
    return arch


def _parse_layer(
    check: _Checker, block: Any, i: int, n_blocks: int, c_in: int, size: int, n_down: int, divisor: int
) -> LayerDef:
    """Block `i` of `n_blocks`, whose input has `c_in` channels at `size` x `size` after `n_down` stride-2 blocks."""
    where = f"blocks[{i}]"
    if not isinstance(block, dict):
        raise check.fail(where, "must be an object with at least 'op' and 'c_out'")
    unknown = sorted(set(block) - set(ARCH_BLOCK_FIELDS))
    if unknown:
        raise check.fail(f"{where}.{unknown[0]}", f"is an unknown field (known: {', '.join(ARCH_BLOCK_FIELDS)})")
    if "op" not in block:
        raise check.fail(f"{where}.op", "is missing")
    op_name = block["op"]
    if op_name not in OPS:
        raise check.fail(f"{where}.op", f"'{op_name}' is not a known op (known: {', '.join(sorted(OPS))})")
    op = OPS[op_name]
    expected_kind = "stem" if i == 0 else "classifier" if i == n_blocks - 1 else ("head" if i == n_blocks - 2 else None)
    if expected_kind and op.kind != expected_kind:
        raise check.fail(
            f"{where}.op",
            f"must be a {expected_kind} op such as '{KIND_TO_DEFAULT_OP[expected_kind]}', got '{op_name}'",
        )
    if not expected_kind and op.kind not in ("ir", "skip"):
        raise check.fail(f"{where}.op", f"must be an ir or skip op between the stem and the head, got '{op_name}'")
    if "c_out" not in block:
        raise check.fail(f"{where}.c_out", "is missing")
    c_out = check.positive_int(block["c_out"], f"{where}.c_out")
    stride = check.positive_int(block.get("stride", 1), f"{where}.stride")
    if stride not in (1, 2):
        raise check.fail(f"{where}.stride", f"must be 1 or 2, got {stride}")
    if stride == 2 and op.kind in ("head", "classifier"):
        raise check.fail(f"{where}.stride", "must be 1 for the head and the classifier")
    if stride == 2 and size % 2:
        raise check.fail(
            f"{where}.stride",
            f"2 does not fit the resolution: the feature map here is {size}x{size} "
            f"after {n_down} stride-2 blocks (use a resolution divisible by {2 ** (n_down + 1)})",
        )
    mid = _mid_channels(check, block, where, op_name, c_in, divisor)
    se = 0
    if op.se:
        se = check.positive_int(block["se"], f"{where}.se") if "se" in block else se_width(mid, divisor)
    elif "se" in block:
        raise check.fail(f"{where}.se", f"is given but '{op_name}' has no squeeze-excite")
    return LayerDef(op=op_name, c_out=c_out, stride=stride, mid=mid, se=se)


def _mid_channels(
    check: _Checker, block: dict[str, Any], where: str, op_name: str, c_in: int, divisor: int
) -> int | None:
    """An inverted residual's or head's expanded width: `mid`, an `expansion` ratio, or the head's default."""
    kind = OPS[op_name].kind
    if kind not in ("ir", "head"):
        if "mid" in block or "expansion" in block:
            raise check.fail(where, f"'{op_name}' takes no 'mid' or 'expansion'")
        return None
    if "mid" in block and "expansion" in block:
        raise check.fail(where, "gives both 'mid' and 'expansion'; give one")
    if "mid" in block:
        return check.positive_int(block["mid"], f"{where}.mid")
    if "expansion" in block:
        expansion = block["expansion"]
        if (
            isinstance(expansion, bool)
            or not isinstance(expansion, (int, float))
            or not math.isfinite(expansion)
            or not 0 < expansion <= MAX_EXPANSION
        ):
            raise check.fail(
                f"{where}.expansion", f"must be a number above 0 and at most {MAX_EXPANSION}, got {expansion!r}"
            )
        return c_in if expansion == 1 else make_divisible(c_in * expansion, divisor)
    if kind == "head":
        return head_width(c_in, divisor)
    raise check.fail(f"{where}.mid", "is missing (give 'mid' channels or an 'expansion' ratio)")


def covering(pool: list[Arch], keys: set[str], batch: int = 1, dtype: str = "fp32") -> list[Arch]:
    """Architectures of `pool` that hold as many of the block `keys` as the pool does, few of them: greedily,
    the one holding most keys not yet held, until none adds one (blocks timed in context need networks)."""
    holds = [{s.key for s in arch.specs(batch, dtype)} & keys for arch in pool]
    chosen: list[Arch] = []
    left = set(keys)
    while left:
        best = max(range(len(pool)), key=lambda i: len(holds[i] & left), default=None)
        if best is None or not holds[best] & left:
            break
        chosen.append(pool[best])
        left -= holds[best]
    return chosen
