"""A farm job's arguments, checked as data before anything runs.

Anyone who can write the shared table can write the queue, so a worker trusts nothing in a job: one
schema names the keys a job may hold and bounds every value (a block key that parses, an architecture
within ARCH.json's bounds, a known protocol and backend, texts and lists of bounded size). Nothing in a
job names a file or a program on the worker's host: the runner, the serial and every path come from the
worker's own command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latency.vocab.arch import Arch
from latency.vocab.blocks import DTYPES, MAX_SIZE, BlockSpec
from latency.vocab.conditions import Conditions, is_device_name
from latency.vocab.deploy_env import DeployEnv
from latency.vocab.errors import LutError, shown
from profilers.backends import BACKENDS
from profilers.protocol import PROTOCOLS

CONDITION_KEYS = ("device", "backend", "threads", "batch", "dtype")
BLOCKS_JOB_KEYS = frozenset((*CONDITION_KEYS, "protocol", "keys"))
RUNS_JOB_KEYS = frozenset((*CONDITION_KEYS, "protocol", "tag", "deploy_env", "archs"))
MAX_KEYS = 4096  # blocks in one job (a protocol's group is 6-12; --job-size may ask for more)
MAX_ARCHS = 64  # whole networks in one job (lut queues one)
MAX_KEY_CHARS = 256
MAX_NAME_CHARS = 128  # device, tag
MAX_DEPLOY_ENV_CHARS = 4096
MAX_ARCH_CHARS = 256 * 1024  # the largest FBNetV2 architecture is under 8 KB of JSON
MAX_THREADS = 1024


class InvalidJob(LutError):
    """A job whose arguments are not a job lut queues: it fails once, with this reason, never retried."""


@dataclass(frozen=True)
class BlocksJob:
    """Blocks to time alone, as `lut profile --queue` asks."""

    conditions: Conditions
    protocol: str
    specs: tuple[BlockSpec, ...]


@dataclass(frozen=True)
class RunsJob:
    """Whole networks to run end to end as `deploy_env` runs them, as `lut calibrate --queue` asks."""

    conditions: Conditions
    protocol: str
    tag: str
    deploy_env: DeployEnv
    archs: tuple[Arch, ...]


def _text(args: Mapping[str, Any], name: str, limit: int) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise InvalidJob(f"'{name}' must be a text, got {shown(value)}.")
    if len(value) > limit:
        raise InvalidJob(f"'{name}' is {len(value)} characters long, more than the {limit} a job may hold.")
    return value


def _integer(args: Mapping[str, Any], name: str, maximum: int) -> int:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidJob(f"'{name}' must be an integer from 1 to {maximum}, got {shown(value)}.")
    return value


def _texts(args: Mapping[str, Any], name: str, most: int, limit: int) -> list[str]:
    values = args.get(name)
    if not isinstance(values, list) or not values:
        raise InvalidJob(f"'{name}' must be a non-empty list, got {shown(values)}.")
    if len(values) > most:
        raise InvalidJob(f"'{name}' holds {len(values)} items, more than the {most} a job may hold.")
    for value in values:
        if not isinstance(value, str):
            raise InvalidJob(f"'{name}' must hold texts, got {shown(value)}.")
        if len(value) > limit:
            raise InvalidJob(f"an item of '{name}' is {len(value)} characters long, more than the {limit} allowed.")
    return values


def _conditions(args: Mapping[str, Any]) -> Conditions:
    device = _text(args, "device", MAX_NAME_CHARS)
    if not is_device_name(device):
        raise InvalidJob(f"'device' must be a device name, got {shown(device)}.")
    backend = _text(args, "backend", MAX_NAME_CHARS)
    if backend not in BACKENDS:
        raise InvalidJob(f"'backend' must be one of {', '.join(BACKENDS)}, got {shown(backend)}.")
    dtype = _text(args, "dtype", MAX_NAME_CHARS)
    if dtype not in DTYPES:
        raise InvalidJob(f"'dtype' must be one of {', '.join(DTYPES)}, got {shown(dtype)}.")
    threads = _integer(args, "threads", MAX_THREADS)
    batch = _integer(args, "batch", MAX_SIZE["batch"])
    return Conditions(device, backend, threads, batch, dtype)


def parse_job(args: Mapping[str, Any]) -> BlocksJob | RunsJob:
    """The job `args` describe, or InvalidJob with the first thing wrong with them."""
    kind, known = ("archs", RUNS_JOB_KEYS) if "archs" in args else ("keys", BLOCKS_JOB_KEYS)
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidJob(
            f"the job holds {shown(unknown[0])}, which no job lut queues holds "
            f"(a job of {kind} holds {', '.join(sorted(known))})."
        )
    missing = sorted(known - set(args))
    if missing:
        raise InvalidJob(f"the job lacks '{missing[0]}'.")
    conditions = _conditions(args)
    protocol = _text(args, "protocol", MAX_NAME_CHARS)
    if protocol not in PROTOCOLS:
        raise InvalidJob(f"'protocol' must be one of {', '.join(PROTOCOLS)}, got {shown(protocol)}.")
    try:
        if kind == "keys":
            keys = _texts(args, "keys", MAX_KEYS, MAX_KEY_CHARS)
            return BlocksJob(conditions, protocol, tuple(BlockSpec.from_key(key) for key in keys))
        tag = _text(args, "tag", MAX_NAME_CHARS)
        deploy_env = DeployEnv.parse(_text(args, "deploy_env", MAX_DEPLOY_ENV_CHARS))
        texts = _texts(args, "archs", MAX_ARCHS, MAX_ARCH_CHARS)
        archs = tuple(Arch.from_json_text(text, "a queued architecture") for text in texts)
    except InvalidJob:
        raise
    except LutError as exc:  # a key, an environment or an architecture that does not parse
        raise InvalidJob(str(exc)) from None
    return RunsJob(conditions, protocol, tag, deploy_env, archs)
