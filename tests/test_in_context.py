"""Blocks timed in context: whole networks run as the deployment runs them, timed block by block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latency.estimate.estimator import Estimator
from latency.jobs.calibrate import ensure_blocks
from latency.jobs.in_context import in_context_keys, profile_in_context
from latency.jobs.space_fill import corner_specs, profile_space
from latency.vocab.arch import Arch, covering
from latency.vocab.blocks import CONTEXT_NETWORK
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT
from latency.vocab.space import SpacePoint, get_space
from lut_db import LutStore
from profilers.backends.torch_cpu import TorchCPU
from profilers.errors import ProfilerError
from profilers.targets import ArchTarget
from tests.cli import TINY_SPACE, lut

TORCH = Conditions("cpu", "torch")


def tiny(*points: SpacePoint) -> list[Arch]:
    space = get_space(str(TINY_SPACE))
    return [space.arch(p, name=f"tiny{i}") for i, p in enumerate(points)]


A, B = tiny(SpacePoint(0, (0, 0), (0, 0)), SpacePoint(0, (0, 1), (2, 0)))


def test_a_networks_blocks_are_timed_inside_it_and_sum_to_each_call() -> None:
    backend = TorchCPU(1)
    backend.setup()
    target = ArchTarget(A)
    totals, parts = backend.time_parts(backend.prepare_parts(target), 20, 0.0, 1.0, 0.01)
    assert len(parts) == len(A.specs()) and all(len(p) == len(totals) for p in parts)
    for call, total in enumerate(totals):
        assert sum(p[call] for p in parts) == pytest.approx(total)
    assert all(min(p) > 0 for p in parts)
    # The same network as FBNetV2.forward computes it: the parts runner is the network, not a stand-in.
    assert backend.prepare(target)().shape[-1] == A.specs()[-1].c_out


def test_each_block_row_comes_from_the_networks_and_they_sum_to_the_network(tmp_path: Path) -> None:
    with LutStore(tmp_path / "lut.sqlite") as store:
        summary = profile_in_context([A, B], store, TORCH, "quick")
        keys = {s.key for a in (A, B) for s in a.specs()}
        assert summary.measured == summary.requested == len(keys) and not summary.failed
        rows = store.measurement_map(TORCH)
        assert set(rows) == keys == in_context_keys(store, TORCH, summary.backend_version, DEFAULT)
        for row in rows.values():
            assert (
                row.provenance.protocol["context"] == CONTEXT_NETWORK
                and row.provenance.protocol["deploy_env"] == "default"
            )
            assert (
                row.provenance.environment["appearance_networks"]
                and row.stats.p10_us <= row.stats.median_us <= row.stats.p90_us
            )
        shared = {s.key for s in A.specs()} & {s.key for s in B.specs()}
        assert shared and all(len(rows[k].provenance.environment["appearances_us"]) == 2 for k in shared)
        # A block only one network holds carries that network's share of its median: the blocks of that
        # network sum to it.
        only_b = [rows[s.key] for s in B.specs() if s.key not in shared]
        network_us = only_b[0].provenance.environment["network_median_us"]
        own = sum(r.stats.median_us for r in only_b) + sum(
            r.provenance.environment["appearances_us"][r.provenance.environment["appearance_networks"].index("tiny1")]
            for r in (rows[k] for k in shared)
        )
        assert own == pytest.approx(network_us, rel=1e-3)
        estimate = Estimator(TORCH, store=store, use_calibration=False).estimate(A)
        assert estimate.latency_ms > 0 and not Estimator(TORCH, store=store).missing(A)
        again = profile_in_context([A, B], store, TORCH, "quick")
        assert again.measured == 0 and again.already_present == len(keys)


def test_a_later_run_adds_its_networks_to_the_appearances_of_earlier_ones(tmp_path: Path) -> None:
    shared = {s.key for s in A.specs()} & {s.key for s in B.specs()}
    with LutStore(tmp_path / "lut.sqlite") as store:
        profile_in_context([A], store, TORCH, "quick")
        first = store.measurement_map(TORCH)
        profile_in_context([B], store, TORCH, "quick")  # as `lut estimate` of a second network does
        rows = store.measurement_map(TORCH)
    for key in shared:  # A's time for the block is kept beside B's, and the row is the median appearance
        environment = rows[key].provenance.environment
        assert sorted(environment["appearance_networks"]) == ["tiny0", "tiny1"]
        assert round(first[key].stats.median_us, 3) in environment["appearances_us"]
        assert rows[key].stats.median_us == pytest.approx(min(environment["appearances_us"]), abs=1e-3)
    only_a = [k for k in first if k not in shared]
    assert all(rows[k] == first[k] for k in only_a)  # B's run leaves A's own blocks alone


def test_runtimes_that_run_one_program_cannot_time_blocks_inside_it(tmp_path: Path) -> None:
    with LutStore(tmp_path / "lut.sqlite") as store, pytest.raises(ProfilerError) as info:
        profile_in_context([A], store, Conditions("cpu", "onnxruntime"), "quick")
    assert info.value.exit_code == 2 and "one by one" in str(info.value)
    # Refused before any phone is reached: no adb is asked for one.
    with LutStore(tmp_path / "lut.sqlite") as store, pytest.raises(ProfilerError) as info:
        profile_in_context([A], store, Conditions("pixel"), "quick")
    assert info.value.exit_code == 2 and "pixel" in str(info.value)


def test_covering_picks_few_networks_that_hold_the_blocks() -> None:
    space = get_space(str(TINY_SPACE))
    pool = space.sampled_archs(40, seed=3)
    wanted = {s.key for a in space.sampled_archs(5, seed=4) for s in a.specs()}
    chosen = covering(pool, wanted)
    held_by_pool = wanted & {s.key for a in pool for s in a.specs()}
    held = wanted & {s.key for a in chosen for s in a.specs()}
    assert held == held_by_pool and len(chosen) < len(pool)
    # Each network chosen added a block the ones before it did not hold.
    seen: set[str] = set()
    for arch in chosen:
        keys = {s.key for s in arch.specs()} & wanted
        assert keys - seen
        seen |= keys
    assert covering(pool, set()) == []


@pytest.mark.parametrize("name", ["fbnetv2_f4", "fbnetv2_l1", str(TINY_SPACE)])
def test_points_holding_give_networks_that_hold_every_shape_asked_for(name: str) -> None:
    space = get_space(name)
    ways = space.realizations()
    assert set(ways) == {s.key for s in space.all_specs()}  # every shape of the grid is in some network
    rng = np.random.default_rng(1)
    for size in (1, 8, 60):
        keys = set(rng.choice(sorted(ways), size=min(size, len(ways)), replace=False))
        points = space.points_holding(keys, seed=2)
        held = {s.key for p in points for s in space.arch(p).specs()}
        assert keys <= held and len(points) <= len(keys)
    corners = {s.key for s in corner_specs(space)}
    points = space.points_holding(corners)
    assert corners <= {s.key for p in points for s in space.arch(p).specs()}
    assert len(points) <= len(corners) / 2  # networks hold many shapes each: few of them


def test_a_space_fill_times_its_shapes_inside_networks_of_the_space(tmp_path: Path) -> None:
    space = get_space(str(TINY_SPACE))
    with LutStore(tmp_path / "lut.sqlite") as store:
        summary = profile_space(space, store, TORCH, budget_min=0.0, protocol="quick")
        assert summary.in_context and 0 < summary.networks < len(corner_specs(space))
        rows = store.measurement_map(TORCH)
        assert set(rows) == {s.key for s in space.all_specs()}
        measured = [r for r in rows.values() if r.source == "measured"]
        predicted = [r for r in rows.values() if r.source == "predicted"]
        assert {s.key for s in corner_specs(space)} <= {r.block_key for r in measured}
        # every measured row was timed inside networks of the space, each a point of it
        for row in measured:
            assert (
                row.provenance.protocol["context"] == CONTEXT_NETWORK
                and row.provenance.protocol["deploy_env"] == "default"
            )
            names = row.provenance.environment["appearance_networks"]
            assert names and all(n.startswith(f"{space.name}-r") for n in names)
        # the rest is predicted from those rows, and stands for blocks timed in context
        assert len(predicted) == summary.predicted > 0
        assert all(r.provenance.protocol["context"] == CONTEXT_NETWORK for r in predicted)
        estimator = Estimator(TORCH, store=store)
        assert {e.context for e in estimator.entry_map().values()} == {CONTEXT_NETWORK}
        assert estimator.space_tables(space)  # the search's tables are complete
        # a calibration on networks of the space corrects that table: it measures none of their blocks alone
        blocks = ensure_blocks(space.sampled_archs(4, seed=5), store, TORCH, "quick", None)
        assert blocks.measured == 0 and blocks.already_present == blocks.requested > 0
        assert {r.provenance.protocol.get("context") for r in store.measurements(TORCH)} == {CONTEXT_NETWORK}
        alone = profile_space(space, store, TORCH, budget_min=0.0, protocol="quick", in_context=False)
        assert not alone.in_context and alone.networks == 0


def test_cli_profiles_in_context_by_default_on_the_host_and_refuses_the_queue(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    arch = tmp_path / "a.json"
    arch.write_text(A.to_json())
    profiled = lut("profile", "--arch", str(arch), "--protocol", "quick", "--db", db, "--json", check=True)
    out = json.loads(profiled.stdout)
    assert out["measured"] == len({s.key for s in A.specs()})
    with LutStore(db) as store:
        rows = store.measurements(TORCH)
        assert rows and {r.provenance.protocol.get("context") for r in rows} == {CONTEXT_NETWORK}
    refused = lut("profile", "--in-context", "--queue", "--models", "dmasking_f1", "--db", db, check=False)
    assert refused.returncode == 2 and "--in-context" in refused.stderr
    alone = lut("profile", "--arch", str(arch), "--isolated", "--deploy-env", "tuned-malloc", "--db", db, check=False)
    assert alone.returncode == 2 and "drop --isolated" in alone.stderr
