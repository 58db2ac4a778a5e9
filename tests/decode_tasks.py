"""Tasks for the decoding-pool tests, run in worker processes: they import nothing of the package or of torch, and
``tests/`` is put on the workers' PYTHONPATH by the tests that send them."""

from __future__ import annotations

import os
import time
from pathlib import Path


def pid(*_) -> int:
    return os.getpid()


def spin(*_) -> None:
    """Runs until its CPU budget ends it."""
    while True:
        pass


def allocate(size: int, *_) -> int:
    return len(bytearray(size))


def crash(*_) -> None:
    os.abort()


def block(folder: str, *_) -> int:
    """Announces itself (a file named by the task and the process), then waits for ``folder/release``."""
    Path(folder, f"started-{os.getpid()}-{time.monotonic_ns()}").touch()
    while not Path(folder, "release").exists():
        time.sleep(0.01)
    return os.getpid()
