"""The default vector store: the vectors in a table of the index's own SQLite database, searched exactly with torch,
or through a faiss HNSW index once the collection is large (and faiss is installed).

The store is given the index's database connection, so that a batch of vectors commits in the same transaction as
the file rows that refer to them: a killed indexer never leaves a row without its vector, nor a vector without its
row. It keeps its own bookkeeping (a version that changes with the vectors, and the version the faiss file was built
from) in a table of its own.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FAISS_NAME = "vectors.faiss"
APPROX_THRESHOLD = 100_000  # build a faiss HNSW index from this many vectors on (when faiss is installed)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,          -- content hash of the image file
    embedding BLOB NOT NULL             -- dim float32 values, unit norm
);
CREATE TABLE IF NOT EXISTS vector_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SQLiteVectors:
    def __init__(self, db: sqlite3.Connection, folder: str | os.PathLike, device: str | None = None):
        self.db = db
        self.folder = Path(folder)
        self.device = device  # where exact search multiplies (the matrix is copied there)
        self.dim: int | None = None
        with db:
            db.executescript(_SCHEMA)
        self._matrix: tuple[int, np.ndarray, list[str]] | None = None  # (version, vectors, hashes)

    def bind(self, dim: int) -> None:
        self.dim = dim

    def close(self) -> None:
        """Nothing to close: the connection is the index's."""

    # -- bookkeeping --------------------------------------------------------------------------------------------

    def _state(self, key: str) -> int | None:
        row = self.db.execute("SELECT value FROM vector_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_state(self, key: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO vector_state (key, value) VALUES (?, ?)", (key, value))

    @property
    def version(self) -> int:
        """Changes whenever vectors are added or removed."""
        return self._state("version") or 0

    def _changed(self) -> None:
        self._set_state("version", self.version + 1)

    # -- the VectorStore protocol ---------------------------------------------------------------------------------

    def existing(self, hashes: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(f"SELECT hash FROM vectors WHERE hash IN ({marks})", chunk))
        return found

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(h, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for h, v in zip(hashes, vectors)]
        if self.db.executemany("INSERT OR IGNORE INTO vectors (hash, embedding) VALUES (?, ?)", rows).rowcount:
            self._changed()

    def remove(self, hashes: Sequence[str]) -> None:
        if self.db.executemany("DELETE FROM vectors WHERE hash = ?", [(h,) for h in hashes]).rowcount:
            self._changed()

    def hashes(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT hash FROM vectors")}

    def vectors(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        marks = ",".join("?" * len(hashes))
        rows = self.db.execute(f"SELECT hash, embedding FROM vectors WHERE hash IN ({marks})", list(hashes))
        return {h: np.frombuffer(blob, dtype=np.float32) for h, blob in rows}

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def problems(self) -> list[str]:
        if not self.dim:
            return []
        bad = self.db.execute("SELECT COUNT(*) FROM vectors WHERE length(embedding) != ?", (4 * self.dim,))
        count = bad.fetchone()[0]
        return [f"{count} vectors have the wrong size"] if count else []

    def matrix(self) -> tuple[np.ndarray, list[str]]:
        """All vectors (N, dim) and their hashes, cached until the vectors change."""
        version = self.version
        if self._matrix is None or self._matrix[0] != version:
            rows = self.db.execute("SELECT hash, embedding FROM vectors ORDER BY id").fetchall()
            data = np.frombuffer(bytearray(b"".join(r[1] for r in rows)), dtype=np.float32)
            dim = self.dim or (len(rows[0][1]) // 4 if rows else 0)
            self._matrix = (version, data.reshape(len(rows), dim), [r[0] for r in rows])
        return self._matrix[1], self._matrix[2]

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        approx = self._faiss()
        if approx is not None:
            scores, ids = approx.search(query[None].astype(np.float32), k)
            by_id = dict(self.db.execute(f"SELECT id, hash FROM vectors WHERE id IN ({','.join(map(str, ids[0]))})"))
            return [(by_id[int(i)], float(s)) for s, i in zip(scores[0], ids[0]) if int(i) in by_id]
        import torch

        matrix, hashes = self.matrix()
        if not len(hashes):
            return []
        m = torch.from_numpy(matrix).to(self.device or "cpu")
        scores = m @ torch.from_numpy(query.astype(np.float32)).to(m.device)
        top = torch.topk(scores, min(k, len(hashes)))
        return [(hashes[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    # -- the approximate index: rebuilt after a run that changed the vectors, used only while it is current --------

    def _faiss(self):
        path = self.folder / FAISS_NAME
        if not path.exists() or self._state("faiss_version") != self.version:
            return None
        try:
            import faiss
        except ImportError:
            return None
        return faiss.read_index(str(path))

    def build_approximate(self, threshold: int = APPROX_THRESHOLD) -> bool:
        """Builds the faiss HNSW index when there are at least ``threshold`` vectors; True when built."""
        if self.count() < threshold or self._state("faiss_version") == self.version:
            return False
        try:
            import faiss
        except ImportError:
            return False
        matrix, _ = self.matrix()
        ids = np.array([r[0] for r in self.db.execute("SELECT id FROM vectors ORDER BY id")], dtype=np.int64)
        hnsw = faiss.IndexHNSWFlat(matrix.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 128
        approx = faiss.IndexIDMap(hnsw)
        approx.add_with_ids(np.ascontiguousarray(matrix), ids)
        tmp = self.folder / (FAISS_NAME + ".tmp")
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))  # private, as the database is
        faiss.write_index(approx, str(tmp))
        os.replace(tmp, self.folder / FAISS_NAME)
        with self.db:
            self._set_state("faiss_version", self.version)
        return True
