"""The HTTP service: embeddings, zero-shot classification, similarity and index search over one loaded model,
with dynamic batching, limits, optional bearer-token auth, Prometheus metrics and a search page.

Run it with ``altclip serve``. The server never fetches URLs or opens paths sent by clients: images arrive as
uploads or base64, and thumbnails are served by the opaque ids of the index.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from altclip.batching import DynamicBatcher, QueueFull
from altclip.image_processing import ImageError
from altclip.server_inputs import (
    ClassifyRequest,
    SearchRequest,
    SimilarityRequest,
    TextsRequest,
    check_count,
    check_labels,
    check_texts,
    decode_base64,
    image_body,
    int_field,
    is_json,
    json_body,
    json_request,
    parse_labels,
    read_files,
    read_form,
    read_images,
    read_json,
    validate,
    validation_message,
)
from altclip.templates import TEMPLATES, guess_language, templates_for

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerSettings:
    """Every setting comes from (highest first) a command-line flag, an ``ALTCLIP_<NAME>`` environment variable,
    a JSON or TOML config file (``--config``), or the default here."""

    model: str = "BAAI/AltCLIP"
    index: str | None = None  # an index folder to search; without one, /v1/search answers 404
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = 32  # items per model call
    max_wait_ms: float = 5.0  # how long a batch waits for more items after its first
    max_queue: int = 256  # items waiting per modality; beyond that requests get 429
    request_timeout_s: float = 30.0  # per request; then 504
    max_body_bytes: int = 20 * 2**20  # then 413
    max_items: int = 64  # texts, images or labels per request; then 422
    max_text_chars: int = 4000
    max_pixels: int = 40_000_000  # per image, checked before decoding
    max_aspect_ratio: float = 50.0
    token: str | None = None  # bearer token for /v1/*; None leaves the API open
    cors_origins: list[str] = field(default_factory=list)  # none: CORS off
    thumbnail_size: int = 256
    drain_seconds: float = 0.0  # after SIGTERM, keep serving with /readyz false this long before closing

    @classmethod
    def load(
        cls, config_file: str | Path | None = None, env: dict[str, str] | None = None, **flags: Any
    ) -> ServerSettings:
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        if config_file:
            values.update(_read_config(Path(config_file), known))
        env = os.environ if env is None else env
        for name in known:
            raw = env.get(f"ALTCLIP_{name.upper()}")
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls(**{k: _coerce(known[k].type, v) for k, v in values.items()})


def _read_config(path: Path, known: dict) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    return data


def _coerce(kind: Any, value: Any) -> Any:
    kind = str(kind)
    if value is None or not isinstance(value, str):
        return value
    if kind.startswith("list"):
        return [v.strip() for v in value.split(",") if v.strip()]
    if kind.startswith("int"):
        return int(value)
    if kind.startswith("float"):
        return float(value)
    return value


# ---------------------------------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they double the output and nobody graphs them
        self.registry = CollectorRegistry()
        self.requests = Counter("altclip_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "altclip_request_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "altclip_batch_size",
            "Items per model call",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.model_seconds = Histogram("altclip_model_seconds", "Time per model call", ["kind"], registry=self.registry)
        self.queue_depth = Gauge("altclip_queue_depth", "Items waiting for the model", ["kind"], registry=self.registry)


class State:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.ready = False
        self.draining = False
        self.embedder = None
        self.index = None
        self.index_lock = threading.Lock()  # SQLite connections are not for concurrent use
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")  # one model call at a time
        self.texts: DynamicBatcher | None = None
        self.images: DynamicBatcher | None = None
        self.classifiers: OrderedDict[tuple, np.ndarray] = OrderedDict()


def create_app(settings: ServerSettings, embedder: Any = None) -> FastAPI:
    """The FastAPI app. ``embedder`` (an ``altclip.inference.Embedder``) skips loading ``settings.model``."""
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal embedder
        if embedder is None:
            from altclip.inference import Embedder
            from altclip.pipeline import load

            model, processor = await run_in_threadpool(
                load, settings.model, device=settings.device, dtype=settings.dtype
            )
            embedder = Embedder(model, processor, settings.model)
        image_processor = embedder.processor.image_processor
        image_processor.max_pixels, image_processor.max_aspect_ratio = settings.max_pixels, settings.max_aspect_ratio
        image_processor.allow_urls = False
        state.embedder = embedder
        if settings.index:
            from altclip.index import ImageIndex

            state.index = ImageIndex(settings.index, create=False)
            state.index.bind(embedder.name, embedder.dim)
        state.texts = _batcher(state, "text", embedder.embed_texts)
        state.images = _batcher(state, "image", lambda arrays: embedder.embed_prepared(np.stack(arrays)))
        # Warm-up: one forward of each tower before /readyz says yes.
        await state.texts.submit(["warm-up"])
        await state.images.submit([np.zeros((*_crop(image_processor), 3), np.uint8)])
        state.ready = True
        yield
        state.ready = False
        await state.texts.stop()
        await state.images.stop()
        state.executor.shutdown(wait=False)
        if state.index is not None:
            state.index.close()

    app = FastAPI(
        title="AltCLIP service",
        description="Multilingual image and text embeddings, zero-shot classification and image search.",
        lifespan=lifespan,
    )
    app.state.altclip = state
    _install_middleware(app, state)
    auth = Depends(_auth(settings))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and warmed up, and the server is not draining")
    async def readyz() -> JSONResponse:
        ready = state.ready and not state.draining
        return JSONResponse({"ready": ready, "draining": state.draining}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for kind, batcher in (("text", state.texts), ("image", state.images)):
            if batcher is not None:
                state.metrics.queue_depth.labels(kind).set(batcher.waiting)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info", summary="The model, the index, and whether the API needs a token")
    async def info() -> dict:
        index = state.index
        return {
            "model": embedder.name if embedder else settings.model,
            "dim": embedder.dim if embedder else None,
            "index": None if index is None else {"images": await run_in_threadpool(_locked, state, index.count)},
            "auth": settings.token is not None,
            "limits": {"max_items": settings.max_items, "max_body_bytes": settings.max_body_bytes},
        }

    @app.post(
        "/v1/embed/text",
        dependencies=[auth],
        summary="Unit-norm embeddings of texts",
        openapi_extra=json_body(TextsRequest),
    )
    async def embed_text(request: Request) -> dict:
        body = await json_request(request, TextsRequest)
        texts = check_texts(body.texts, settings)
        vectors = await _run(state, state.texts, texts)
        return {"model": embedder.name, "dim": embedder.dim, "embeddings": np.stack(vectors).tolist()}

    @app.post(
        "/v1/embed/image",
        dependencies=[auth],
        summary="Unit-norm embeddings of images",
        openapi_extra=image_body("images", many=True),
    )
    async def embed_image(request: Request) -> dict:
        arrays = await _decode(state, await read_images(request, settings, "images"))
        vectors = await _run(state, state.images, arrays)
        return {"model": embedder.name, "dim": embedder.dim, "embeddings": np.stack(vectors).tolist()}

    @app.post(
        "/v1/classify",
        dependencies=[auth],
        summary="Zero-shot classification of one image against labels",
        openapi_extra=image_body(
            "image", many=False, extra={"labels": {"type": "string", "description": "JSON list or comma-separated"}}
        ),
    )
    async def classify(request: Request) -> dict:
        if is_json(request):
            body = validate(ClassifyRequest, await read_json(request))
            images, labels, templates = [decode_base64(body.image, 0)], body.labels, body.templates
        else:
            form = await read_form(request, settings)
            images = await read_files(form, "image", settings)
            labels, templates = parse_labels(form.get("labels")), form.get("templates", "auto")
        if len(images) != 1:
            raise HTTPException(422, "Send exactly one image")
        labels = check_labels(labels, settings)
        arrays = await _decode(state, images)
        image = (await _run(state, state.images, arrays))[0]
        classifier = await _classifier(state, labels, templates)
        probs = embedder.scores(image[None], classifier)["probs"][0]
        ranked = sorted(zip(labels, probs.tolist()), key=lambda x: -x[1])
        return {"labels": [{"label": label, "score": score} for label, score in ranked]}

    @app.post(
        "/v1/similarity",
        dependencies=[auth],
        summary="Image-text similarity matrix",
        openapi_extra=json_body(SimilarityRequest),
    )
    async def similarity(request: Request) -> dict:
        body = await json_request(request, SimilarityRequest)
        texts = check_texts(body.texts, settings)
        images = [decode_base64(s, i) for i, s in enumerate(check_count(body.images, settings, "images"))]
        arrays = await _decode(state, images)
        image_vectors, text_vectors = await asyncio.gather(
            _run(state, state.images, arrays), _run(state, state.texts, texts)
        )
        scores = embedder.scores(np.stack(image_vectors), np.stack(text_vectors))
        return {k: v.tolist() for k, v in scores.items()}

    @app.post(
        "/v1/search",
        dependencies=[auth],
        summary="Search the index by text or by image",
        openapi_extra=image_body(
            "image", many=False, extra={"query": {"type": "string"}, "top_k": {"type": "integer"}}
        ),
    )
    async def search(request: Request) -> dict:
        if state.index is None:
            raise HTTPException(404, "This server has no index (start it with --index)")
        if is_json(request):
            body = validate(SearchRequest, await read_json(request))
            query, image, top_k = body.query, None if body.image is None else decode_base64(body.image, 0), body.top_k
        else:
            form = await read_form(request, settings)
            files = await read_files(form, "image", settings, required=False)
            query, image = form.get("query"), files[0] if files else None
            top_k = int_field(form.get("top_k", "10"), "top_k", 1, 1000)
        if (query is None) == (image is None):
            raise HTTPException(422, "Send a text query or an image (one of them)")
        if image is not None:
            vector = (await _run(state, state.images, await _decode(state, [image])))[0]
        else:
            vector = (await _run(state, state.texts, check_texts([query], settings)))[0]
        hits = await run_in_threadpool(_locked, state, state.index.search, vector, top_k)
        return {
            "results": [
                {"id": h.id, "score": h.score, "name": Path(h.path).name, "duplicates": len(h.duplicates)} for h in hits
            ]
        }

    @app.get(
        "/v1/thumbnails/{file_id}",
        dependencies=[auth],
        summary="A JPEG thumbnail of an indexed image, by its id",
        response_class=Response,
    )
    async def thumbnail(file_id: int) -> Response:
        if state.index is None:
            raise HTTPException(404, "This server has no index")
        path = await run_in_threadpool(_locked, state, state.index.file_path, file_id)
        if path is None:
            raise HTTPException(404, f"No indexed image with id {file_id}")
        data = await run_in_threadpool(_thumbnail, path, settings)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    return app


# ---------------------------------------------------------------------------------------------------------------
# Helpers

_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'",
    "X-Content-Type-Options": "nosniff",
}


def _batcher(state: State, kind: str, fn) -> DynamicBatcher:
    s = state.settings

    def record(size: int, seconds: float) -> None:
        state.metrics.batch_size.labels(kind).observe(size)
        state.metrics.model_seconds.labels(kind).observe(seconds)

    batcher = DynamicBatcher(
        fn,
        executor=state.executor,
        max_batch_size=s.max_batch_size,
        max_wait_ms=s.max_wait_ms,
        max_queue=s.max_queue,
        on_batch=record,
    )
    batcher.start()
    return batcher


async def _run(state: State, batcher: DynamicBatcher | None, items: list) -> list:
    if batcher is None:
        raise HTTPException(503, "The model is not ready yet")
    try:
        return await asyncio.wait_for(batcher.submit(items), state.settings.request_timeout_s)
    except QueueFull as e:
        raise HTTPException(429, f"The server is busy: {e}; retry later", headers={"Retry-After": "1"}) from None
    except asyncio.TimeoutError:
        raise HTTPException(504, f"The request took longer than {state.settings.request_timeout_s:g} s") from None


def _locked(state: State, fn, *args):
    with state.index_lock:
        return fn(*args)


async def _classifier(state: State, labels: list[str], templates: Any) -> np.ndarray:
    """(labels, dim) unit-norm prompt-ensemble classifier, computed through the text batcher and cached."""
    if templates in (None, "none"):
        per_label = [["{}"]] * len(labels)
    elif templates == "auto":
        per_label = [TEMPLATES[guess_language(label)] for label in labels]
    elif isinstance(templates, str):
        try:
            per_label = [templates_for(templates)] * len(labels)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
    else:
        if not templates or any(not isinstance(t, str) or "{}" not in t for t in templates):
            raise HTTPException(422, "templates must be strings with '{}' where the label goes")
        per_label = [templates] * len(labels)
    key = (tuple(labels), json.dumps(per_label))
    if key in state.classifiers:
        state.classifiers.move_to_end(key)
        return state.classifiers[key]
    prompts = [t.format(label) for label, ts in zip(labels, per_label) for t in ts]
    vectors = np.stack(await _run(state, state.texts, prompts))
    rows, start = [], 0
    for ts in per_label:
        mean = vectors[start : start + len(ts)].mean(0)
        rows.append(mean / np.linalg.norm(mean))
        start += len(ts)
    state.classifiers[key] = classifier = np.stack(rows)
    if len(state.classifiers) > 64:
        state.classifiers.popitem(last=False)
    return classifier


async def _decode(state: State, images: list[bytes]) -> list[np.ndarray]:
    """Decode, resize and crop in worker threads (in parallel across requests), checking the limits first."""
    if state.images is not None and not state.images.has_room(len(images)):  # refuse before the costly part
        raise HTTPException(
            429, "The server is busy: the image queue is full; retry later", headers={"Retry-After": "1"}
        )
    processor = state.embedder.processor.image_processor

    def decode(i: int, data: bytes) -> np.ndarray:
        try:
            return processor.prepare(data, index=i)
        except ImageError as e:
            raise HTTPException(422, str(e)) from None

    return list(await asyncio.gather(*(run_in_threadpool(decode, i, d) for i, d in enumerate(images))))


def _crop(image_processor) -> tuple[int, int]:
    return image_processor.crop_size["height"], image_processor.crop_size["width"]


def _thumbnail(path: bytes, settings: ServerSettings) -> bytes:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.thumbnail((settings.thumbnail_size, settings.thumbnail_size))
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=85)
    except OSError:
        raise HTTPException(404, "The indexed image is no longer readable") from None
    return out.getvalue()


def _auth(settings: ServerSettings):
    async def check(request: Request) -> None:
        if settings.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.token.encode()):
            raise HTTPException(401, "Missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check


class _BodyTooLarge(Exception):
    pass


def _install_middleware(app: FastAPI, state: State) -> None:
    settings = state.settings

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"detail": "The body is not valid JSON"}, status_code=400)
        if request.headers.get("content-type", "").split(";")[0] not in ("application/json", ""):
            return JSONResponse({"detail": "Send application/json"}, status_code=415)
        return JSONResponse({"detail": validation_message(errors)}, status_code=422)

    @app.exception_handler(_BodyTooLarge)
    async def too_large(request: Request, exc: _BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": f"The request body is over {settings.max_body_bytes} bytes"}, status_code=413)

    app.add_middleware(_Guard, state=state)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )


class _Guard:
    """ASGI middleware: refuses bodies over the size limit (by Content-Length, and by counting chunked bodies as
    they arrive) and records request metrics."""

    def __init__(self, app, state: State):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.state.settings.max_body_bytes
        start, status, seen = time.perf_counter(), 500, 0
        length = dict(scope["headers"]).get(b"content-length", b"")

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge()
            return message

        async def tracked_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if length.isdigit() and int(length) > limit:
            await JSONResponse({"detail": f"The request body is over {limit} bytes"}, 413)(scope, receive, tracked_send)
        else:
            await self.app(scope, counted_receive, tracked_send)
        endpoint = getattr(scope.get("route"), "path", "other")
        self.state.metrics.requests.labels(endpoint, str(status)).inc()
        self.state.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def serve(settings: ServerSettings, embedder: Any = None) -> None:
    """Runs the service with uvicorn until SIGTERM or Ctrl-C. On SIGTERM, /readyz turns false at once, requests
    keep being served for ``drain_seconds``, then the server stops accepting and finishes the ones in flight."""
    import uvicorn

    app = create_app(settings, embedder)
    state: State = app.state.altclip

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if state.draining:
                return super().handle_exit(sig, frame)
            state.draining = True
            if settings.drain_seconds > 0:
                threading.Timer(settings.drain_seconds, super().handle_exit, (sig, frame)).start()
            else:
                super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=max(30, int(settings.request_timeout_s) + 5),
        access_log=False,
    )
    Server(config).run()


def settings_dict(settings: ServerSettings) -> dict[str, Any]:
    out = asdict(settings)
    if out["token"]:
        out["token"] = "***"
    return out
