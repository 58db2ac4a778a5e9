"""Where images are decoded: a pool of threads, or of worker processes that each decode one image at a time within
a budget. The service, ``altclip index``, ``embed`` (also inside each Ray task), training and evaluation decode
through one.

**Processes** (``kind="processes"``) give each image the budget of one worker: ``cpu_seconds`` of CPU time
(``RLIMIT_CPU``, set afresh before each image: a worker over it is ended by the kernel) and ``memory_bytes`` of
address space beyond what the worker started with (``RLIMIT_AS``: an allocation over it fails, and the image gets
that failure). A worker that crashes, runs out of time or is cancelled is replaced, and only the image it held
fails; cancelling a running image (``cancel``) ends its worker, so the work stops. A worker imports only the
decoding modules (Pillow and numpy: about 30 MB and a quarter of a second), never torch or the rest of the package,
and leaves with its parent. Images travel to workers as paths (a worker reads the file) or bytes, and come back as
(H, W, 3) uint8 arrays.

**Threads** (``kind="threads"``) share the process: Pillow releases the GIL while it decodes and resizes, so they
run in parallel too, but the Python between those calls does not, and no budget applies beyond the checks made
before decoding (``decoding.open_image``); a running image cannot be stopped.

``kind="auto"`` takes ``$ALTCLIP_DECODE`` (``threads`` or ``processes``) where it is set, else ``choose_kind``'s
rule, from ``benchmarks/jpeg_throughput.py``, which measures both kinds on the library's own paths: processes for
runs of at least ``MIN_IMAGES`` images, which repay the start of the workers, threads for fewer.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection, Pipe
from typing import Any, TypeVar

from altclip.processing.decoding import ImageError, failure

T = TypeVar("T")
R = TypeVar("R")

KINDS = ("threads", "processes")
ENVIRONMENT = "ALTCLIP_DECODE"  # forces the kind of every "auto" pool: threads or processes
CPU_SECONDS = 60.0  # per image, in a worker process
MIN_IMAGES = 64  # "auto" decodes fewer images than this in threads: starting processes would cost more
MAX_PROCESSES = 16  # worker processes by default: one per CPU, up to the most measured (each may hold a 512 MiB file)
AHEAD_BYTES = 256 * 2**20  # map: bytes items (files read by the caller, tar members) submitted ahead of the results
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A worker's first lines: the current folder leaves the import path first (it may hold the very files being decoded:
# a numpy.py there must not be imported), then the package's folder stands in for the package, whose __init__ (the
# public API, torch) is not run; the decoding modules import from it as usual. Arguments: the folder, the socket's
# descriptor, the CPU seconds per image, the memory budget in bytes.
_BOOT = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "import types; package = types.ModuleType('altclip'); package.__path__ = [sys.argv[1]]; "
    "sys.modules['altclip'] = package; from altclip.processing.decode_pool import serve; "
    "serve(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))"
)


def memory_budget(max_pixels: int, max_bytes: int) -> int:
    """The memory a worker may use for one image of at most ``max_pixels`` pixels and ``max_bytes`` bytes: an RGBA
    image peaks at 16 bytes per pixel (decoded, composited onto white, converted to RGB, resized), its bytes are
    held twice (received, and opened), with a margin."""
    return 24 * max_pixels + 2 * max_bytes + 256 * 2**20


def _size(item: Any) -> int:
    return len(item) if isinstance(item, (bytes, bytearray, memoryview)) else 0


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_kind(kind: str = "auto", images: int | None = None) -> str:
    """``threads`` or ``processes``: ``kind`` itself when it names one, else ``$ALTCLIP_DECODE`` when set, else the
    measured rule: processes, unless fewer than ``MIN_IMAGES`` images are to be decoded.

    Why: threads stop scaling where the Python between Pillow's calls, which holds the GIL, fills a core, and they
    share that core with the thread feeding the model. On 16 cores of an H200 machine 16 processes decoded 2,380
    JPEGs/s against 1,355 for 16 threads; on this project's 2-core machine, processes were ahead end to end from one
    worker on (tiny model: 67 against 46 images/s with 1 worker, 58 against 47 with 2). Starting the workers costs
    about 0.3 s, which 50 to 80 images earn back. Where processes cannot run (no POSIX, no interpreter to start), threads."""
    if kind == "auto":
        kind = os.environ.get(ENVIRONMENT, "").strip().lower() or "auto"
        if kind != "auto" and kind not in KINDS:
            raise ValueError(f"{ENVIRONMENT} must be threads or processes, not {kind!r}")
    if kind not in ("auto", *KINDS):
        raise ValueError(f"Images are decoded in threads or processes (or auto), not {kind!r}")
    if kind == "auto":
        kind = "threads" if images is not None and images < MIN_IMAGES else "processes"
    return kind if kind == "threads" or _processes_possible() else "threads"


def _processes_possible() -> bool:
    return os.name == "posix" and bool(sys.executable)


class DecodePool:
    """``workers`` threads or worker processes (``kind``: see the module's description) running decoding
    functions. Functions sent to processes must be importable without torch (``altclip.processing.decoding``'s),
    and their arguments picklable."""

    def __init__(
        self,
        workers: int | None = None,
        kind: str = "auto",
        *,
        images: int | None = None,
        cpu_seconds: float = CPU_SECONDS,
        memory_bytes: int = 0,
    ):
        self.kind = choose_kind(kind, images)
        # Threads beyond 8 add little (the GIL); processes use every CPU, up to MAX_PROCESSES.
        default = min(MAX_PROCESSES if self.kind == "processes" else 8, available_cpus())
        self.workers = max(1, workers or default)
        self.cpu_seconds, self.memory_bytes = cpu_seconds, memory_bytes
        self.closed = False
        if self.kind == "threads":
            self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        else:
            self._tasks: queue.SimpleQueue = queue.SimpleQueue()
            self._workers = [_Worker(self) for _ in range(self.workers)]

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, fn: Callable[..., R], /, *args: Any) -> Future:
        """``fn(*args)`` in the pool. Its result, or what it raised; in a process that crashed, ran out of time or
        was cancelled, an ``ImageError`` saying so."""
        if self.closed:
            raise RuntimeError("The decoding pool is closed")
        if self.kind == "threads":
            return self._threads.submit(fn, *args)
        future: Future = Future()
        self._tasks.put((future, fn, args))
        return future

    def cancel(self, future: Future) -> None:
        """Cancels a task: one still waiting never runs, and a running one stops (in a process; a thread runs to
        its end)."""
        if future.cancel() or self.kind == "threads":
            return
        for worker in self._workers:
            worker.stop(future)

    async def run(self, fn: Callable[..., R], /, *args: Any) -> R:
        """``submit``, awaited: cancelling the awaiting task cancels the work."""
        future = self.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.cancel(future)
            raise

    def map(
        self,
        fn: Callable[..., R],
        items: Iterable[T],
        *args: Any,
        failed: Callable[[str], R],
        prefetch: int | None = None,
    ) -> Iterator[tuple[T, R, float]]:
        """``(item, fn(item, *args), seconds waited for it)`` in input order, at most ``prefetch`` items and
        ``AHEAD_BYTES`` of bytes items (and one more) ahead. A task the pool could not finish (its process crashed or
        ran out of time) gives ``failed(reason)``."""
        prefetch = prefetch or max(64, 4 * self.workers)
        items = iter(items)
        pending: deque[tuple[T, Future]] = deque()
        ahead = 0  # bytes of the bytes items submitted and not yet given back

        def fill() -> None:
            nonlocal ahead
            while len(pending) < prefetch and ahead < AHEAD_BYTES:
                for item in itertools.islice(items, 1):
                    pending.append((item, self.submit(fn, item, *args)))
                    ahead += _size(item)
                    break
                else:
                    return

        try:
            fill()
            while pending:
                item, future = pending.popleft()
                ahead -= _size(item)
                start = time.perf_counter()
                try:
                    result = future.result()
                except ImageError as e:
                    result = failed(e.reason)
                waited = time.perf_counter() - start
                fill()
                yield item, result, waited
        finally:
            for _, future in pending:
                self.cancel(future)

    def close(self) -> None:
        """Stops the pool: waiting tasks are cancelled, and worker processes end (running tasks with them)."""
        if self.closed:
            return
        self.closed = True
        if self.kind == "threads":
            self._threads.shutdown(wait=False, cancel_futures=True)
            return
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            task[0].cancel()
        for _ in self._workers:
            self._tasks.put(None)
        for worker in self._workers:
            worker.end()


class _Worker:
    """One worker process, and the thread of this process that hands it tasks one at a time and waits for each."""

    def __init__(self, pool: DecodePool):
        self.pool = pool
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.connection: Connection | None = None
        self.current: Future | None = None  # the task the process is running
        self.cancelled = False
        self._start()
        self.thread = threading.Thread(target=self._serve, name="decode-feeder", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        ours, theirs = Pipe()
        debug = bool(os.environ.get("ALTCLIP_DEBUG"))
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        arguments = [_PACKAGE, str(theirs.fileno()), repr(self.pool.cpu_seconds), str(self.pool.memory_bytes)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, *arguments],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if debug else subprocess.DEVNULL,
            env=environment,
            start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle
        )
        theirs.close()
        self.connection = ours

    def _serve(self) -> None:
        while True:
            task = self.pool._tasks.get()
            if task is None:
                return
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            with self.lock:
                self.current, self.cancelled = future, False
            try:
                self._run(future, fn, args)
            finally:
                with self.lock:
                    self.current = None

    def _run(self, future: Future, fn, args) -> None:
        try:
            message = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # the caller's mistake, not the image's
            future.set_exception(e)
            return
        if self.process is None or self.process.poll() is not None:
            self._replace()  # it ended between tasks (killed from outside)
        if self.connection is None:  # the pool is closing
            future.set_exception(ImageError("could not be decoded: cancelled"))
            return
        try:
            self.connection.send_bytes(message)
            ok, value = self.connection.recv()
        except (EOFError, OSError):
            with self.lock:  # a late cancel must not end the process that replaces this one
                self.current = None
            future.set_exception(ImageError(f"could not be decoded: {self._ended()}"))
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _ended(self) -> str:
        """Why the process ended while it held an image; a new one takes its place."""
        process = self.process
        assert process is not None  # the process that held the image
        if process.poll() is None:
            process.kill()
        code = process.wait()
        if self.cancelled:
            reason = "cancelled"
        elif code == -signal.SIGXCPU:
            reason = f"decoding it took more than {self.pool.cpu_seconds:g} s of CPU time"
        elif code < 0:
            reason = f"the decoding process ended ({signal.Signals(-code).name})"
        else:
            reason = f"the decoding process ended (exit status {code})"
        self._replace()
        return reason

    def _replace(self) -> None:
        if self.connection is not None:
            self.connection.close()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = self.connection = None
        if not self.pool.closed:
            self._start()

    def stop(self, future: Future) -> None:
        """Ends the process if it is running ``future``."""
        with self.lock:
            if self.current is future and self.process is not None:
                self.cancelled = True
                self.process.kill()

    def end(self) -> None:
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
        self.thread.join(5)
        if self.process is not None:
            self.process.wait()
        if self.connection is not None:
            self.connection.close()


# ---------------------------------------------------------------------------------------------------------------
# In the worker process


def serve(descriptor: int, cpu_seconds: float, memory_bytes: int) -> None:
    """A worker's loop: a task (a function and its arguments, pickled) in, ``(True, result)`` or ``(False, the
    exception)`` out, until the parent closes the connection."""
    import resource

    import numpy  # noqa: F401  (imported before the memory budget is set: the budget is for images)

    from altclip.processing import decoding  # noqa: F401

    connection = Connection(descriptor)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes > 0 and _address_space():
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _address_space() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    while True:
        try:
            message = connection.recv_bytes()
        except (EOFError, OSError):
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + cpu_seconds)
        resource.setrlimit(resource.RLIMIT_CPU, (soft if cpu_hard < 0 else min(soft, cpu_hard), cpu_hard))
        try:
            fn, args = pickle.loads(message)
            outcome = (True, fn(*args))
        except MemoryError as e:
            outcome = (False, ImageError(f"could not be decoded: {failure(e)}"))
        except Exception as e:
            outcome = (False, e)
        try:
            connection.send(outcome)
        except Exception as e:  # a result or an exception that does not pickle
            connection.send((False, RuntimeError(f"a decoding result could not be sent back: {e}")))


def _address_space() -> int:
    """This process's virtual memory size in bytes (0 where /proc does not say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
