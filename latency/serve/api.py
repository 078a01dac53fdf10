"""The JSON API: devices, the family, estimates (one, many, a space's points), block tables, ranking,
validation, the farm. Conditions come as query parameters, as the commands take them as options."""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from latency.serve.app import LutJSON
from latency.serve.service import Query as Asked
from latency.serve.service import TableService
from latency.vocab.arch import Arch
from latency.vocab.blocks import DTYPES
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DeployEnv
from latency.vocab.errors import LutError
from latency.vocab.family import resolve_arch

router = APIRouter(prefix="/api")

MAX_NESTING = 8  # ARCH.json is 3 deep; {"archs": [ARCH.json, ...]} 5
MAX_ARCHS = 2_000  # ARCH.json files in one request (about 2 KiB each: the body limit's share)
MAX_POINTS = 100_000  # space points in one request (about 60 bytes each in JSON)


async def service(request: Request) -> TableService:  # async: no thread hop for what a request always needs
    return request.app.state.service


async def asked(
    device: Annotated[
        str, Query(max_length=64, description="A device in the table (cpu, cuda:0, pixel, ...).")
    ] = "cpu",
    backend: Annotated[str | None, Query(max_length=32, description="Backend [default: the device's].")] = None,
    threads: Annotated[int, Query(ge=1, le=256)] = 1,
    batch: Annotated[int, Query(ge=1, le=4096)] = 1,
    dtype: Annotated[str, Query(description=f"One of {', '.join(DTYPES)}.")] = "fp32",
    deploy_env: Annotated[str, Query(max_length=64, description="The deployment the estimate predicts.")] = "default",
) -> Asked:
    if dtype not in DTYPES:
        raise LutError(f"dtype must be one of {', '.join(DTYPES)}, not '{dtype}'.", exit_code=2)
    # one spelling per deployment, as the estimator and the stored runs have it
    return Asked(Conditions(device, backend or None, threads, batch, dtype), DeployEnv.parse(deploy_env).name)


Service = Annotated[TableService, Depends(service)]
Conditioned = Annotated[Asked, Depends(asked)]


async def json_body(request: Request) -> Any:
    """The request's JSON, refused in one sentence when malformed or nested deeper than MAX_NESTING."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise LutError("The request body is not JSON.", exit_code=2) from None
    if _depth(body) > MAX_NESTING:
        raise LutError(f"The request body is nested deeper than {MAX_NESTING} levels.", exit_code=2)
    return body


def _depth(value: Any) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def arch_of(body: Any) -> Arch:
    """An ARCH.json document as an architecture (never a path to open)."""
    if not isinstance(body, dict):
        raise LutError("An architecture is an ARCH.json object (resolution, blocks).", exit_code=2)
    return resolve_arch(body)


@router.get("/devices")
def devices(table: Service) -> LutJSON:
    """Each device: fingerprint, rows by source per conditions, calibrations and their error, last measured."""
    return LutJSON(table.devices())


@router.get("/models")
def models() -> LutJSON:
    """The FBNetV2 family: resolution, FLOPs, params, published top-1."""
    return LutJSON(TableService.models())


@router.get("/estimate/{model}")
async def estimate_model(model: str, table: Service, query: Conditioned) -> LutJSON:
    """A family model's estimate, as `lut estimate MODEL --no-profile --json` gives it."""
    # a kept answer on the event loop where the table's revision is read in microseconds (SQLite); anything
    # else in a worker thread: a phone's first estimate fits a predictor (seconds), PostgreSQL is a round trip
    found = table.kept_model_estimate(query, model) if table.revision_is_cheap else None
    if found is None:
        found = await run_in_threadpool(table.estimate_model, query, model)
    return LutJSON(found)


@router.post("/estimate")
def estimate_arch(body: Annotated[Any, Depends(json_body)], table: Service, query: Conditioned) -> LutJSON:
    """An architecture posted as ARCH.json, estimated as `lut estimate ARCH.json --no-profile --json`."""
    return LutJSON(table.estimate(query, arch_of(body)).to_dict())


@router.post("/estimate/many")
def estimate_many(body: Annotated[Any, Depends(json_body)], table: Service, query: Conditioned) -> LutJSON:
    """Many architectures in one request: `{"archs": [ARCH.json, ...]}`, or a space's points as choice
    indices `{"space": NAME, "indices": [[...], ...]}` (Space.sample_indices' layout, vectorised)."""
    if not isinstance(body, dict) or ("archs" in body) == ("indices" in body):
        raise LutError('Send {"archs": [ARCH.json, ...]} or {"space": NAME, "indices": [[...], ...]}.', exit_code=2)
    if "archs" in body:
        archs = body["archs"]
        if not isinstance(archs, list) or not 0 < len(archs) <= MAX_ARCHS:
            raise LutError(f"'archs' is a list of 1 to {MAX_ARCHS} ARCH.json objects.", exit_code=2)
        latency_ms = table.estimate_many(query, [arch_of(a) for a in archs])
        return LutJSON({"latency_ms": latency_ms})
    space = table.space(str(body.get("space", "")))
    try:
        indices = np.asarray(body["indices"])
    except (TypeError, ValueError, OverflowError):
        indices = np.asarray([])
    if indices.dtype.kind not in "iu":  # 1.9 is no choice, nor True
        raise LutError("'indices' is a list of rows of whole numbers.", exit_code=2)
    sizes = np.array([k for _, k in space.dimensions])
    if indices.ndim != 2 or indices.shape[1] != len(sizes) or not 0 < len(indices) <= MAX_POINTS:
        raise LutError(
            f"'indices' of {space.name} holds 1 to {MAX_POINTS} rows of {len(sizes)} choices "
            f"({', '.join(n for n, _ in space.dimensions)}).",
            exit_code=2,
        )
    if (indices < 0).any() or (indices >= sizes).any():
        raise LutError(f"A choice is out of range for {space.name}: each column counts {sizes.tolist()}.", exit_code=2)
    return LutJSON({"space": space.name, "latency_ms": table.estimate_points(query, space, indices)})


@router.get("/estimator")
def estimator(table: Service, query: Conditioned) -> LutJSON:
    """The estimator under these conditions: resolved conditions, calibration and its metrics, intercept."""
    return LutJSON(table.summary(query))


@router.get("/tables/{space}")
def space_tables(space: str, table: Service, query: Conditioned) -> LutJSON:
    """Each block position's corrected times over the space's choices, and the intercept: what LatencyCost
    is built from (latency.estimate.remote)."""
    return LutJSON(table.space_tables(query, table.space(space)))


@router.get("/rank")
def rank(
    table: Service,
    query: Conditioned,
    devices: Annotated[
        str | None, Query(max_length=400, description="Devices, comma-separated [default: the device].")
    ] = None,
    budget_ms: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
) -> LutJSON:
    """The family ranked per device (int8: with fp32 beside it), as `lut rank --no-profile --json`."""
    names = [d for d in (devices or query.conditions.device).split(",") if d]
    if not names:
        raise LutError("devices names at least one device (cpu,pixel).", exit_code=2)
    for name in names:
        table.check_device(name)
    return LutJSON(table.rank(names, query, budget_ms).to_dict())


@router.get("/validation")
def validation(table: Service, query: Conditioned, tag: Annotated[str, Query(max_length=64)] = "validation") -> LutJSON:
    """Every stored run with this tag against its estimate, with the metrics (as `lut validate`)."""
    return LutJSON(table.validation(query, tag).to_dict())


@router.get("/runs/{model}")
def runs(model: str, table: Service, query: Conditioned) -> LutJSON:
    """A family model's measured end-to-end runs under these conditions."""
    return LutJSON(table.runs(query, table.family_arch(model)))


@router.get("/farm")
def farm(table: Service) -> LutJSON:
    """The farm's jobs per state and its workers with their heartbeats, per device."""
    return LutJSON(table.farm())
