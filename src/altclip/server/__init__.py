"""The HTTP service (``altclip serve``), as a package:

settings.py    ServerSettings: flags > ALTCLIP_* environment > JSON/TOML file, typed (pydantic-settings)
app.py         create_app: the FastAPI app, its routers, middleware and error handlers
run.py         serve: the port bound first, uvicorn (half-sent headers timed out), and draining on SIGTERM
service.py     Service: the model, batchers, decoder, index, classifier cache and metrics behind the routes
routes.py      the /v1 API          ops.py    probes, /metrics and the search page (static/)
openai_api.py  OpenAI's /v1/embeddings and /v1/models       clip_retrieval.py   clip-retrieval's back-end API
docs.py        /docs (Swagger UI) and /redoc, from static/docs
schemas.py     request and response types      inputs.py   reading JSON and multipart bodies into them
limits.py      what one request may cost: the checks validation and the service share
decoding.py    images: headers checked and pixels counted first, then decoded in a bounded pool
openapi.py     the OpenAPI document, with the deployment's limits
auth.py        bearer token         middleware.py   metrics, admission, request lifetime, body limit, CORS
errors.py      exceptions -> HTTP statuses, in one table
batching.py    dynamic batching     metrics.py      Prometheus metrics
"""

from altclip.server.app import create_app
from altclip.server.run import serve
from altclip.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
