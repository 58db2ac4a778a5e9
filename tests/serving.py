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


@contextlib.contextmanager
def serve_process(*args: str, timeout: float = 90) -> Iterator[str]:
    """A real ``altclip serve`` process on a free loopback port, with ``args``; yields the base URL once /readyz says
    ready, and stops the process (SIGTERM, then SIGKILL) afterwards."""
    import subprocess
    import sys
    import tempfile

    port = free_port()
    command = [sys.executable, "-m", "altclip", "serve", "--port", str(port), *args]
    log = tempfile.TemporaryFile()  # not a pipe: nothing reads it while the server runs
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def output() -> str:
        log.seek(0)
        return log.read()[-3000:].decode(errors="replace")

    try:
        wait_until_ready(url, process, timeout, output)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_until_ready(url: str, process, timeout: float, output) -> None:
    """Waits until the ``altclip serve`` process at ``url`` says ready (/readyz); if it exits first or ``timeout``
    seconds pass, kills it and raises RuntimeError with ``output()``, the end of what it printed."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"altclip serve did not start: {output()}")
        time.sleep(0.1)
