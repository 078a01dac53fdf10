"""The one error type the lookup table raises for things a user can fix."""

from __future__ import annotations

from latency.vocab.errors import LutError


class StoreError(LutError):
    """A database that cannot be opened or is not ours, a malformed file, an unknown device or block, ...

    The message is one sentence naming the database URL or file; the `lut` command prints it and exits 1.
    """


def one_line(exc: BaseException) -> str:
    """A driver's message squeezed onto one line (psycopg's span several)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return " ".join(text.split()).rstrip(".")
