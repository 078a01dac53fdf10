"""Errors a user can cause while profiling (unknown device or backend, missing extra, no GPU...)."""

from latency.vocab.errors import LutError


class ProfilerError(LutError):
    """A device or backend that cannot be used; one sentence says why and what to do."""


class BlockFailed(Exception):
    """One block could not be measured (export or run failed); the others continue."""
