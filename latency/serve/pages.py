"""The pages a team looks at, rendered on the server from the same service as the API: devices, a model on
a device, the ranking, validation, the farm. Charts are inline SVG (latency.serve.charts)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from latency.serve.api import Conditioned, Service
from latency.serve.charts import SOURCE_COLOURS, Bar, Point, bar_chart, legend, scatter
from latency.serve.service import NotFound
from latency.vocab.errors import LutError
from latency.vocab.family import list_models

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(default_response_class=HTMLResponse)


def source_of(entry: Any) -> str:
    """The legend entry of a block's row: where its number came from."""
    if entry.source == "measured":
        return "measured in context" if entry.context == "network" else "measured alone"
    return entry.source


def page(request: Request, template: str, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, template, {"models": list_models(available_only=True), **context})


def failed(request: Request, title: str, exc: LutError) -> HTMLResponse:
    """A page that could not be drawn says why, in the sentence the API gives, with its status."""
    status = 404 if isinstance(exc, NotFound) else 400
    response = page(request, "message.html", title=title, message=str(exc))
    response.status_code = status
    return response


@router.get("/")
def devices_page(request: Request, table: Service) -> HTMLResponse:
    return page(request, "devices.html", title="Devices", devices=table.devices())


@router.get("/model/{model}")
def model_page(request: Request, model: str, table: Service, query: Conditioned) -> HTMLResponse:
    try:
        arch = table.family_arch(model)
        estimate = table.estimate(query, arch)
        entries = table.block_entries(query, arch)
        runs = table.runs(query, arch)
    except LutError as exc:
        return failed(request, model, exc)
    bars = [
        Bar(
            label=str(i),
            value=entry.median_us / 1e3,
            low=entry.p10_us / 1e3,
            high=entry.p90_us / 1e3,
            group=source_of(entry),
            title=f"#{i} {spec.key}: {entry.median_us / 1e3:.4f} ms ({source_of(entry)})",
        )
        for i, (spec, entry) in enumerate(entries)
    ]
    by_kind: dict[str, float] = defaultdict(float)
    for spec, entry in entries:
        by_kind[spec.kind] += entry.median_us / 1e3
    kinds = sorted(by_kind.items(), key=lambda item: -item[1])
    sources = sorted({b.group for b in bars})
    return page(
        request,
        "model.html",
        title=f"{model} on {estimate.device}",
        model=model,
        query=query,
        estimate=estimate,
        blocks=[(i, spec, entry, source_of(entry)) for i, (spec, entry) in enumerate(entries)],
        runs=runs,
        device_names=[d["name"] for d in table.devices()],
        chart=Markup(bar_chart(bars, "ms per block", SOURCE_COLOURS)),
        legend=Markup(legend(SOURCE_COLOURS, sources)),
        kind_chart=Markup(
            bar_chart([Bar(k, v, title=f"{k}: {v:.3f} ms") for k, v in kinds], "ms by block kind", width=560)
        ),
        kinds=kinds,
    )


@router.get("/rank")
def rank_page(
    request: Request,
    table: Service,
    query: Conditioned,
    devices: Annotated[str | None, Query(max_length=400)] = None,
    a: Annotated[str | None, Query(max_length=64)] = None,
    b: Annotated[str | None, Query(max_length=64)] = None,
    budget: Annotated[str | None, Query(alias="budget_ms", max_length=32)] = None,
) -> HTMLResponse:
    try:
        budget_ms = float(budget) if budget else None  # a form's empty field: no budget
    except ValueError:
        budget_ms = None
    budget_ms = budget_ms if budget_ms is not None and 0 < budget_ms < float("inf") else None
    known = [d["name"] for d in table.devices()]
    names = [d for d in (devices or ",".join(known)).split(",") if d]
    try:
        for name in names:
            table.check_device(name)
        ranking = table.rank(names, query, budget_ms) if names else None
    except LutError as exc:
        return failed(request, "Rank", exc)
    columns = list(ranking.columns) if ranking else []
    charts = []
    for column in columns:
        rows = sorted(ranking.rows, key=lambda r: r.latency_ms[column])
        points = [Point(r.name.replace("dmasking_", ""), r.latency_ms[column], r.top1, r.pareto[column]) for r in rows]
        front = [p for p in points if p.highlight]
        charts.append((column, Markup(scatter(points, "estimated latency (ms)", "ImageNet top-1 (%)", line=front))))
    a = a if a in columns else (columns[0] if columns else None)
    b = b if b in columns else (columns[1] if len(columns) > 1 else a)
    changes = [r for r in ranking.rows if r.rank[a] != r.rank[b]] if ranking and a and b else []
    return page(
        request,
        "rank.html",
        title="Rank",
        ranking=ranking,
        columns=columns,
        charts=charts,
        a=a,
        b=b,
        changes=changes,
        devices=",".join(names),
        known=known,
        query=query,
        budget_ms=budget_ms,
    )


@router.get("/validation")
def validation_page(
    request: Request, table: Service, query: Conditioned, tag: Annotated[str, Query(max_length=64)] = "validation"
) -> HTMLResponse:
    try:
        report = table.validation(query, tag)
    except LutError as exc:
        return failed(request, "Validation", exc)
    points = [Point(r["name"].replace("dmasking_", ""), r["measured_ms"], r["estimated_ms"]) for r in report.rows]
    chart = Markup(scatter(points, "measured (ms)", "estimated (ms)", band=0.10))
    return page(
        request,
        "validation.html",
        title=f"Validation on {report.device}",
        report=report,
        chart=chart,
        query=query,
        tag=tag,
        device_names=[d["name"] for d in table.devices()],
    )


@router.get("/farm")
def farm_page(request: Request, table: Service) -> HTMLResponse:
    return page(request, "farm.html", title="Farm", farm=table.farm())
