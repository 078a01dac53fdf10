"""`lut serve`: the latency table as a read-only service, with a JSON API and pages (FastAPI on uvicorn)."""

from latency.serve.app import create_app

__all__ = ["create_app"]
