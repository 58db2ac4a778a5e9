"""Running the service with uvicorn: the port bound before the model loads (``bind``), connections that do not send
a request's headers in time closed (``HeaderDeadline``), and draining on SIGTERM: ``/readyz`` turns false at once,
requests keep being served for ``drain_seconds``, then the server stops accepting and finishes the ones in flight."""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
from typing import Any

from fastapi import FastAPI

from altclip.inference import Embedder
from altclip.server.app import create_app
from altclip.server.service import Service
from altclip.server.settings import ServerSettings


def serve(settings: ServerSettings, embedder: Embedder | None = None, sock: socket.socket | None = None) -> None:
    """Runs the service until SIGTERM or Ctrl-C, on ``sock`` (from ``bind``) or on the settings' host and port."""
    import uvicorn

    sock = sock or bind(settings.host, settings.port)  # before the model loads: a port in use is said at once
    app = create_app(settings, embedder)
    service: Service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if service.draining:
                return super().handle_exit(sig, frame)
            service.draining = True
            if settings.drain_seconds > 0:
                threading.Timer(settings.drain_seconds, super().handle_exit, (sig, frame)).start()
            else:
                super().handle_exit(sig, frame)

    Server(uvicorn_config(app, settings)).run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (OSError when the address is taken or not ours), for ``serve``: binding
    before the model loads tells a user at once that the port is in use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port at once
        # Connections accepted from it inherit TCP_NODELAY: a response is written as headers then body, and without
        # it the body waits for the client's delayed ACK of the headers (40 ms on every request of a kept-alive
        # connection after its first: measured by benchmarks/search_scale.py --http)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(app: FastAPI, settings: ServerSettings, log_level: str = "info"):
    """uvicorn's settings for the app; the service's own log (``altclip.server``: errors, clients gone) goes where
    uvicorn's goes. Clients are who their connections say (no proxy headers): the service builds no answer from
    what a request says about where it came from."""
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS, LOGGING_CONFIG
    from uvicorn.importer import import_from_string

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["altclip.server"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    deadline = HeaderDeadline(settings.header_timeout_s)
    return uvicorn.Config(
        deadline.app(app),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=max(30, int(settings.request_timeout_s) + 5),
        access_log=settings.access_log,
        log_config=log_config,
        proxy_headers=False,
        http=deadline.protocol(import_from_string(HTTP_PROTOCOLS["auto"])),
    )


class HeaderDeadline:
    """Closes a connection that has not sent a request's headers ``timeout`` seconds after it opened or after its
    last answer (uvicorn times out idle connections between requests, but not half-sent headers, which would hold a
    connection forever).

    Built on documented interfaces only: the protocol (uvicorn's, subclassed through asyncio's ``Protocol``
    methods) arms a timer per connection, and the app (an ASGI wrapper) says when a request's headers have arrived
    (the app is called: the timer is disarmed) and when the request is over (armed again); connections are matched
    by their peer address, which is the ASGI scope's ``client`` (uvicorn's proxy headers off)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.connections: dict[tuple, Any] = {}  # peer address -> the connection's protocol

    def protocol(self, base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        deadline = self

        class Protocol(base):  # type: ignore[misc, valid-type]  # the base is uvicorn's protocol, chosen at run time
            _deadline_timer: asyncio.TimerHandle | None

            def connection_made(self, transport) -> None:
                super().connection_made(transport)
                self._deadline_transport, self._deadline_timer, self._requests = transport, None, 0
                self._peer = _address(transport.get_extra_info("peername"))
                if self._peer is not None:
                    deadline.connections[self._peer] = self
                self._deadline_arm()

            def connection_lost(self, exc: Exception | None) -> None:
                self._deadline_disarm()
                if self._peer is not None and deadline.connections.get(self._peer) is self:
                    del deadline.connections[self._peer]
                super().connection_lost(exc)

            def request_started(self) -> None:
                self._requests += 1
                self._deadline_disarm()

            def request_done(self) -> None:
                self._requests -= 1
                if not self._requests:
                    self._deadline_arm()

            def _deadline_arm(self) -> None:
                self._deadline_disarm()
                self._deadline_timer = asyncio.get_running_loop().call_later(deadline.timeout, self._deadline_expire)

            def _deadline_disarm(self) -> None:
                if self._deadline_timer is not None:
                    self._deadline_timer.cancel()
                    self._deadline_timer = None

            def _deadline_expire(self) -> None:
                self._deadline_timer = None
                if not self._requests and not self._deadline_transport.is_closing():
                    self._deadline_transport.close()

        return Protocol

    def app(self, app):
        async def tracked(scope, receive, send):
            connection = self.connections.get(_address(scope.get("client"))) if scope["type"] == "http" else None
            if connection is None:
                return await app(scope, receive, send)
            connection.request_started()
            try:
                await app(scope, receive, send)
            finally:
                connection.request_done()

        return tracked


def _address(peer: Any) -> tuple | None:
    return tuple(peer[:2]) if isinstance(peer, (tuple, list)) and len(peer) >= 2 else None
