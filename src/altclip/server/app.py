"""The HTTP service: embeddings, zero-shot classification, similarity and index search over one loaded model,
with dynamic batching, limits, optional bearer-token auth, Prometheus metrics and a search page.

Run it with ``altclip serve`` (``run.serve``). The server never fetches URLs or opens paths sent by clients: images
arrive as uploads or base64, and thumbnails are served by the opaque ids of the index.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from altclip.inference import Embedder
from altclip.server import clip_retrieval, docs, errors, middleware, openai_api, openapi, ops, routes
from altclip.server.auth import require_token
from altclip.server.service import Service
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
        description="Multilingual image and text embeddings, zero-shot classification and image search.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from docs.py, with their scripts served here rather than from a CDN
        redoc_url=None,
    )
    service = Service(settings, embedder)
    app.state.service = service
    errors.install(app)
    middleware.install(app, settings, service.metrics)
    app.include_router(ops.router)
    app.include_router(docs.router)
    # the API and the metrics, behind the token if there is one
    for router in (ops.metrics_router, routes.router, openai_api.router, clip_retrieval.router):
        if settings.token is None:
            app.include_router(router)
        else:
            unauthorized = openai_api.documented(401) if router is openai_api.router else openapi.errors(401)
            app.include_router(router, dependencies=[Depends(require_token)], responses=unauthorized)
    app.mount("/static", StaticFiles(directory=ops.STATIC), name="static")
    app.openapi = partial(openapi.document, app, settings)  # type: ignore[method-assign]
    return app
