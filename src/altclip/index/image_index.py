"""A local image index for multilingual search: SQLite (WAL) for file metadata, and the vectors in a store
(``store.VectorStore``): the same SQLite file by default (``sqlite_store``), or Milvus (``milvus``).

Indexing is incremental and crash-safe. Each batch of embedded images is committed in one transaction together
with its file rows, so killing the indexer at any moment leaves a consistent index, and a re-run picks up where
it stopped. Files are identified by content hash: duplicates share one vector, a moved file keeps its vector,
and vectors no file refers to any more are removed at the end of a run. Files that cannot be read are recorded
with the reason and reported, never fatal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from filelock import FileLock, Timeout

from altclip.index.sqlite_store import APPROX_THRESHOLD, SQLiteVectors
from altclip.index.store import IndexMismatchError, VectorStore
from altclip.processing import decoding
from altclip.processing.decode_pool import DecodePool
from altclip.processing.decoding import Preparation
from altclip.utils.files import display, scan

DB_NAME = "index.sqlite3"
LOCK_NAME = "index.lock"  # held by the one process that writes the index
SCHEMA_VERSION = "1"
# Each decoding worker holds one whole file (to hash and decode the same bytes): larger files are recorded as
# failures unread. Images within the pixel limit are far smaller, even uncompressed.
MAX_FILE_BYTES = decoding.MAX_FILE_BYTES


class Embedder(Protocol):
    """What the index needs from a model: see ``altclip.inference.Embedder``."""

    name: str
    dim: int

    preparation: Preparation  # how its image files become pixels

    def decode_pool(self, workers: int | None, images: int | None) -> DecodePool: ...

    def embed_prepared(self, arrays: np.ndarray) -> np.ndarray: ...


@dataclass
class Hit:
    score: float  # cosine similarity
    id: int  # the file's id in this index: opaque, stable while the file stays
    path: str  # for display; non-UTF-8 bytes are shown escaped
    duplicates: list[str] = field(default_factory=list)  # other files with the same content


@dataclass
class UpdateReport:
    found: int = 0  # image files under the roots
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    embedded: int = 0  # images run through the model (duplicates and moved files are not)
    reused: int = 0  # new or changed files whose content was already indexed (duplicates, moves)
    repaired: int = 0  # unchanged files whose vector was missing, embedded again
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    decode_seconds: float = 0.0  # reading, hashing, decoding and resizing, summed over the workers
    model_seconds: float = 0.0
    wait_seconds: float = 0.0  # time the model waited for decoded images


# ---------------------------------------------------------------------------------------------------------------
# The index

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,          -- absolute path, raw file-system bytes (names need not be UTF-8)
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT,                          -- NULL when the file could not be indexed
    error TEXT,                         -- why it could not be indexed
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_hash ON files (hash);
"""


def create_private(db: Path) -> None:
    """A new index's database file, readable by its owner alone (0600), in a folder of its own (0700) where this
    creates the folder: the index lists the path of every indexed file. SQLite gives its -wal and -shm files the
    database's permissions."""
    try:
        db.parent.mkdir(parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(db.parent, 0o700)
    os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))


class ImageIndex:
    """An image index in a directory: ``index.sqlite3`` (file rows, metadata and, with the default store, the
    vectors) and, for large collections, ``vectors.faiss``."""

    def __init__(
        self, path: str | os.PathLike, *, create: bool = True, store: str | None = None, device: str | None = None
    ):
        self.path = Path(path)
        if not (self.path / DB_NAME).exists():
            if not create:
                raise FileNotFoundError(f"No index at {self.path} (run `altclip index DIR` to build one)")
            create_private(self.path / DB_NAME)
        self.db = sqlite3.connect(self.path / DB_NAME, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
        with self.db:
            self.db.executescript(_SCHEMA)
            if self.meta("schema") is None:
                self.set_meta("schema", SCHEMA_VERSION)
                self.set_meta("generation", "0")
        self.store: VectorStore = open_store(store or self.meta("store"), self.db, self.path, device)
        if self.dim:
            self.store.bind(self.dim)
        if store and self.meta("store") is None:
            with self.db:
                self.set_meta("store", store)

    def close(self) -> None:
        self.store.close()
        self.db.close()

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- metadata ---------------------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def model(self) -> str | None:
        return self.meta("model")

    @property
    def dim(self) -> int:
        value = self.meta("dim")
        return int(value) if value else 0

    @property
    def generation(self) -> int:
        return int(self.meta("generation") or 0)

    def bind(self, model: str, dim: int) -> None:
        """Ties the index to one model; refuses another model or embedding size."""
        if self.model is None:
            self.store.bind(dim)
            with self.db:
                self.set_meta("model", model)
                self.set_meta("dim", str(dim))
            return
        if self.model != model or self.dim != dim:
            raise IndexMismatchError(
                f"The index at {self.path} holds embeddings of {self.model} ({self.dim} dimensions); embeddings of "
                f"{model} ({dim} dimensions) cannot be mixed with them. Use --model {self.model}, or another --index"
            )

    # -- queries ----------------------------------------------------------------------------------------------

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM files WHERE hash IS NOT NULL").fetchone()[0]

    def errors(self) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT path, error FROM files WHERE error IS NOT NULL ORDER BY path")
        return [(display(p), e) for p, e in rows]

    def file_path(self, file_id: int) -> bytes | None:
        row = self.db.execute("SELECT path FROM files WHERE id = ? AND hash IS NOT NULL", (file_id,)).fetchone()
        return None if row is None else row[0]

    def display_name(self, file_id: int) -> str | None:
        """An indexed file's path as results show it (None when no indexed file has this id)."""
        path = self.file_path(file_id)
        return None if path is None else display(path)

    def search(self, query: np.ndarray, top_k: int = 10) -> list[Hit]:
        """The ``top_k`` images closest to a unit-norm query embedding; duplicates are folded into one hit."""
        if query.shape != (self.dim,):
            raise IndexMismatchError(f"Query has {query.shape[-1]} dimensions, the index {self.dim}")
        scored = self.store.search(query, top_k)
        if not scored:
            return []
        marks = ",".join("?" * len(scored))
        files: dict[str, list[tuple[int, bytes]]] = {}
        for file_id, path, content in self.db.execute(
            f"SELECT id, path, hash FROM files WHERE hash IN ({marks}) ORDER BY id", [h for h, _ in scored]
        ):
            files.setdefault(content, []).append((file_id, path))
        hits = []
        for content, score in scored:
            if content in files:
                (first_id, first), *rest = files[content]
                hits.append(Hit(score, first_id, display(first), [display(p) for _, p in rest]))
        return hits

    def vectors(self, file_ids: Sequence[int]) -> np.ndarray:
        """The (len(file_ids), dim) vectors of indexed files, by id; KeyError naming an id that is not indexed."""
        marks = ",".join("?" * len(file_ids))
        rows = self.db.execute(f"SELECT id, hash FROM files WHERE id IN ({marks}) AND hash IS NOT NULL", list(file_ids))
        content = dict(rows.fetchall())
        missing = [i for i in file_ids if i not in content]
        if missing:
            raise KeyError(f"No indexed image with id {missing[0]}")
        stored = self.store.vectors(sorted(set(content.values())))
        return np.stack([stored[content[i]] for i in file_ids]) if file_ids else np.zeros((0, self.dim), np.float32)

    # -- indexing ---------------------------------------------------------------------------------------------

    def update(
        self,
        roots: Sequence[str | os.PathLike],
        embedder: Embedder,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        retry_errors: bool = False,
        progress: Callable[[int, int], None] | None = None,
        approx_threshold: int = APPROX_THRESHOLD,
        on_wait: Callable[[], None] | None = None,
        memory_budget: int | None = None,
    ) -> UpdateReport:
        """Brings the index in line with the image files under ``roots``: new and changed files are embedded,
        deleted ones dropped, moved and duplicate ones reuse their vector, and files whose vector is missing get it
        again. One update runs at a time: another waits for it (``on_wait`` is called when it has to). From
        ``approx_threshold`` vectors on, search goes through an approximate index within ``memory_budget`` bytes."""
        if memory_budget is not None and hasattr(self.store, "memory_budget"):
            self.store.memory_budget = memory_budget
        with self.writing(on_wait):
            return self._update(roots, embedder, batch_size, workers, retry_errors, progress, approx_threshold)

    @contextlib.contextmanager
    def writing(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Held while the index is changed: one writer at a time, across threads and processes. Reusing a vector and
        collecting vectors no file refers to are safe only then (another writer's collection could delete a vector
        that this one's new rows are about to refer to). The lock is the operating system's (``flock``), so a killed
        writer never leaves it held."""
        lock = FileLock(self.path / LOCK_NAME, mode=0o600)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _update(self, roots, embedder, batch_size, workers, retry_errors, progress, approx_threshold) -> UpdateReport:
        start = time.perf_counter()
        self.bind(embedder.name, embedder.dim)
        found = scan(roots)
        report = UpdateReport(found=len(found.files), failed=list(found.problems))
        known = {
            p: (s, m, h, e) for p, s, m, h, e in self.db.execute("SELECT path, size, mtime_ns, hash, error FROM files")
        }
        missing = self._missing_vectors()
        todo: list[bytes] = []
        for path, (size, mtime) in found.files.items():
            if path not in known:
                report.new += 1
                todo.append(path)
            elif known[path][:2] != (size, mtime) or (retry_errors and known[path][3] is not None):
                report.changed += 1
                todo.append(path)
            elif known[path][2] in missing:
                report.repaired += 1
                todo.append(path)
            else:
                report.unchanged += 1
        with self.db:  # image-named paths that cannot even be opened (broken links, loops)
            for path, reason in found.failed.items():
                self._put_file(path, 0, 0, None, reason)
                report.failed.append((display(path), reason))

        self._embed_files(todo, found.files, embedder, batch_size, workers, report, progress)

        prefixes = [os.fsencode(os.path.abspath(os.fspath(r))) for r in roots]
        gone = [
            p
            for p in known
            if p not in found.files
            and p not in found.failed
            and any(p == r or p.startswith(r + b"/") for r in prefixes)
        ]
        with self.db:
            self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in gone])
            report.deleted = len(gone)
            self._collect_garbage()
        self.store.build_approximate(approx_threshold)
        report.seconds = time.perf_counter() - start
        return report

    def _embed_files(
        self,
        todo: list[bytes],
        stats: dict[bytes, tuple[int, int]],
        embedder: Embedder,
        batch_size: int,
        workers: int | None,
        report: UpdateReport,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        pending: list[tuple[bytes, str, np.ndarray]] = []  # decoded, waiting for the model
        ready: list[tuple[bytes, str | None, str | None]] = []  # (path, hash, error) rows to write
        in_batch: set[str] = set()
        done = 0

        def flush() -> None:
            nonlocal pending, ready
            vectors = None
            if pending:
                t = time.perf_counter()
                vectors = embedder.embed_prepared(np.stack([a for _, _, a in pending]))
                report.model_seconds += time.perf_counter() - t
                report.embedded += len(pending)
            # Vectors first, then the file rows that refer to them, in one transaction of the index's database: with
            # the SQLite store they commit together; an external store holds the vectors before any row refers to
            # them (a crash in between leaves vectors of no file, collected on the next run).
            with self.db:
                if vectors is not None:
                    self.store.add([h for _, h, _ in pending], vectors)
                self._put_rows(ready + [(p, h, None) for p, h, _ in pending], stats)
            pending, ready = [], []
            in_batch.clear()

        with embedder.decode_pool(workers, len(todo)) as pool:
            preparation = dataclasses.replace(embedder.preparation, max_bytes=MAX_FILE_BYTES)
            loaded = pool.map(_load, todo, preparation, failed=lambda r: (None, None, r, 0.0))
            for path, (content, array, error, seconds), waited in loaded:
                report.wait_seconds += waited
                report.decode_seconds += seconds
                if array is None:
                    ready.append((path, None, error))
                    report.failed.append((display(path), error))
                else:
                    assert content is not None  # prepare_file hashes what it prepares
                    if content in in_batch or self.store.existing([content]):
                        ready.append((path, content, None))
                        report.reused += 1
                    else:
                        pending.append((path, content, array))
                        in_batch.add(content)
                done += 1
                if len(pending) >= batch_size or len(ready) >= 4 * batch_size:
                    flush()
                if progress:
                    progress(done, len(todo))
        flush()

    def _put_rows(self, rows: list[tuple[bytes, str | None, str | None]], stats: dict[bytes, tuple[int, int]]) -> None:
        for path, content, error in rows:
            size, mtime = stats[path]
            self._put_file(path, size, mtime, content, error)
        if rows:
            self.set_meta("generation", str(self.generation + 1))

    def _put_file(self, path: bytes, size: int, mtime: int, content: str | None, error: str | None) -> None:
        self.db.execute(
            "INSERT INTO files (path, size, mtime_ns, hash, error, indexed_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "hash = excluded.hash, error = excluded.error, indexed_at = excluded.indexed_at",
            (path, size, mtime, content, error, time.time()),
        )

    def _missing_vectors(self) -> set[str]:
        """Content hashes that file rows refer to but the store lacks (left by an older version's concurrent runs, or
        by a store changed behind the index's back); their files are embedded again."""
        referenced = {r[0] for r in self.db.execute("SELECT DISTINCT hash FROM files WHERE hash IS NOT NULL")}
        return referenced - self.store.hashes() if referenced else set()

    def _collect_garbage(self) -> None:
        """Drops vectors no file refers to any more (deleted, changed or moved-away content)."""
        referenced = {r[0] for r in self.db.execute("SELECT DISTINCT hash FROM files WHERE hash IS NOT NULL")}
        orphans = sorted(self.store.hashes() - referenced)
        if orphans:
            self.store.remove(orphans)
            self.set_meta("generation", str(self.generation + 1))

    def check(self) -> list[str]:
        """Consistency problems, if any: rows without vectors, vectors without rows, malformed vectors."""
        problems = []
        referenced = {r[0] for r in self.db.execute("SELECT DISTINCT hash FROM files WHERE hash IS NOT NULL")}
        stored = self.store.hashes()
        if referenced - stored:
            problems.append(f"{len(referenced - stored)} file rows refer to missing vectors")
        if stored - referenced:
            problems.append(f"{len(stored - referenced)} vectors belong to no file")
        problems += self.store.problems()
        both = self.db.execute("SELECT COUNT(*) FROM files WHERE (hash IS NULL) = (error IS NULL)").fetchone()[0]
        if both:
            problems.append(f"{both} file rows have both or neither of a hash and an error")
        return problems


# Worker: read, hash, decode and resize one file -> (hash, pixels, "", seconds) or (None, None, reason, seconds).
# A module attribute, so that a test can wrap it (in threads).
_load = decoding.prepare_file


def default_index_path() -> Path:
    """``$ALTCLIP_INDEX``, else ``$XDG_DATA_HOME/altclip/index`` (``~/.local/share/altclip/index``)."""
    if os.environ.get("ALTCLIP_INDEX"):
        return Path(os.environ["ALTCLIP_INDEX"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "altclip" / "index"


def open_store(url: str | None, db: sqlite3.Connection, folder: Path, device: str | None) -> VectorStore:
    """The vector store a ``--store`` URL names: ``sqlite`` (or None, the default) or ``milvus://...``."""
    if url is None or url == "sqlite":
        return SQLiteVectors(db, folder, device)
    if url.startswith("milvus"):
        from altclip.index.milvus import MilvusVectors

        return MilvusVectors(url)
    raise ValueError(f"Unknown vector store {url!r}; use 'sqlite' (default) or 'milvus://...'")
