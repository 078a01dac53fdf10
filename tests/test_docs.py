"""The documentation holds: the site builds with warnings as errors (every link and anchor resolves, every
API page generates), and every command block marked runnable (`<!-- runnable -->` on the line before the
fence) runs, line by line, on a small table."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from latency.vocab.family import blocks_of, list_models
from latency.vocab.space import get_space
from lut_db import LutStore
from tests.cli import lut
from tests.test_estimate import fill

ROOT = Path(__file__).parent.parent
RUNNABLE = re.compile(r"<!-- runnable -->\n```(?:sh|console|bash)\n(.*?)```", re.S)


def runnable_commands() -> list[tuple[str, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in RUNNABLE.findall(page.read_text()):
            found += [(page.name, line.strip()) for line in block.splitlines() if line.strip().startswith("lut ")]
    return found


COMMANDS = runnable_commands()


def test_the_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-d",
            str(tmp_path / "site"),
        ],  # -q would hide the warnings
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    api = (tmp_path / "site" / "python" / "index.html").read_text()
    assert "estimate_many" in api and "LatencyCost" in api  # the reference was generated from the docstrings


@pytest.fixture(scope="module")
def small_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    with LutStore(str(folder / "lut.sqlite")) as store:
        fill(store, [s for m in list_models(available_only=True) for s in blocks_of(m)])
        fill(store, list(get_space("fbnetv2_f1").all_specs()))
    return folder


def test_there_are_runnable_examples() -> None:
    pages = {page for page, _ in COMMANDS}
    assert {"getting-started.md", "README.md"} <= pages and len(COMMANDS) >= 8


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[f"{p}: {c}" for p, c in COMMANDS])
def test_a_runnable_example_runs(small_table: Path, monkeypatch: pytest.MonkeyPatch, page: str, command: str) -> None:
    monkeypatch.chdir(small_table)  # files an example writes (samples/) land beside the table
    if "samples/" in command and not (small_table / "samples").exists():
        lut("sample", "--n", "2", "--seed", "0", "--space", "fbnetv2_f1", "--out", "samples", check=True)
    ran = lut(*shlex.split(command)[1:], env={"LUT_DB_URL": str(small_table / "lut.sqlite")})
    assert ran.returncode == 0, f"{page}: `{command}` exited {ran.returncode}: {ran.stderr}"
    assert ran.stdout.strip()


def test_the_formats_page_lists_the_csv_columns_and_the_schema_as_the_code_has_them() -> None:
    from lut_db.csvio import COLUMNS
    from lut_db.models import Base

    page = (ROOT / "docs" / "formats.md").read_text()
    assert "Columns, in order: " + ", ".join(f"`{name}`" for name, _ in COLUMNS) + "." in page
    for table in Base.metadata.sorted_tables:
        assert f"| `{table.name}` | " + ", ".join(f"`{c.name}`" for c in table.columns) + " |" in page


def test_the_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    commands = [line.split("`")[1].split()[1] for line in readme.splitlines() if line.startswith("| `lut ")]
    assert len(commands) == len(set(commands)), "a command has more than one row"
    import typer.main

    from latency.cli import app

    assert set(commands) == set(typer.main.get_command(app).commands)  # every command, once
