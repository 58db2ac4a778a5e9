"""The middleware around every request, outermost first:

- ``RequestMetrics`` records each request's status and latency. An error that no handler took is logged with its
  traceback and answered 500 with a JSON body (never a traceback); a client that went away before its answer was
  sent is logged in one line and counted as status 499.
- ``HeadAsGet``: HEAD on a GET route is that GET, its answer's body left out.
- CORS, when configured (so that error answers carry its headers too).
- ``Admission``: the API serves at most ``max_queue`` requests at once, whatever their size; others get 429 at
  once, before their body is read. Probes, metrics, the page and the API document are not counted (``admitted``).
- ``Lifetime``: a request ends when its answer is sent, when its client goes away, or ``request_timeout_s`` after it
  began (504), whichever comes first; the work of a request that ends otherwise is cancelled. A client that closes
  the connection after its whole answer was sent has not gone away early.
- ``BodyLimit``: bodies over ``max_body_bytes`` get 413, by Content-Length before reading and by counting chunked
  bodies as they arrive.

They are ASGI middleware, so every route, present or future, gets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI
from starlette.routing import Match

from altclip.server.errors import BodyTooLarge, InternalError, QueueFull, Timeout, response
from altclip.server.metrics import Metrics
from altclip.server.settings import ServerSettings

log = logging.getLogger("altclip.server")
CLIENT_GONE = 499  # the status nginx logs for requests whose client closed the connection first


class ClientGone(Exception):
    """The client closed the connection before its answer was sent."""


def install(app: FastAPI, settings: ServerSettings, metrics: Metrics) -> None:
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Lifetime, timeout=settings.request_timeout_s)
    app.add_middleware(Admission, limit=settings.max_queue, metrics=metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.router.routes)


def admitted(method: str, path: str) -> bool:
    """Whether a request counts against ``max_queue``: every API request (``/v1/...``, and any POST)."""
    return method == "POST" or path.startswith("/v1/")


class RequestMetrics:
    def __init__(self, app, metrics: Metrics, routes: list):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), None

        async def tracked_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        where = f"{scope['method']} {scope['path']}"
        try:
            await self.app(scope, receive, tracked_send)
        except ClientGone:
            status = CLIENT_GONE
            log.info("%s: the client went away; its work was cancelled", where)
        except asyncio.CancelledError:
            status = status or CLIENT_GONE  # the server is stopping
            raise
        except Exception:
            log.exception("%s failed", where)
            if status is None:
                status = 500
                with contextlib.suppress(Exception):  # the client may be gone too
                    await response(InternalError("see the server's log"), scope["path"])(scope, receive, send)
        finally:
            self.metrics.request(self._endpoint(scope), status or 500, time.perf_counter() - start)

    def _endpoint(self, scope) -> str:
        """The route's path template (a bounded set of labels), also for requests answered before routing."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", "other")


class HeadAsGet:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class Admission:
    def __init__(self, app, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.active = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not admitted(scope["method"], scope["path"]):
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            busy = QueueFull(f"it is serving {self.active} requests (limit {self.limit})")
            return await response(busy, scope["path"])(scope, receive, send)
        self.active += 1
        try:
            with self.metrics.in_flight.track_inprogress():
                await self.app(scope, receive, send)
        finally:
            self.active -= 1


class Lifetime:
    def __init__(self, app, timeout: float):
        self.app, self.timeout = app, timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_read, gone = asyncio.Event(), asyncio.Event()
        started = answered = False

        async def app_receive():
            # Once the app has read the whole body, the watcher below owns the connection's receive channel.
            if body_read.is_set():
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message) -> None:
            nonlocal started, answered
            started = started or message["type"] == "http.response.start"
            await send(message)
            answered = answered or (message["type"] == "http.response.body" and not message.get("more_body", False))

        async def watch() -> None:
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        work = asyncio.ensure_future(self.app(scope, app_receive, app_send))
        watcher, went = asyncio.ensure_future(watch()), asyncio.ensure_future(gone.wait())
        try:
            done, _ = await asyncio.wait({work, went}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            went.cancel()
            if not work.done():
                work.cancel()  # a timeout, a client gone, or the server stopping: the work stops
                with contextlib.suppress(BaseException):
                    await work
        if work in done and (work.exception() is None or not gone.is_set()):
            return work.result()
        if answered:  # the client closed the connection after its whole answer: what was left of the work was not its
            return
        if gone.is_set():  # (the work may have failed for it: Starlette raises ClientDisconnect mid-body)
            raise ClientGone()
        if not started:
            timeout = Timeout(f"The request took longer than {self.timeout:g} s")
            await response(timeout, scope["path"])(scope, receive, send)


class BodyLimit:
    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = BodyTooLarge(f"The request body is over {self.limit} bytes")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await response(too_large, scope["path"])(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_large
            return message

        await self.app(scope, counted_receive, send)
