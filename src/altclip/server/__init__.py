"""The HTTP service (``altclip serve``), as a package:

settings.py    ServerSettings: flags > ALTCLIP_* environment > JSON/TOML file, typed (pydantic-settings)
app.py         create_app: the FastAPI app, its routes, middleware and error handlers, its OpenAPI document
run.py         serve: the port bound first, uvicorn (half-sent headers timed out), and draining on SIGTERM
service.py     Service: the model, batchers, decoder, index, classifier cache and metrics behind the routes
routes.py      the /v1 API          ops.py    probes, /metrics and the search page (static/)
openai_api.py  OpenAI's /v1/embeddings and /v1/models       clip_retrieval.py   clip-retrieval's back-end API
docs.py        /docs (Swagger UI) and /redoc, from static/docs
schemas.py     the field types of a deployment (its limits as constraints), the /v1 request and response models
body.py        route classes reading JSON and multipart bodies within bounds, before FastAPI validates them
decoding.py    images: headers checked and pixels counted first, then decoded in a bounded pool
auth.py        bearer token         middleware.py   metrics, HEAD, admission, request lifetime, body limit, CORS
errors.py      exceptions -> HTTP statuses, in one table
batching.py    dynamic batching     metrics.py      Prometheus metrics
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ServerSettings", "create_app", "serve"]
# Imported on first use (PEP 562), so that `altclip serve --help` and the rest of the command line, which read
# ServerSettings, do not import the app, and with it PyTorch.
_EXPORTS = {
    "ServerSettings": "altclip.server.settings",
    "create_app": "altclip.server.app",
    "serve": "altclip.server.run",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'altclip.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from altclip.server.app import create_app
    from altclip.server.run import serve
    from altclip.server.settings import ServerSettings
