"""Helpers for the service tests: a real uvicorn server on 127.0.0.1 (configured as ``altclip serve`` configures
it), in a thread of the test process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from altclip.server import ServerSettings, create_app
from altclip.server.run import uvicorn_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(settings: ServerSettings, embedder=None) -> Iterator[str]:
    """Serves ``create_app(settings, embedder)`` on a free loopback port; yields the base URL."""
    settings.host, settings.port = "127.0.0.1", free_port()
    app = create_app(settings, embedder)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(30)
