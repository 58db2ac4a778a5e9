"""Running the service with uvicorn, and draining it on SIGTERM: ``/readyz`` turns false at once, requests keep
being served for ``drain_seconds``, then the server stops accepting and finishes the ones in flight."""

from __future__ import annotations

import threading
from typing import Any

from altclip.inference import Embedder
from altclip.server.app import create_app
from altclip.server.service import Service
from altclip.server.settings import ServerSettings


def serve(settings: ServerSettings, embedder: Embedder | None = None) -> None:
    """Runs the service until SIGTERM or Ctrl-C."""
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

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=max(30, int(settings.request_timeout_s) + 5),
        access_log=settings.access_log,
    )
    Server(config).run()
