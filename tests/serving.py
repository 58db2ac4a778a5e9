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


class InProcess:
    """The app of ``create_app(settings, embedder)`` served in this process, through httpx's ASGI transport, on an
    event loop of its own thread (its lifespan run as a server runs it): ``get``, ``post``, ``head`` and ``request``
    as httpx.Client has them, for tests of routes where a real server is not the point."""

    def __init__(self, settings: ServerSettings, embedder=None):
        import asyncio

        import httpx

        self.app = create_app(settings, embedder)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._call(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://altclip.test",
                                        timeout=60)  # fmt: skip

    def _call(self, coroutine):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def request(self, method: str, url: str, **kwargs):
        return self._call(self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs):
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs):
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, **kwargs):
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._call(self.client.aclose())
        self._call(self._lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def in_process(settings: ServerSettings, embedder=None) -> Iterator[InProcess]:
    served = InProcess(settings, embedder)
    try:
        yield served
    finally:
        served.close()


def until(condition, what: str = "the condition", timeout: float = 60) -> None:
    """Waits until ``condition()`` holds: tests order their steps by what the server shows (its metrics), not by
    sleeping. ``timeout`` only keeps a broken server from hanging the test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


async def until_async(condition, what: str = "the condition", timeout: float = 60) -> None:
    """``until`` for a coroutine ``condition`` in an event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.01)


def metric_value(text: str, name: str) -> float:
    """The value of one Prometheus series in ``text`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
