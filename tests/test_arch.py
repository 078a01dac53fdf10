"""Architecture files: the documented JSON format, channel rounding, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latency.vocab.arch import Arch, ArchError, make_divisible
from latency.vocab.family import blocks_of, get_arch, list_models

TINY = {
    "name": "tiny",
    "resolution": 32,
    "blocks": [
        {"op": "conv_k3_hs", "c_out": 8, "stride": 2},
        {"op": "ir_k3", "c_out": 8, "mid": 8},
        {"op": "ir_k5_sehsig_hs", "c_out": 16, "stride": 2, "expansion": 4},
        {"op": "skip", "c_out": 24},
        {"op": "ir_pool_hs", "c_out": 64},
        {"op": "fc", "c_out": 10},
    ],
}

# (c_in, expansion, width_divisor) -> (mid, se) as mobile-vision built them (archs.json ground truth).
ROUNDING = [
    (8, 5.4566, 8, 48, 0),
    (24, 1.7912, 8, 48, 0),
    (24, 5.3501, 8, 128, 32),
    (24, 5.4566, 1, 131, 0),
    (32, 5.3501, 1, 171, 42),
    (40, 4.5379, 1, 182, 45),
    (56, 5.1246, 8, 288, 72),
    (80, 4.507, 8, 360, 88),
    (104, 1.7712, 8, 184, 48),
    (112, 5.5685, 8, 624, 160),
    (120, 3.7712, 1, 453, 113),
    (120, 5.5685, 1, 668, 167),
]


@pytest.mark.parametrize(("c_in", "expansion", "divisor", "mid", "se"), ROUNDING)
def test_expansion_rounds_like_mobile_vision(c_in: int, expansion: float, divisor: int, mid: int, se: int) -> None:
    assert make_divisible(c_in * expansion, divisor) == mid
    if se:
        assert make_divisible(int(0.25 * mid), divisor) == se
        op = "ir_k5_sehsig"
    else:
        op = "ir_k5"
    arch = Arch.from_dict(
        {
            "resolution": 64,
            "width_divisor": divisor,
            "blocks": [
                {"op": "conv_k3", "c_out": c_in, "stride": 2},
                {"op": op, "c_out": 16, "expansion": expansion},
                {"op": "ir_pool_hs", "c_out": 32},
                {"op": "fc", "c_out": 10},
            ],
        }
    )
    block = arch.specs()[1]
    assert (block.mid, block.se) == (mid, se)


def test_tiny_arch_builds_with_derived_widths() -> None:
    specs = blocks_of(dict(TINY))
    assert [s.kind for s in specs] == ["stem", "ir", "ir", "skip", "head", "classifier"]
    assert specs[2].mid == 32 and specs[2].se == 8  # 8 * 4, then 0.25 of mid
    assert specs[4].mid == 144  # the head expands x6 by default
    assert specs[-1].output_shape == (1, 10)
    assert specs[3].h == 8 and specs[4].out_h == 1


@pytest.mark.parametrize("name", list_models(available_only=True))
def test_family_arch_survives_a_json_round_trip(name: str, tmp_path: Path) -> None:
    arch = get_arch(name)
    path = tmp_path / f"{name}.json"
    path.write_text(arch.to_json())
    again = Arch.from_json(path)
    assert again == arch
    assert blocks_of(path) == blocks_of(name)
    assert blocks_of(str(path)) == blocks_of(name)


def broken(**edits: object) -> dict:
    data = json.loads(json.dumps(TINY))
    for path, value in edits.items():
        target = data
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is KeyError:
            del target[int(last) if last.isdigit() else last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (broken(resolution=KeyError), "field 'resolution' is missing"),
        (broken(blocks=KeyError), "field 'blocks' is missing"),
        (broken(blocks__2__c_out=KeyError), r"blocks\[2\].c_out is missing"),
        (broken(blocks__1__op=KeyError), r"blocks\[1\].op is missing"),
        (broken(blocks__2__c_out=-16), r"blocks\[2\].c_out must be positive, got -16"),
        (broken(blocks__1__mid=0), r"blocks\[1\].mid must be positive, got 0"),
        (broken(blocks__2__c_out="16"), r"blocks\[2\].c_out must be an integer"),
        (broken(blocks__1__op="ir_k4"), r"blocks\[1\].op 'ir_k4' is not a known op"),
        (broken(blocks__2__stride=3), r"blocks\[2\].stride must be 1 or 2, got 3"),
        (broken(resolution=34), r"blocks\[2\].stride 2 does not fit the resolution: .* 17x17 after 1 stride-2"),
        (broken(resolution=-32), "resolution must be positive"),
        (broken(blocks__1__strde=2), r"blocks\[1\].strde is an unknown field"),
        (broken(blocks__0__op="ir_k3"), r"blocks\[0\].op must be a stem op"),
        (broken(blocks__5__op="skip"), r"blocks\[5\].op must be a classifier op"),
        (broken(blocks__3__op="fc"), r"blocks\[3\].op must be an ir or skip op"),
        (broken(blocks__3__mid=8), r"blocks\[3\] 'skip' takes no 'mid'"),
        (broken(blocks__1__se=4), r"blocks\[1\].se is given but 'ir_k3' has no squeeze-excite"),
        (broken(blocks__2__mid=12), r"blocks\[2\] gives both 'mid' and 'expansion'"),
        (broken(blocks__2__expansion=KeyError), r"blocks\[2\].mid is missing"),
        (broken(dropout=1.5), "dropout must be a number in"),
        (broken(colour="red"), "field 'colour' is unknown"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_malformed_architectures_name_the_field(data: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ArchError, match=message) as excinfo:
        blocks_of(path)
    assert str(excinfo.value).startswith(f"{path}: ")


def test_unreadable_and_invalid_json_files(tmp_path: Path) -> None:
    with pytest.raises(ArchError, match="Cannot read architecture file"):
        Arch.from_json(tmp_path / "missing.json")
    path = tmp_path / "broken.json"
    path.write_text('{"resolution": 32,')
    with pytest.raises(ArchError, match=r"not valid JSON .* line 1"):
        Arch.from_json(path)


def test_block_stages_follow_mobile_vision_naming() -> None:
    stages = get_arch("dmasking_f1").block_stages
    assert stages[:4] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert stages[-1] == (6, 0)  # the head is a stage of its own
