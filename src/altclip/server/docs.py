"""The API's documentation pages, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, served from the files in
``static/docs`` (no CDN: they work offline), under a Content-Security-Policy that lets them load nothing from
anywhere else."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from altclip.server.ops import STATIC

DOCS = STATIC / "docs"
HEADERS = {
    # Both render with inline styles (ReDoc's styled-components), ReDoc searches in a worker made from a blob, and
    # Swagger UI draws its icons as data: images.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:",
    "X-Content-Type-Options": "nosniff",
}


def add_routes(router: APIRouter) -> None:
    router.add_api_route("/docs", swagger_ui, include_in_schema=False)
    router.add_api_route("/redoc", redoc, include_in_schema=False)


async def swagger_ui() -> FileResponse:
    return FileResponse(DOCS / "swagger.html", headers=HEADERS)


async def redoc() -> FileResponse:
    return FileResponse(DOCS / "redoc.html", headers=HEADERS)
