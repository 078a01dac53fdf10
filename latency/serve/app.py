"""The ASGI app of `lut serve`: the JSON API, the pages and their static files over one read-only table.

Guards sit in one plain ASGI middleware, before any route: the bearer token (when set), and the size of
a request's body. Every error is one sentence in `{"error": ...}` with a 4xx status (a 500 names only the
exception's type), as the commands print one sentence and exit non-zero.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from latency.estimate.estimator import MissingBlocksError
from latency.serve.service import NotFound, TableService
from latency.vocab.errors import LutError
from lut_db import LutStore

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 8 << 20  # 2,000 ARCH.json files, or 100,000 space points of fbnetv2_f4, in one request
TOKEN_COOKIE = "lut_token"


def to_json(payload: Any) -> bytes:
    """JSON as the API writes it: datetimes in ISO 8601, numpy numbers as numbers, NaN and inf as null."""
    try:
        return json.dumps(payload, default=_plain, allow_nan=False).encode()
    except ValueError:  # a NaN somewhere (an undefined metric): null, as JSON has no NaN
        return json.dumps(_finite(payload), default=_plain, allow_nan=False).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return value


class LutJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return to_json(content)


def error(status: int, message: str) -> LutJSON:
    return LutJSON({"error": message}, status_code=status)


class Guard:
    """The token (when set) on every request, and a ceiling on the body, before any route runs."""

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int) -> None:
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None and not self._authorized(headers):
            if not self._matches(parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[-1]):
                await error(401, "This lut service needs its token: send 'Authorization: Bearer TOKEN'.")(
                    scope, receive, send
                )
                return
            send = self._setting_cookie(send)  # a browser opened ?token=TOKEN once: its later requests carry it
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await error(413, f"A request body may hold at most {self.max_body_bytes} bytes.")(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive, scope, send), send)

    def _matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        if given.startswith("Bearer ") and self._matches(given[7:]):
            return True
        cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
        return self._matches(cookies.get(TOKEN_COOKIE, ""))

    def _setting_cookie(self, send: Send) -> Send:
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return sending

    def _bounded(self, receive: Receive, scope: Scope, send: Send) -> Receive:
        """A chunked body without a length is counted as it arrives."""
        seen = 0
        limit = self.max_body_bytes

        async def bounded() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        return bounded


class BodyTooLarge(Exception):
    pass


TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")  # what a header and a cookie both carry unchanged


def check_token(token: str | None) -> None:
    if token is not None and not TOKEN.fullmatch(token):
        raise LutError(
            "A service token is one or more letters, digits or ._~+/=- (what a header and a cookie carry "
            "unchanged); `openssl rand -hex 16` makes one.",
            exit_code=2,
        )


def create_app(store: LutStore, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> Any:
    """The service over `store` (opened read-only by `lut serve`); `token`: required on every request."""
    check_token(token)
    from latency.serve.api import router as api_router
    from latency.serve.pages import router as page_router

    app = FastAPI(
        title="lut",
        summary="Latency lookup tables: estimates, rankings, validation and the device farm, read-only.",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: the OpenAPI description is served alone
        redoc_url=None,
        openapi_url="/api/openapi.json",
        default_response_class=LutJSON,
    )
    app.state.service = TableService(store)
    app.include_router(api_router)
    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(LutError)
    async def lut_error(_: Request, exc: LutError) -> LutJSON:
        return error(404 if isinstance(exc, (NotFound, MissingBlocksError)) else 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> LutJSON:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the request"
        return error(422, f"{where}: {first.get('msg', 'invalid')}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> LutJSON:
        return error(exc.status_code, str(exc.detail) if exc.detail else "error")

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, __: BodyTooLarge) -> LutJSON:
        return error(413, f"A request body may hold at most {max_body_bytes} bytes.")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> LutJSON:
        return error(500, f"unexpected {type(exc).__name__} (a bug in lut: please report the request)")

    return Guard(app, token, max_body_bytes)
