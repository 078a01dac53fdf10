"""Bad input at every command: one sentence and exit 1 or 2, checked before any long work, never a
traceback, the table unchanged. The commands run in this process (typer's CliRunner), so that many
inputs cost little; a real process is the business of the other CLI tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from latency.cli import app
from latency.vocab.family import blocks_of
from latency.vocab.space import get_space
from lut_db import LutStore
from tests.test_estimate import fill

RUNNER = CliRunner()


def invoke(*args: str):
    return RUNNER.invoke(app, list(args), catch_exceptions=True)


def said(result) -> str:
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


def answered_or_refused(result) -> None:
    """Exit 0, 1 or 2; an exception only as the exit itself (anything else would be a traceback)."""
    assert result.exit_code in (0, 1, 2), said(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in said(result)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dmasking_f1's blocks, filled with made-up times (no measuring in these tests)."""
    path = tmp_path_factory.mktemp("inputs") / "lut.sqlite"
    with LutStore(str(path)) as store:
        fill(store, blocks_of("dmasking_f1"))
    return path


@pytest.fixture
def garbage_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"\x00not a checkpoint" * 10)
    return path


BAD = [
    (["profile", "--models", "dmasking_f1", "--threads", "100000"], 2, "--threads 100000 does not fit cpu"),
    (["profile", "--models", ","], 2, "--models ',' has an empty item"),
    (["profile", "--models", "dmasking_f1,,dmasking_f2"], 2, "has an empty item"),
    (["estimate", "dmasking_f1", "--device", "cuda:abc"], 2, "'cuda:abc' is not a GPU name"),
    (["rank", "--budget-ms", "nan", "--no-profile"], 2, "nan is not a finite number"),
    (["search", "--target-ms", "inf"], 2, "inf is not a finite number"),
    (["search", "--target-ms", "10", "--proxy-resolutions", "x,y,z,w"], 2, "needs 4 whole numbers"),
    (["search", "--target-ms", "10", "--proxy-resolutions", "100000,16,20,24"], 2, "between 8 and 256"),
    (["search", "--target-ms", "10", "--loss", "tyop"], 2, "loss must be 'target' or 'fbnet'"),
    (["search", "--target-ms", "-3"], 2, "target_ms must be a positive number"),
    (["search", "--target-ms", "10", "--out", "/nonexistent/x.json"], 2, "does not exist or cannot be written"),
    (["search", "--target-ms", "10", "--checkpoint", "/"], 2, "is a folder"),
    (["export", "--out", "/nonexistent/x.csv"], 1, "No such file or directory"),
    (["space", "show", "nas101"], 2, "Unknown search space 'nas101'"),
]
# int8 on a backend that cannot lower it, at every command that measures or estimates: the same sentence.
INT8_ON_TORCH = "int8 runs on the executorch backend (XNNPACK's quantized kernels, as phones run it), not on torch"
BAD += [
    ([*command, "--dtype", "int8"], 2, INT8_ON_TORCH)
    for command in (
        ["profile", "--models", "dmasking_f1"],
        ["estimate", "dmasking_f1"],
        ["time", "dmasking_f1"],
        ["calibrate"],
        ["validate"],
        ["rank", "--no-profile"],
        ["search", "--target-ms", "10"],
        ["blocks", "dmasking_f1", "--device", "cpu"],
    )
]


@pytest.mark.parametrize(("args", "code", "message"), BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input_is_one_sentence_and_leaves_the_table(table: Path, args: list[str], code: int, message: str) -> None:
    before = table.read_bytes()
    result = invoke(*args, "--db", str(table)) if args[0] not in ("space",) else invoke(*args)
    answered_or_refused(result)
    assert result.exit_code == code, said(result)
    assert message in said(result)
    assert table.read_bytes() == before


def test_a_garbage_checkpoint_is_refused_before_any_work(table: Path, garbage_checkpoint: Path) -> None:
    result = invoke("search", "--target-ms", "10", "--checkpoint", str(garbage_checkpoint), "--db", str(table))
    answered_or_refused(result)
    assert result.exit_code == 1 and "is not a search checkpoint" in said(result)


def test_brackets_are_text_not_markup(tmp_path: Path) -> None:
    odd = tmp_path / "odd[bold]"
    odd.mkdir()
    result = invoke("blocks", str(odd / "[executorch].json"))
    answered_or_refused(result)
    assert result.exit_code == 1 and f"{odd}/[executorch].json" in said(result)
    closing = invoke("estimate", "[/]x", "--no-profile")  # a markup error once, with a traceback
    answered_or_refused(closing)
    assert closing.exit_code in (1, 2) and "[/]x" in said(closing)
    help_text = invoke("export", "--help").output
    assert "[default: all]" in help_text


def test_advice_names_the_devices_own_backend(tmp_path: Path) -> None:
    result = invoke("estimate", "dmasking_f1", "--device", "pixel", "--no-profile", "--db", str(tmp_path / "e.sqlite"))
    answered_or_refused(result)
    assert result.exit_code == 1
    assert "--backend executorch" in said(result) and "--backend torch" not in said(result)


# ---- generated input ------------------------------------------------------------------------------
SPACE = get_space("fbnetv2_f1")
VALID = [json.loads(arch.to_json()) for arch in SPACE.sampled_archs(8, 0)]  # drawn from, not made per example
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def arch_documents(draw: st.DrawFn) -> bytes:
    """Valid architectures of a space, the same with one field anywhere replaced, or garbage."""
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "garbage", "deep"]))
    if kind == "garbage":
        return draw(st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
    if kind == "deep":
        return b"[" * draw(st.integers(100, 200_000))
    doc = json.loads(json.dumps(draw(st.sampled_from(VALID))))  # a copy to mutate
    if kind == "mutated":
        if draw(st.booleans()):
            field = draw(st.sampled_from(["resolution", "in_channels", "width_divisor", "dropout", "name", "extra"]))
            doc[field] = draw(ODD_VALUES)
        else:
            block = draw(st.sampled_from(doc["blocks"]))
            field = draw(st.sampled_from(["op", "c_out", "stride", "mid", "expansion", "se", "other"]))
            block[field] = draw(ODD_VALUES)
    return json.dumps(doc, allow_nan=True).encode()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(document=arch_documents())
def test_any_arch_document_is_answered_or_refused(table: Path, tmp_path: Path, document: bytes) -> None:
    path = tmp_path / "arch.json"
    path.write_bytes(document)
    before = table.read_bytes()
    estimate = ["estimate", str(path), "--no-profile", "--json", "--db", str(table)]
    for args in (["blocks", str(path), "--json"], estimate):
        result = invoke(*args)
        answered_or_refused(result)
        if result.exit_code == 0:
            assert json.loads(result.stdout)
    assert table.read_bytes() == before


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    threads=st.one_of(st.integers(-5, 10**6), st.text(max_size=4)),
    batch=st.one_of(st.integers(-5, 10**5), st.just("x")),
    dtype=st.sampled_from(["fp32", "fp16", "int3", "", "[bold]"]),
    device=st.one_of(st.sampled_from(["cpu", "cuda:abc", "pixel", "tpu 0", "", "[x]"]), st.text(max_size=8)),
    budget=st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_option_values_are_answered_or_refused(
    table: Path, threads: object, batch: object, dtype: str, device: str, budget: float
) -> None:
    before = table.read_bytes()
    common = ["--threads", str(threads), "--batch", str(batch), "--dtype", dtype, "--device", device]
    for args in (
        ["estimate", "dmasking_f1", "--no-profile", *common],
        ["rank", "--no-profile", "--budget-ms", repr(budget), "--device", device, "--threads", str(threads)],
    ):
        result = invoke(*args, "--json", "--db", str(table))
        answered_or_refused(result)
        if not math.isfinite(budget) and args[0] == "rank":
            assert result.exit_code == 2
    assert table.read_bytes() == before


def test_every_option_naming_a_registry_lists_all_of_it() -> None:
    """--help stays true: an option that takes a backend, a protocol or a dtype names every one there is."""
    import typer.main

    from latency.vocab.blocks import DTYPES
    from profilers.devices import DEVICE_BACKENDS
    from profilers.protocol import PROTOCOLS

    wanted = {
        "backend": {b for backends in DEVICE_BACKENDS.values() for b in backends},
        "protocol": set(PROTOCOLS),
        "dtype": set(DTYPES),
    }
    seen = set()

    def walk(command, path: str) -> None:
        for param in command.params:
            if param.name in wanted and getattr(param, "help", None):
                missing = {name for name in wanted[param.name] if name not in param.help}
                assert not missing, f"lut {path} --{param.name} does not name {sorted(missing)}: {param.help!r}"
                seen.add((path, param.name))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    assert {("profile", "backend"), ("calibrate", "protocol"), ("estimate", "dtype"), ("search", "dtype")} <= seen
