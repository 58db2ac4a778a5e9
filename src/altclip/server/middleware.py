"""The middleware around every request: the body-size limit with request metrics, and CORS when configured."""

from __future__ import annotations

import time

from fastapi import FastAPI

from altclip.server.errors import BodyTooLarge, error
from altclip.server.metrics import Metrics
from altclip.server.settings import ServerSettings


def install(app: FastAPI, settings: ServerSettings, metrics: Metrics) -> None:
    app.add_middleware(BodyLimitAndMetrics, limit=settings.max_body_bytes, metrics=metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )


class BodyLimitAndMetrics:
    """ASGI middleware: refuses bodies over ``limit`` bytes, by Content-Length before reading and by counting chunked
    bodies as they arrive (``BodyTooLarge``, answered 413), and records each request's status and latency."""

    def __init__(self, app, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, seen = time.perf_counter(), 500, 0
        length = dict(scope["headers"]).get(b"content-length", b"")

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(f"The request body is over {self.limit} bytes")
            return message

        async def tracked_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if length.isdigit() and int(length) > self.limit:
            await error(413, f"The request body is over {self.limit} bytes")(scope, receive, tracked_send)
        else:
            await self.app(scope, counted_receive, tracked_send)
        self.metrics.request(getattr(scope.get("route"), "path", "other"), status, time.perf_counter() - start)
