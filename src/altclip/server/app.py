"""The HTTP service: embeddings, zero-shot classification, similarity and index search over one loaded model,
with dynamic batching, limits, optional bearer-token auth, Prometheus metrics and a search page.

Run it with ``altclip serve`` (``run.serve``). The server never fetches URLs or opens paths sent by clients: images
arrive as uploads or base64, and thumbnails are served by the opaque ids of the index.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from altclip.inference import Embedder
from altclip.server import clip_retrieval, docs, errors, middleware, openai_api, ops, routes
from altclip.server.auth import require_token
from altclip.server.body import UploadRoute
from altclip.server.schemas import Fields, validation_message
from altclip.server.service import Service, load_embedder
from altclip.server.settings import ServerSettings


@asynccontextmanager
async def lifespan(app: FastAPI):
    service: Service = app.state.service
    await service.start()
    yield
    await service.stop()


def create_app(settings: ServerSettings, embedder: Embedder | None = None) -> FastAPI:
    """The FastAPI app. ``embedder`` (an ``altclip.inference.Embedder``) skips loading ``settings.model``; the app
    works on its own copy of the embedder's image processor."""
    from altclip import __version__

    app = FastAPI(
        title="AltCLIP service",
        description="Multilingual image and text embeddings, zero-shot classification and image search.\n\n"
        + limits_text(settings),
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from docs.py, with their scripts served here rather than from a CDN
        redoc_url=None,
    )
    service = Service(settings, embedder or load_embedder(settings))
    app.state.service = service
    errors.install(app, validation_message)
    middleware.install(app, settings, service.metrics)
    auth = [] if settings.token is None else [Depends(require_token)]  # the API and the metrics, with a token
    fields = Fields(settings, service.embedder.dim)
    ops.add_routes(app.router, auth)
    docs.add_routes(app.router)
    for api in (routes, openai_api, clip_retrieval):
        api.add_routes(app.router, fields, auth)
    app.mount("/static", StaticFiles(directory=ops.STATIC), name="static")
    app.openapi = lambda: document(app)  # type: ignore[method-assign]  # FastAPI's documented way to extend it
    return app


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, as FastAPI generates it from the routes' models; the multipart body of each path
    that takes uploads (its ``UploadRoute``, at the same path and method as the JSON route) beside the JSON body."""
    if app.openapi_schema is None:
        uploads = [r for r in app.routes if isinstance(r, UploadRoute)]
        others = [r for r in app.routes if not isinstance(r, UploadRoute)]
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=others)
        forms = get_openapi(title=app.title, version=app.version, routes=uploads)
        for path, operations in forms["paths"].items():
            for method, operation in operations.items():
                content = schema["paths"][path][method]["requestBody"]["content"]
                content.update(operation["requestBody"]["content"])
        schema["components"]["schemas"].update(forms["components"]["schemas"])
        app.openapi_schema = schema
    return app.openapi_schema


def limits_text(settings: ServerSettings) -> str:
    """The limits of this deployment that JSON Schema cannot state beside a field."""
    s = settings
    return (
        f"Limits: {s.max_items:,} texts, images, labels or templates per request, {s.max_text_chars:,} characters "
        f"per text, query, label or template and {s.max_request_chars:,} in all (prompts included), "
        f"{s.max_request_tokens:,} tokens for the model per request (texts' tokens; images' patches plus one), "
        f"{s.max_prompts:,} prompts (labels x templates) per classification, {s.max_pairs:,} pairs (texts x images) "
        f"per similarity request, {s.max_pixels:,} pixels per image and "
        f"{s.max_request_pixels:,} to decode per request, a body of {s.max_body_bytes:,} bytes, "
        f"{s.request_timeout_s:g} s per request (504), and {s.max_queue} requests and {s.max_queue_tokens:,} tokens "
        "of work served at once (429 beyond)."
    )
