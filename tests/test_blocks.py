"""The block vocabulary: keys, validation, analytic FLOPs/params against the modules built."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from latency.nn.layers import build_block
from latency.vocab.blocks import BlockSpec, BlockSpecError
from latency.vocab.family import blocks_of, list_models

FAMILY = list_models(available_only=True)


def unique_specs() -> list[BlockSpec]:
    seen: dict[str, BlockSpec] = {}
    for name in FAMILY:
        for spec in blocks_of(name):
            seen.setdefault(spec.key, spec)
    return list(seen.values())


def hooked_counts(spec: BlockSpec) -> tuple[int, int, tuple[int, ...]]:
    """FLOPs and params counted from the built module by forward hooks (an independent count)."""
    module = build_block(spec).eval()
    flops = 0

    def conv_hook(mod: nn.Conv2d, inputs, output) -> None:
        nonlocal flops
        flops += mod.weight.numel() * output.shape[-1] * output.shape[-2]  # weight MACs per position

    def pool_hook(mod: nn.Module, inputs, output) -> None:
        nonlocal flops
        flops += inputs[0][0].numel()

    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            sub.register_forward_hook(conv_hook)
        elif isinstance(sub, nn.AdaptiveAvgPool2d):
            sub.register_forward_hook(pool_hook)
    with torch.inference_mode():
        out = module(torch.zeros(1, spec.c_in, spec.h, spec.w))
    params = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))
    return flops, params, tuple(out.shape)


@pytest.mark.parametrize("spec", unique_specs(), ids=lambda s: s.key)
def test_analytic_counts_match_the_built_module(spec: BlockSpec) -> None:
    flops, params, out_shape = hooked_counts(spec)
    assert spec.flops == flops
    assert spec.params == params
    assert spec.output_shape == out_shape


def test_keys_round_trip_and_are_unique_per_spec() -> None:
    specs = unique_specs()
    assert len(specs) > 100
    variants = [dataclasses.replace(s, batch=8, dtype="fp16") for s in specs[:10]]
    for spec in specs + variants:
        assert BlockSpec.from_key(spec.key) == spec
    assert len({s.key for s in specs + variants}) == len(specs) + len(variants)


def test_legacy_bias_is_part_of_the_key() -> None:
    l3_ir = [s for s in blocks_of("dmasking_l3") if s.kind == "ir"]
    assert all(s.bias and "_bias_" in s.key for s in l3_ir)
    plain = dataclasses.replace(l3_ir[0], bias=False)
    assert plain.key != l3_ir[0].key and plain.flops == l3_ir[0].flops
    built = build_block(l3_ir[0])
    assert built.project.conv.bias is not None and build_block(plain).project.conv.bias is None


def test_specs_are_frozen_hashable_and_shared_between_models() -> None:
    f4 = blocks_of("dmasking_f4")
    l1 = blocks_of("dmasking_l1")
    shared = {s.key for s in f4} & {s.key for s in l1}
    assert "stem_k3_s2_c3-16-16_se0_hswish_224x224_b1_fp32" in shared
    assert len({*f4, *l1}) == len({s.key for s in f4 + l1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        f4[0].c_out = 3  # type: ignore[misc]


def test_batch_and_dtype_flow_into_shapes_and_flops() -> None:
    one = blocks_of("dmasking_f1")
    eight = blocks_of("dmasking_f1", batch=8, dtype="fp16")
    assert [s.flops * 8 for s in one] == [s.flops for s in eight]
    assert eight[0].input_shape == (8, 3, 128, 128)
    assert eight[-1].output_shape == (8, 1000)
    assert all(s.key.endswith("_b8_fp16") for s in eight)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"c_out": -8}, "c_out must be a positive integer"),
        ({"mid": 0}, "mid must be a positive integer"),
        ({"stride": 3}, "stride must be 1 or 2"),
        ({"act": "gelu"}, "act must be one of"),
        ({"dtype": "int4"}, "dtype must be one of"),
        ({"kernel": 4}, "kernel must be odd"),
        ({"kind": "conv"}, "kind 'conv' is not one of"),
        ({"se": -1}, "se must be a non-negative integer"),
        ({"c_out": 10**9}, "c_out must be at most 65536"),
        ({"h": 10**6}, "h must be at most 8192"),
    ],
)
def test_invalid_specs_name_the_field(changes: dict, message: str) -> None:
    base = BlockSpec.from_key("ir_k5_s2_c8-48-24_se0_relu_64x64_b1_fp32")
    with pytest.raises(BlockSpecError, match=message):
        dataclasses.replace(base, **changes)


def test_kind_rules_are_enforced() -> None:
    with pytest.raises(BlockSpecError, match="only ir blocks"):
        BlockSpec("skip", 8, 16, 16, 1, 1, 4, "relu", 8, 8)
    with pytest.raises(BlockSpecError, match="must be 1x1"):
        BlockSpec("classifier", 16, 10, 10, 1, 1, 0, "none", 2, 2)
    with pytest.raises(BlockSpecError, match="mid must equal c_out"):
        BlockSpec("stem", 3, 4, 8, 3, 2, 0, "hswish", 8, 8)


@pytest.mark.parametrize("key", ["ir_k5", "ir_k5_s2_c8-48-24_se0_relu_64x64_b1", "nonsense", ""])
def test_malformed_keys_are_rejected(key: str) -> None:
    with pytest.raises(BlockSpecError, match="is not a block key"):
        BlockSpec.from_key(key)


def test_blocks_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, latency.vocab as v; v.blocks_of('dmasking_f3'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
