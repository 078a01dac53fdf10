"""What a user gets without a source tree: the wheel carries every file of the packages, installs
into a fresh venv and answers from there; and the code keeps to the Python versions it declares."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from latency.vocab.family import blocks_of
from lut_db import LutStore
from tests.test_estimate import fill

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("latency", "lut_db", "profilers", "search_cost")

# Names the standard library gained in 3.11 or later; `requires-python >= 3.10` forbids them.
NEWER_THAN_310 = {
    ("datetime", "UTC"),
    ("typing", "Self"),
    ("typing", "LiteralString"),
    ("typing", "Never"),
    ("typing", "assert_never"),
    ("typing", "reveal_type"),
    ("typing", "Required"),
    ("typing", "NotRequired"),
    ("typing", "TypeVarTuple"),
    ("typing", "Unpack"),
    ("typing", "override"),
    ("enum", "StrEnum"),
    ("asyncio", "TaskGroup"),
}
NEWER_MODULES = {"tomllib", "wsgiref.types"}


def package_files() -> list[Path]:
    return sorted(
        p.relative_to(ROOT)
        for package in PACKAGES
        for p in (ROOT / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def declared_min_python() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    spec = text.split("requires-python", 1)[1].split('"')[1]
    assert spec.startswith(">="), spec
    major, minor = spec[2:].split(".")[:2]
    return int(major), int(minor)


@pytest.mark.parametrize("path", [p for p in package_files() if p.suffix == ".py"], ids=str)
def test_sources_keep_to_the_declared_python(path: Path) -> None:
    minimum = declared_min_python()
    tree = ast.parse((ROOT / path).read_text(), feature_version=minimum)
    newer: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [a.name for a in node.names if (node.module, a.name) in NEWER_THAN_310]
            newer += [f"from {node.module} import {n}" for n in names]
            if node.module in NEWER_MODULES:
                newer.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            newer += [f"import {a.name}" for a in node.names if a.name in NEWER_MODULES]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and (node.value.id, node.attr) in NEWER_THAN_310
        ):
            newer.append(f"{node.value.id}.{node.attr}")
    assert not newer, f"{path} uses what Python {minimum[0]}.{minimum[1]} lacks: {newer}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source (the checkout stays free of build/ and egg-info)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = (tmp / "dist").glob("lut-*.whl")
    return built


def test_the_wheel_carries_every_file_of_the_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
    missing = [str(p) for p in package_files() if p.as_posix() not in shipped]
    assert not missing, f"not in the wheel: {missing}"
    assert any(name.startswith("latency/vocab/spaces/") and name.endswith(".json") for name in shipped)


def test_a_fresh_venv_with_the_wheel_answers_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies come from the test's own environment (no network in tests); lut itself only
    # from the wheel: a path listed in a .pth file is not scanned for .pth files, so the editable
    # install of the checkout stays invisible.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-compile",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LUT_DB_URL")}
    env["HOME"] = str(work)

    def lut(*args: str) -> dict | list:
        proc = subprocess.run(
            [str(venv / "bin" / "lut"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    where = subprocess.run(
        [str(python), "-c", "import latency; print(latency.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), where

    assert len(lut("models", "--json")) == 10
    space = lut("space", "show", "fbnetv2_f1", "--json")
    assert space["name"] == "fbnetv2_f1"

    # A small table made elsewhere, exported, imported by the installed lut, and estimated from.
    specs = blocks_of("dmasking_f1")
    with LutStore(str(tmp_path / "made.sqlite")) as store:
        fill(store, specs)
        exported = store.export_csv(tmp_path / "rows.csv")
    db = str(work / "lut.sqlite")
    assert lut("import", str(tmp_path / "rows.csv"), "--db", db, "--json")["rows"] == exported
    estimate = lut("estimate", "dmasking_f1", "--no-profile", "--db", db, "--json")
    expected_ms = sum(5.0 + s.flops / 2e3 for s in specs) / 1e3
    assert estimate["latency_ms"] == pytest.approx(expected_ms, rel=1e-6)
