"""CUDA GPUs: a clear refusal without one; real measurements where one exists (skipped elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latency.vocab.family import blocks_of
from lut_db import LutStore
from profilers.devices import resolve_device
from profilers.errors import ProfilerError

HAS_CUDA = torch.cuda.is_available()


def lut(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "latency.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "LUT_PROTOCOL": "quick"},
        check=False,
        timeout=600,
    )


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_without_a_gpu_cuda_is_refused_with_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(ProfilerError, match="Device 'cuda' is not available: this machine has"):
        resolve_device("cuda")
    proc = lut("profile", "--device", "cuda", "--models", "dmasking_f1", "--db", str(tmp_path / "t.sqlite"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Device 'cuda' is not available: this machine has" in proc.stderr


def test_cuda_device_names_parse() -> None:
    with pytest.raises(ProfilerError, match="'cuda 1' is not a GPU name: use cuda or cuda:N"):
        resolve_device("cuda 1")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "torch-eager"])
def test_gpu_blocks_are_measured_with_events(backend: str, tmp_path: Path) -> None:
    db = str(tmp_path / "t.sqlite")
    proc = lut("profile", "--device", "cuda", "--backend", backend, "--models", "dmasking_f1", "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["measured"] == len({s.key for s in blocks_of("dmasking_f1")})
    with LutStore(db) as store:
        rows = [r for r in store.measurements() if r.conditions.device == "cuda"]
        assert all(r.stats.median_us > 0 and r.provenance.protocol["timer"] == "cuda events" for r in rows)
        assert {r.provenance.protocol["cuda_graph"] for r in rows} == {backend == "torch"}
        assert store.device("cuda").fingerprint["gpu"] == torch.cuda.get_device_name(0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_half_precision_and_batches(tmp_path: Path) -> None:
    db = str(tmp_path / "t.sqlite")
    proc = lut(
        "profile",
        "--device",
        "cuda",
        "--models",
        "dmasking_f1",
        "--dtype",
        "fp16",
        "--batch",
        "8",
        "--db",
        db,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    with LutStore(db) as store:
        assert {
            (r.conditions.dtype, r.conditions.batch) for r in store.measurements() if r.conditions.device == "cuda"
        } == {("fp16", 8)}
