"""RemoteEstimator: estimates from a `lut serve` over HTTP, for search code that cannot reach the table.

It answers as an Estimator does where a search needs it (`estimate`, `estimate_many`, `space_tables`,
`intercept_ms`, `calibrated`), so `LatencyCost(space, estimator=RemoteEstimator(...))` is the cost built
from the database. The standard library speaks HTTP here: nothing more to install on a training node.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latency.estimate.estimator import BlockEstimate, Estimate
from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.errors import LutError
from latency.vocab.family import list_models, resolve_arch
from latency.vocab.space import Space

TIMEOUT_S = 60.0
ARCHS_PER_REQUEST = 1_000  # within the service's body limit (latency.serve.api.MAX_ARCHS)
POINTS_PER_REQUEST = 50_000  # likewise (MAX_POINTS)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following one would send the bearer token wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class RemoteEstimator:
    """Estimates under `conditions` from the service at `url` (`http://host:8000`); `token`: its bearer token."""

    def __init__(
        self,
        conditions: Conditions | str = "cpu",
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        deploy_env: str = "default",
    ) -> None:
        self.conditions = Conditions.of(conditions)
        self.url = url.rstrip("/")
        self.token = token
        self.deploy_env = deploy_env
        self._summary: dict[str, Any] | None = None  # the service's answer with calibrated and intercept_ms

    # ---- the Estimator surface a search uses --------------------------------------------------------
    def estimate(self, arch: str | Path | Arch | dict[str, Any]) -> Estimate:
        if isinstance(arch, str) and arch in list_models():
            body = self._call("GET", f"/api/estimate/{urllib.parse.quote(arch)}")
        else:
            body = self._call("POST", "/api/estimate", resolve_arch(arch).to_dict())
        return _estimate(body)

    def estimate_many(self, archs: Sequence[str | Path | Arch | dict[str, Any]]) -> np.ndarray:
        """Many architectures, in requests of ARCHS_PER_REQUEST (the service's body limit)."""
        dicts = [resolve_arch(a).to_dict() for a in archs]
        parts = [
            self._call("POST", "/api/estimate/many", {"archs": dicts[i : i + ARCHS_PER_REQUEST]})["latency_ms"]
            for i in range(0, len(dicts), ARCHS_PER_REQUEST)
        ]
        return np.asarray([ms for part in parts for ms in part], dtype=float)

    def estimate_space(self, space: Space, indices: np.ndarray) -> np.ndarray:
        """A space's points (Space.sample_indices' rows), in requests of POINTS_PER_REQUEST."""
        rows = np.asarray(indices, dtype=int)
        parts = []
        for start in range(0, len(rows), POINTS_PER_REQUEST):
            body = {"space": space.name, "indices": rows[start : start + POINTS_PER_REQUEST].tolist()}
            parts.append(self._call("POST", "/api/estimate/many", body)["latency_ms"])
        return np.asarray([ms for part in parts for ms in part], dtype=float)

    def space_tables(self, space: Space) -> list[np.ndarray]:
        """The space's block tables; the intercept and calibration then read are those of the same answer."""
        self._summary = self._call("GET", f"/api/tables/{urllib.parse.quote(space.name)}")
        return [np.asarray(t, dtype=float) for t in self._summary["tables"]]

    @property
    def intercept_ms(self) -> float:
        return float(self._estimator_summary()["intercept_ms"])

    @property
    def calibrated(self) -> bool:
        return bool(self._estimator_summary()["calibrated"])

    def _estimator_summary(self) -> dict[str, Any]:
        """The last block tables' answer, else the service's estimator now."""
        if self._summary is None:
            self._summary = self._call("GET", "/api/estimator")
        return self._summary

    # ---- HTTP ---------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        c = self.conditions
        params = {"device": c.device, "threads": c.threads, "batch": c.batch, "dtype": c.dtype}
        params |= {"deploy_env": self.deploy_env} | ({"backend": c.backend} if c.backend else {})
        request = urllib.request.Request(
            f"{self.url}{path}?{urllib.parse.urlencode(params)}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"content-type": "application/json", "accept": "application/json"}
            | ({"authorization": f"Bearer {self.token}"} if self.token else {}),
        )
        try:
            with _OPENER.open(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error") or exc.reason
            except ValueError:
                message = exc.reason
            raise LutError(f"The lut service at {self.url} answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LutError(f"Cannot reach the lut service at {self.url}: {reason}.") from None
        except (ValueError, http.client.HTTPException) as exc:  # a cut or non-JSON answer
            raise LutError(f"The lut service at {self.url} sent no readable answer: {type(exc).__name__}.") from None


def _estimate(body: dict[str, Any]) -> Estimate:
    """An Estimate from the API's JSON (Estimate.to_dict's)."""
    blocks = tuple(
        BlockEstimate(
            b["key"], b["kind"], b["latency_ms"], b["source"], b.get("expected_error"), b.get("outside_delegate", {})
        )
        for b in body["blocks"]
    )
    fields = {k: v for k, v in body.items() if k not in ("blocks", "outside_delegate_blocks")}
    fields["interval_ms"] = tuple(fields["interval_ms"])
    fields["other_calibrations"] = tuple(fields.get("other_calibrations", ()))
    return Estimate(**fields, blocks=blocks)
