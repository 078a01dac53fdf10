"""The human-readable output of the commands that measure (profile, time, calibrate, validate) and of
import, as a user reads it: plain text, no markup leaking, its wording and layout fixed by a snapshot.
Times differ from run to run, so numbers and their signs are masked (#), and widths and line breaks,
which follow the numbers, are collapsed; the deterministic commands' output is compared byte for byte in
tests/test_golden.py. Regenerate with `LUT_GOLDEN_WRITE=1 pytest tests/test_human_output.py`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from latency.vocab.space import get_space
from tests.cli import TINY_SPACE, lut

GOLDEN = Path(__file__).parent / "data" / "golden" / "human"
WRITE = os.environ.get("LUT_GOLDEN_WRITE") == "1"


def masked(text: str, *paths: Path | str) -> str:
    for path in paths:
        text = text.replace(str(path), "PATH")
    text = re.sub(r"\b(scale|traffic|per_block|per_kind) correction", "FIT correction", text)  # the data's pick
    text = text.replace("; unstable: the machine was noisy", "")  # said when the machine moved, as it may
    text = text.replace(" (argmax projected onto the budget)", "")  # said when the search's pick ran over
    text = re.sub(r"[+-]?\d+(\.\d+)?(e[+-]?\d+)?", "#", text)
    text = re.sub(r"([━─═]){2,}", r"\1", text)  # a rule's length follows its column's widest number
    # where a long line wraps depends on its numbers' lengths too: a sentence per line, words as they come
    return re.sub(r"\s+", " ", text).strip().replace(". ", ".\n") + "\n"


def check(name: str, text: str, folder: Path = GOLDEN) -> None:
    """`text` is the snapshot `folder/name.txt` (written instead with LUT_GOLDEN_WRITE=1), and no markup."""
    assert "[bold" not in text and "[/" not in text  # the console prints markup as it is
    path = folder / f"{name}.txt"
    if WRITE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name}: the output changed; if meant, regenerate (module docstring)"


def test_the_measuring_commands_read_as_they_did(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    arch = tmp_path / "net.json"
    arch.write_text(get_space(str(TINY_SPACE)).sampled_archs(1, seed=5)[0].to_json())
    quick = ["--protocol", "quick", "--db", db]
    tiny = ["--models", "none", "--space", str(TINY_SPACE)]
    steps = {
        "profile": ["profile", "--arch", str(arch), *quick],
        "time": ["time", str(arch), *quick],
        "calibrate": ["calibrate", *tiny, "--random", "8", "--seed", "1", *quick],
        "validate": ["validate", *tiny, "--random", "3", "--seed", "2", *quick],
        "export": ["export", "--out", str(tmp_path / "rows.csv"), "--db", db],
        "import": ["import", str(tmp_path / "rows.csv"), "--db", str(tmp_path / "other.sqlite")],
    }
    for name, args in steps.items():
        ran = lut(*args)
        assert ran.returncode == 0, ran.stderr
        check(name, masked(ran.stdout, tmp_path, TINY_SPACE))
