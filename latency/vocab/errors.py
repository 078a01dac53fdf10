"""The one exception type a user can cause; the CLI prints its message as one sentence."""

from __future__ import annotations


class LutError(Exception):
    """An error the user can fix (unknown model, malformed file, missing entries, ...).

    `exit_code` is what the `lut` command exits with: 2 for usage errors, 1 otherwise.
    """

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def shown(value: object, limit: int = 60) -> str:
    """A value as an error sentence quotes it: its repr, cut to `limit` characters (a row or a job may hold
    a megabyte of text, or control characters repr makes visible)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
