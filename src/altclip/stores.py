"""Where an image index keeps its vectors, keyed by content hash: in its own SQLite file (the default, exact search
with torch, or a faiss HNSW index once the collection is large), or in Milvus (``milvus.py``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import sqlite3

    from altclip.index import ImageIndex

FAISS_NAME = "vectors.faiss"
APPROX_THRESHOLD = 100_000  # build a faiss HNSW index from this many vectors on (when faiss is installed)


class VectorStore(Protocol):
    """Where the vectors live, keyed by content hash. ``add`` must be idempotent."""

    def existing(self, hashes: Sequence[str]) -> set[str]: ...

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None: ...

    def remove(self, hashes: Sequence[str]) -> None: ...

    def hashes(self) -> set[str]: ...

    def count(self) -> int: ...

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]: ...


class SQLiteVectors:
    """Vectors in the index's own SQLite file, written in the same transactions as the file rows."""

    def __init__(self, index: ImageIndex, device: str | None = None):
        self.index = index
        self.device = device
        self._matrix: tuple[int, np.ndarray, list[str]] | None = None  # (generation, vectors, hashes)

    @property
    def db(self) -> sqlite3.Connection:
        return self.index.db

    def existing(self, hashes: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(f"SELECT hash FROM vectors WHERE hash IN ({marks})", chunk))
        return found

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(h, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for h, v in zip(hashes, vectors)]
        self.db.executemany("INSERT OR IGNORE INTO vectors (hash, embedding) VALUES (?, ?)", rows)

    def remove(self, hashes: Sequence[str]) -> None:
        self.db.executemany("DELETE FROM vectors WHERE hash = ?", [(h,) for h in hashes])

    def hashes(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT hash FROM vectors")}

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def matrix(self) -> tuple[np.ndarray, list[str]]:
        """All vectors (N, dim) and their hashes, cached until the index changes."""
        generation = self.index.generation
        if self._matrix is None or self._matrix[0] != generation:
            rows = self.db.execute("SELECT hash, embedding FROM vectors ORDER BY id").fetchall()
            data = np.frombuffer(bytearray(b"".join(r[1] for r in rows)), dtype=np.float32)
            self._matrix = (generation, data.reshape(len(rows), self.index.dim), [r[0] for r in rows])
        return self._matrix[1], self._matrix[2]

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        approx = self._faiss()
        if approx is not None:
            scores, ids = approx.search(query[None].astype(np.float32), k)
            hashes = dict(self.db.execute(f"SELECT id, hash FROM vectors WHERE id IN ({','.join(map(str, ids[0]))})"))
            return [(hashes[int(i)], float(s)) for s, i in zip(scores[0], ids[0]) if int(i) in hashes]
        import torch

        matrix, hashes = self.matrix()
        if not len(hashes):
            return []
        m = torch.from_numpy(matrix).to(self.device or "cpu")
        scores = m @ torch.from_numpy(query.astype(np.float32)).to(m.device)
        top = torch.topk(scores, min(k, len(hashes)))
        return [(hashes[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    # The approximate index: rebuilt after a run that changed the vectors, used only while it is current.

    def _faiss(self):
        path = self.index.path / FAISS_NAME
        if not path.exists() or self.index.meta("faiss_generation") != str(self.index.generation):
            return None
        try:
            import faiss
        except ImportError:
            return None
        return faiss.read_index(str(path))

    def build_approximate(self, threshold: int = APPROX_THRESHOLD) -> bool:
        """Builds the faiss HNSW index when there are at least ``threshold`` vectors; True when built."""
        if self.count() < threshold or self.index.meta("faiss_generation") == str(self.index.generation):
            return False
        try:
            import faiss
        except ImportError:
            return False
        matrix, _ = self.matrix()
        ids = np.array([r[0] for r in self.db.execute("SELECT id FROM vectors ORDER BY id")], dtype=np.int64)
        hnsw = faiss.IndexHNSWFlat(self.index.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 128
        approx = faiss.IndexIDMap(hnsw)
        approx.add_with_ids(np.ascontiguousarray(matrix), ids)
        tmp = self.index.path / (FAISS_NAME + ".tmp")
        faiss.write_index(approx, str(tmp))
        os.replace(tmp, self.index.path / FAISS_NAME)
        with self.db:
            self.index.set_meta("faiss_generation", str(self.index.generation))
        return True


def open_store(index: ImageIndex, url: str | None, device: str | None) -> VectorStore:
    if url is None or url == "sqlite":
        return SQLiteVectors(index, device)
    if url.startswith("milvus"):
        from altclip.milvus import MilvusVectors

        return MilvusVectors(url, index)
    raise ValueError(f"Unknown vector store {url!r}; use 'sqlite' (default) or 'milvus://...'")
