"""What operators and browsers use: liveness and readiness probes and the search page (open), and Prometheus
metrics (behind the bearer token when the server has one)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from altclip.server.errors import documented
from altclip.server.schemas import HealthResponse, ReadyResponse
from altclip.server.service import ServiceDep

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'",
    "X-Content-Type-Options": "nosniff",
}


def add_routes(router: APIRouter, auth: list) -> None:
    router.add_api_route("/", page, include_in_schema=False)
    router.add_api_route("/healthz", healthz, summary="The process is alive", response_model=HealthResponse)
    router.add_api_route(
        "/readyz",
        readyz,
        summary="The model is loaded and warmed up, and the server is not draining",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "Not ready: loading, or draining after SIGTERM"}},
    )
    router.add_api_route("/metrics", metrics, summary="Prometheus metrics", response_class=PlainTextResponse,
                         dependencies=auth, responses=documented(401) if auth else None)  # fmt: skip


async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


async def readyz(service: ServiceDep) -> JSONResponse:
    ready = service.ready and not service.draining
    body = ReadyResponse(ready=ready, draining=service.draining)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def metrics(service: ServiceDep) -> PlainTextResponse:
    from prometheus_client import CONTENT_TYPE_LATEST

    data = service.metrics.exposition(service.queue_depths())
    return PlainTextResponse(data, media_type=CONTENT_TYPE_LATEST)
