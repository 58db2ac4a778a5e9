"""Running the service with uvicorn: the port bound before the model loads (``bind``), connections that do not send
a request's headers in time closed (``header_deadline``), and draining on SIGTERM: ``/readyz`` turns false at once,
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

    Server(uvicorn_config(app, settings)).run(sockets=[sock or bind(settings.host, settings.port)])


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
    uvicorn's goes."""
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS, LOGGING_CONFIG
    from uvicorn.importer import import_from_string

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["altclip.server"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=max(30, int(settings.request_timeout_s) + 5),
        access_log=settings.access_log,
        log_config=log_config,
        http=header_deadline(import_from_string(HTTP_PROTOCOLS["auto"]), settings.header_timeout_s),
    )


def header_deadline(protocol: type[asyncio.Protocol], timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP ``protocol``, closing a connection that has not sent a request's headers ``timeout`` seconds
    after it opened or after the request's first bytes (uvicorn times out idle connections between requests, but
    not half-sent headers, which would hold a connection forever)."""

    class HeaderDeadline(protocol):  # type: ignore[misc, valid-type]
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._awaiting_headers():
                self._disarm()
            elif self._timer is None:  # the first bytes of the next request on a kept-alive connection
                self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline
