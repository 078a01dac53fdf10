"""Golden outputs: the `--json` of the reporting commands on a fixed table, byte for byte as they were
before the tree was reorganised (issue 13). A change here is a change of behaviour: if it is meant,
regenerate with `LUT_GOLDEN_WRITE=1 pytest tests/test_golden.py` and say why in the commit."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from latency.estimate.estimator import Estimator
from latency.jobs.validate import compare
from latency.vocab.family import blocks_of, get_arch, list_models
from latency.vocab.space import get_space
from lut_db import LutStore
from tests.cli import TINY_SPACE, lut
from tests.test_estimate import CANARY_US, fill, stored_run
from tests.test_human_output import check

GOLDEN = Path(__file__).parent / "data" / "golden"
WRITE = os.environ.get("LUT_GOLDEN_WRITE") == "1"


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Made-up, deterministic times for every block of the family, on two devices."""
    path = str(tmp_path_factory.mktemp("golden") / "lut.sqlite")
    specs = [s for m in list_models(available_only=True) for s in blocks_of(m)]
    with LutStore(path) as store:
        fill(store, specs)
        fill(store, specs, device="pixel", scale=3.0)
    return path


COMMANDS = {
    "models": ["models", "--json"],
    "blocks_f1": ["blocks", "dmasking_f1", "--json"],
    "blocks_tiny_point": ["blocks", "TINY_POINT", "--json"],
    "estimate_f3": ["estimate", "dmasking_f3", "--breakdown", "--no-profile", "--json"],
    "estimate_l1_pixel": [
        "estimate",
        "dmasking_l1",
        "--device",
        "pixel",
        "--backend",
        "torch",
        "--no-profile",
        "--json",
    ],
    "rank": ["rank", "--devices", "cpu,pixel", "--backend", "torch", "--budget-ms", "20", "--no-profile", "--json"],
    "space_f1": ["space", "show", "fbnetv2_f1", "--json"],
    "space_tiny": ["space", "show", str(TINY_SPACE), "--json"],
}


def scrub(value: object, db: str) -> object:
    """The table's path differs from run to run."""
    if isinstance(value, dict):
        return {k: scrub(v, db) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, db) for v in value]
    return "DB" if isinstance(value, str) and db in value else value


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_json_output_is_unchanged(name: str, table: str, tmp_path: Path) -> None:
    point = tmp_path / "tiny_point.json"
    point.write_text(json.dumps({"name": "tiny_point", **json.loads((GOLDEN / "tiny_point.arch.json").read_text())}))
    args = [str(point) if a == "TINY_POINT" else a for a in COMMANDS[name]]
    ran = lut(*args, "--db", table) if args[0] not in ("models", "blocks", "space") else lut(*args)
    assert ran.returncode == 0, ran.stderr
    got = scrub(json.loads(ran.stdout), table)
    path = GOLDEN / f"{name}.json"
    if WRITE:
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


def test_validation_metrics_on_stored_runs_are_unchanged(tmp_path: Path) -> None:
    """What `lut validate` reports once its runs are in the table (latency.jobs.validate.compare): the
    estimate against each run as measured and its metrics first, the estimate at each run's speed (its
    canary against the table's) beside, and how far each network's fresh processes agreed."""
    archs = [get_arch(m) for m in ("dmasking_f1", "dmasking_f3", "dmasking_l1")]
    archs += get_space(str(TINY_SPACE)).sampled_archs(3, seed=4)
    with LutStore(str(tmp_path / "lut.sqlite")) as store:
        fill(store, [s for a in archs for s in a.specs()])
        plain = Estimator("cpu", store=store)
        for i, arch in enumerate(archs):
            # made-up runs: slower than the block sum by 4-16%, on a machine whose canary drifts +-6%
            median_us = plain.estimate(arch).latency_ms * 1e3 * (1.04 + 0.03 * (i % 5))
            canary_us = CANARY_US * (0.94 + 0.03 * (i % 5))
            # three fresh processes, 2-8% apart: the noise floor the report states
            processes = {"trial_medians_us": [median_us * (1 - 0.01 * i), median_us, median_us * (1 + 0.03 + 0.01 * i)]}
            store.put_e2e_run(
                stored_run(arch, median_us, canary_us, "validation", protocol={"launches": 3}, environment=processes)
            )
            if i % 2:
                store.put_e2e_run(stored_run(arch, median_us * 1.01, canary_us, "calibration"))
        got = compare(archs, plain, store).to_dict()
    path = GOLDEN / "validate_stored_runs.json"
    if WRITE:
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


# The human-readable output of the same commands (and of devices, sample, export), as a user reads it:
# plain text (no markup leaking), tables at the width a pipe gets (160 columns), byte for byte.
HUMAN = {name: [a for a in args if a != "--json"] for name, args in COMMANDS.items()}
HUMAN |= {
    "devices": ["devices"],
    "sample": ["sample", "--n", "2", "--seed", "3", "--space", str(TINY_SPACE), "--out", "OUT"],
    "export": ["export", "--device", "pixel", "--out", "OUT/rows.csv"],
}


@pytest.mark.parametrize("name", sorted(HUMAN))
def test_human_output_is_unchanged(name: str, table: str, tmp_path: Path) -> None:
    point = tmp_path / "tiny_point.json"
    point.write_text(json.dumps({"name": "tiny_point", **json.loads((GOLDEN / "tiny_point.arch.json").read_text())}))
    args = [str(point) if a == "TINY_POINT" else a.replace("OUT", str(tmp_path)) for a in HUMAN[name]]
    ran = lut(*args, "--db", table) if args[0] not in ("models", "blocks", "space", "sample") else lut(*args)
    assert ran.returncode == 0, ran.stderr
    got = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d", "YYYY-MM-DD HH:MM", ran.stdout.replace(str(tmp_path), "TMP"))
    got = got.replace(table, "DB").replace(str(TINY_SPACE), "TINY_SPACE")  # where the checkout lies varies
    got = "".join(line.strip() + "\n" for line in got.splitlines())  # a title is centred over its path's length
    check(name, got, GOLDEN)
