"""The block vocabulary: one block's configuration and input shape, its key, FLOPs and params.

Importing this module does not import torch (the estimate path must stay fast); latency.nn.layers
`build_block(spec)` builds a block.
FLOPs follow mobile-vision's convention: multiply-adds of conv/linear weights times output
positions, plus the input elements of every global average pool. Params are conv/linear weights
only (no bias, no BN), the convention of the published FBNetV2 numbers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from latency.vocab.errors import LutError

KINDS = ("stem", "ir", "skip", "head", "classifier")
# Far beyond any mobile network, and small enough that FLOPs and params fit a 64-bit table column.
MAX_SIZE = {"c_in": 65536, "mid": 65536, "c_out": 65536, "kernel": 15, "h": 8192, "w": 8192, "batch": 4096}
ACTIVATIONS = ("relu", "hswish", "none")
DTYPES = ("fp32", "fp16", "bf16", "int8")
# int8: weights and activations quantized as a deployment quantizes them (PT2E, XNNPACK's int8 kernels); only
# the runtime phones use runs it (profilers.devices.QUANTIZED_BACKENDS).
QUANTIZED_DTYPES = ("int8",)
# Where a block was timed: the `context` its row's protocol records when timed inside whole networks
# (latency.jobs.in_context); a row without one was timed alone.
CONTEXT_ALONE, CONTEXT_NETWORK = "alone", "network"


class BlockSpecError(LutError, ValueError):
    """A block description that cannot exist (bad field value or a key that does not parse)."""


@dataclass(frozen=True, order=True)
class BlockSpec:
    """One block and the shape it is fed: the unit the lookup table is keyed by.

    `mid` is the expansion width (ir, head); for stem, skip and classifier it equals `c_out`.
    `se` is the squeeze-excite width (0: no SE). `bias` marks ir/head convs built with a bias, as
    in the legacy dmasking_l3; the stem and classifier convs always have one, the skip never.
    """

    kind: str
    c_in: int
    mid: int
    c_out: int
    kernel: int
    stride: int
    se: int
    act: str
    h: int
    w: int
    batch: int = 1
    dtype: str = "fp32"
    bias: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    # ---- shapes -------------------------------------------------------------------------
    @property
    def out_h(self) -> int:
        return _out_size(self.kind, self.h, self.kernel, self.stride)

    @property
    def out_w(self) -> int:
        return _out_size(self.kind, self.w, self.kernel, self.stride)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.c_in, self.h, self.w)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.kind == "classifier":
            return (self.batch, self.c_out)
        return (self.batch, self.c_out, self.out_h, self.out_w)

    @property
    def has_expand(self) -> bool:
        """Whether an ir block has its 1x1 expansion conv (absent when mid == c_in)."""
        return self.kind == "ir" and self.mid != self.c_in

    @property
    def has_residual(self) -> bool:
        return self.kind == "ir" and self.c_in == self.c_out and self.stride == 1

    @property
    def is_identity(self) -> bool:
        return self.kind == "skip" and self.c_in == self.c_out and self.stride == 1

    # ---- cost ---------------------------------------------------------------------------
    @property
    def flops(self) -> int:
        """Multiply-adds for the whole batch (mobile-vision convention)."""
        return self.batch * _flops_per_sample(self)

    @property
    def params(self) -> int:
        """Conv/linear weights, no bias, no BN."""
        return _params(self)

    @property
    def flops_m(self) -> float:
        return self.flops / 1e6

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    # ---- identity -----------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Canonical, human-readable key, e.g. `ir_k5_s2_c8-48-24_se0_relu_64x64_b1_fp32`."""
        bias = "_bias" if self.bias else ""
        return (
            f"{self.kind}_k{self.kernel}_s{self.stride}_c{self.c_in}-{self.mid}-{self.c_out}"
            f"_se{self.se}_{self.act}{bias}_{self.h}x{self.w}_b{self.batch}_{self.dtype}"
        )

    @classmethod
    def from_key(cls, key: str) -> BlockSpec:
        match = _KEY_RE.fullmatch(key)
        if match is None:
            raise BlockSpecError(
                f"'{key}' is not a block key (expected e.g. 'ir_k5_s2_c8-48-24_se0_relu_64x64_b1_fp32')."
            )
        g = match.groupdict()
        return cls(
            kind=g["kind"],
            c_in=int(g["c_in"]),
            mid=int(g["mid"]),
            c_out=int(g["c_out"]),
            kernel=int(g["kernel"]),
            stride=int(g["stride"]),
            se=int(g["se"]),
            act=g["act"],
            h=int(g["h"]),
            w=int(g["w"]),
            batch=int(g["batch"]),
            dtype=g["dtype"],
            bias=g["bias"] is not None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_KEY_RE = re.compile(
    r"(?P<kind>[a-z]+)_k(?P<kernel>\d+)_s(?P<stride>\d+)_c(?P<c_in>\d+)-(?P<mid>\d+)-(?P<c_out>\d+)"
    r"_se(?P<se>\d+)_(?P<act>[a-z]+)(?P<bias>_bias)?_(?P<h>\d+)x(?P<w>\d+)_b(?P<batch>\d+)_(?P<dtype>[a-z0-9]+)"
)


def _out_size(kind: str, size: int, kernel: int, stride: int) -> int:
    if kind in ("head", "classifier"):
        return 1
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


def _validate(spec: BlockSpec) -> None:
    def bad(field: str, why: str) -> BlockSpecError:
        return BlockSpecError(f"{spec.kind} block: {field} {why}.")

    if spec.kind not in KINDS:
        raise BlockSpecError(f"kind '{spec.kind}' is not one of {', '.join(KINDS)}.")
    for name in ("c_in", "mid", "c_out", "kernel", "stride", "h", "w", "batch"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(name, f"must be a positive integer, got {value!r}")
        if value > MAX_SIZE.get(name, value):
            raise bad(name, f"must be at most {MAX_SIZE[name]}, got {value}")
    if not isinstance(spec.se, int) or isinstance(spec.se, bool) or not 0 <= spec.se <= MAX_SIZE["c_in"]:
        raise bad("se", f"must be a non-negative integer at most {MAX_SIZE['c_in']}, got {spec.se!r}")
    if spec.act not in ACTIVATIONS:
        raise bad("act", f"must be one of {', '.join(ACTIVATIONS)}, got {spec.act!r}")
    if spec.dtype not in DTYPES:
        raise bad("dtype", f"must be one of {', '.join(DTYPES)}, got {spec.dtype!r}")
    if spec.stride not in (1, 2):
        raise bad("stride", f"must be 1 or 2, got {spec.stride}")
    if spec.kind in ("stem", "ir"):
        if spec.kernel % 2 == 0:
            raise bad("kernel", f"must be odd, got {spec.kernel}")
        if spec.act == "none":
            raise bad("act", "must be relu or hswish")
    else:
        act, kernel = _FIXED_ACT_KERNEL[spec.kind]
        if spec.act != act:
            raise bad("act", f"must be {act}")
        if spec.kernel != kernel:
            raise bad("kernel", f"must be {kernel}")
    if spec.kind != "ir" and spec.se:
        raise bad("se", "must be 0 (only ir blocks have squeeze-excite)")
    if max(spec.flops, spec.params) >= 2**63:
        raise bad("shape", "is too large: its FLOPs do not fit a 64-bit integer")
    if spec.kind in ("stem", "skip", "classifier") and spec.mid != spec.c_out:
        raise bad("mid", f"must equal c_out ({spec.c_out}) for a {spec.kind} block")
    if spec.kind in ("head", "classifier") and spec.stride != 1:
        raise bad("stride", "must be 1")
    if spec.kind == "classifier" and (spec.h, spec.w) != (1, 1):
        raise bad("input size", f"must be 1x1 (it follows the pooled head), got {spec.h}x{spec.w}")
    if spec.kind in ("stem", "skip", "classifier") and spec.bias:
        raise bad("bias", "is fixed for this kind (stem and classifier convs always have one, skip never)")


# Kinds whose activation and kernel are fixed by the family's builder.
_FIXED_ACT_KERNEL = {"skip": ("relu", 1), "head": ("hswish", 1), "classifier": ("none", 1)}


def _flops_per_sample(spec: BlockSpec) -> int:
    hw_in = spec.h * spec.w
    hw_out = spec.out_h * spec.out_w
    if spec.kind == "stem":
        return spec.c_out * spec.c_in * spec.kernel**2 * hw_out
    if spec.kind == "skip":
        return 0 if spec.is_identity else spec.c_out * spec.c_in * hw_out
    if spec.kind == "head":
        return spec.mid * spec.c_in * hw_in + spec.mid * hw_in + spec.c_out * spec.mid
    if spec.kind == "classifier":
        return spec.c_in + spec.c_out * spec.c_in  # the 1x1 pool counts its input, then the FC
    flops = spec.mid * spec.c_in * hw_in if spec.has_expand else 0
    flops += spec.mid * spec.kernel**2 * hw_out
    if spec.se:
        flops += spec.mid * hw_out + 2 * spec.mid * spec.se
    return flops + spec.c_out * spec.mid * hw_out


def _params(spec: BlockSpec) -> int:
    if spec.kind == "stem":
        return spec.c_out * spec.c_in * spec.kernel**2
    if spec.kind == "skip":
        return 0 if spec.is_identity else spec.c_out * spec.c_in
    if spec.kind == "head":
        return spec.mid * spec.c_in + spec.c_out * spec.mid
    if spec.kind == "classifier":
        return spec.c_out * spec.c_in
    params = spec.mid * spec.c_in if spec.has_expand else 0
    params += spec.mid * spec.kernel**2
    if spec.se:
        params += 2 * spec.mid * spec.se
    return params + spec.c_out * spec.mid
