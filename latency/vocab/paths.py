"""Where lut keeps its files on this machine (the XDG base directory spec)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/lut`, `~/.cache/lut` without it (or with a relative one, as the spec says)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "lut"
