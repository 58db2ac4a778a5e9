"""The default vector store: the vectors in a table of the index's own SQLite database, where they commit in the same
transaction as the file rows that refer to them (a killed indexer never leaves a row without its vector, nor a
vector without its row), and searched from files derived from that table at the end of each update:

    vectors-{gen}.f32      the vectors as one contiguous float32 matrix, memory-mapped by readers
    vectors-{gen}.keys     each row's content hash (32 bytes), in the same order
    vectors-{gen}.dead     rows whose content no file refers to any more (left out of results; compacted away)
    vectors-{gen}.faiss    from ``EXACT_BELOW`` vectors on: the approximate index (``approximate``) over the rows

An update appends new vectors to the matrix and adds them to the approximate index (no retraining); after many
removals, or once the collection has outgrown the approximate index's clusters, both are written anew. Files are
written before the state that names them commits, under new names when they are rewritten, so a reader (search,
the service) always finds files matching the state it reads, a crash at any point leaves the previous files in
use, and the next update finishes the job. Vectors committed since the last update (an update in progress) are
searched exactly out of the table, so a search sees every committed vector.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altclip.index import approximate
from altclip.index.matrix import Matrix, fsync
from altclip.index.store import IndexFileError

APPROX_THRESHOLD = approximate.EXACT_BELOW  # build the approximate index from this many vectors on
KEY = "S32"  # content hashes: 32 hex digits
COMPACT_DEAD = 0.2  # rewrite the files once this fraction of their rows is dead
RETRAIN_GROWTH = 4  # rebuild the approximate index once the collection is this many times what it was trained on

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,          -- content hash of the image file
    embedding BLOB NOT NULL             -- dim float32 values, unit norm
);
CREATE TABLE IF NOT EXISTS vector_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# vector_state keys: version (changes with the vectors), and the search files: gen (their name), rows (in the
# matrix), synced (the version they reflect), max_id (the last table id they hold), ann_gen and ann_rows (the
# approximate index's name and the rows it holds, 0 for none), ann_crc (its file's CRC-32, checked before faiss reads
# it), trained (the rows it was trained on), nprobe, rerank.


class SQLiteVectors:
    def __init__(self, db: sqlite3.Connection, folder: str | os.PathLike, device: str | None = None):
        self.db = db
        self.folder = Path(folder)
        self.device = device  # where exact search multiplies (the matrix is copied there) when not the CPU
        self.dim: int | None = None
        self.memory_budget = approximate.DEFAULT_MEMORY_BUDGET
        with db:
            db.executescript(_SCHEMA)
        self._open: dict | None = None  # the search files as last opened: {"state", "matrix", "keys", "dead", "ann"}
        self._delta: tuple[int, np.ndarray, list[str]] | None = None  # (version, vectors, hashes) not yet in files
        self._on_device: tuple[tuple, Any] | None = None  # (the files' key, their matrix on self.device)

    def bind(self, dim: int) -> None:
        self.dim = dim

    def close(self) -> None:
        """Nothing to close: the connection is the index's."""

    # -- bookkeeping --------------------------------------------------------------------------------------------

    def _state(self, key: str) -> int | None:
        row = self.db.execute("SELECT value FROM vector_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def state(self) -> dict[str, int]:
        """Every state value, read in one statement (one snapshot)."""
        return dict(self.db.execute("SELECT key, value FROM vector_state").fetchall())

    def _set_state(self, key: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO vector_state (key, value) VALUES (?, ?)", (key, value))

    @property
    def version(self) -> int:
        """Changes whenever vectors are added or removed."""
        return self._state("version") or 0

    def _changed(self) -> None:
        self._set_state("version", self.version + 1)

    def file(self, gen: int, suffix: str) -> Path:
        return self.folder / f"vectors-{gen}.{suffix}"

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
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT hash, embedding FROM vectors WHERE hash IN ({marks})", chunk)
            found.update((h, np.frombuffer(blob, dtype=np.float32)) for h, blob in rows)
        return found

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def problems(self) -> list[str]:
        if not self.dim:
            return []
        bad = self.db.execute("SELECT COUNT(*) FROM vectors WHERE length(embedding) != ?", (4 * self.dim,))
        count = bad.fetchone()[0]
        return [f"{count} vectors have the wrong size"] if count else []

    # -- searching ----------------------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest (hash, cosine), best first: from the search files (approximately past EXACT_BELOW
        vectors), plus, exactly, the vectors committed since they were written."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        state = self.state()
        try:
            files = self._files(state)
        except IndexFileError:  # an update replaced the files after this state was read: read it again
            if self.state() == state:
                raise
            state = self.state()
            files = self._files(state)
        found: list[tuple[float, str]] = []
        if files is not None:
            scores, rows = self._search_files(files, state, query, k)
            keys = files["keys"]
            found += [(float(s), keys[r].decode()) for s, r in zip(scores, rows)]
        if state.get("version", 0) != state.get("synced", 0):
            vectors, hashes = self._recent(state)
            if len(hashes):
                scores = vectors @ query
                top = np.argsort(-scores, kind="stable")[:k]
                found += [(float(scores[i]), hashes[i]) for i in top]
        best: dict[str, float] = {}
        for score, content in sorted(found, key=lambda t: -t[0]):
            best.setdefault(content, score)
        return list(best.items())[:k]

    def _search_files(self, files: dict, state: dict, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        matrix, dead = files["matrix"], files["dead"]
        wanted = k + len(dead)  # dead rows are dropped after ranking
        if files["ann"] is None:
            if self.device and self.device != "cpu":
                return self._exact_on_device(files, state, query, k)
            return matrix.search(query, k, dead)
        covered = state["ann_rows"]
        params = approximate.SearchParams(state.get("nprobe", 32), max(state.get("rerank", 100), wanted))
        scores, rows = approximate.search(files["ann"], matrix, query, wanted, params)
        if covered < len(matrix):  # rows appended since the approximate index was written (a crash in between)
            tail = Matrix([matrix.parts[0][covered:]], matrix.dim)
            tail_scores, tail_rows = tail.search(query, wanted)
            scores, rows = np.concatenate([scores, tail_scores]), np.concatenate([rows, tail_rows + covered])
        alive = ~np.isin(rows, dead)
        order = np.argsort(-scores[alive], kind="stable")[:k]
        return scores[alive][order], rows[alive][order]

    def _exact_on_device(self, files: dict, state: dict, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        key = (state.get("gen"), state.get("rows"))
        if self._on_device is None or self._on_device[0] != key:
            self._on_device = (key, torch.from_numpy(np.array(files["matrix"].parts[0])).to(self.device))
        m = self._on_device[1]
        scores = m @ torch.from_numpy(query).to(m.device)
        if len(files["dead"]):
            scores[torch.from_numpy(files["dead"]).to(m.device)] = -torch.inf
        top = torch.topk(scores, min(k, len(scores)))
        values, rows = top.values.cpu().numpy(), top.indices.cpu().numpy()
        return values[np.isfinite(values)], rows[np.isfinite(values)]

    def _files(self, state: dict) -> dict | None:
        """The search files of ``state``, opened (memory-mapped) once and kept while the state names them."""
        if not state.get("rows") or not self.dim:
            return None
        key = (state.get("gen"), state.get("rows"), state.get("synced"), state.get("ann_gen"), state.get("ann_rows"))
        if self._open is not None and self._open["key"] == key:
            return self._open
        gen, rows = state["gen"], state["rows"]
        vectors = np.memmap(self._existing(self.file(gen, "f32")), np.float32, "r", shape=(rows, self.dim))
        keys = np.memmap(self._existing(self.file(gen, "keys")), KEY, "r", shape=(rows,))
        dead_file = self.file(gen, "dead")
        dead = np.load(dead_file) if dead_file.exists() else np.empty(0, np.int64)
        ann = None
        if state.get("ann_rows"):
            ann = approximate.read(self.file(state["ann_gen"], "faiss"), dim=self.dim, rows=state["ann_rows"],
                                   expected=state.get("ann_crc"))  # fmt: skip
        self._open = {"key": key, "matrix": Matrix([vectors], self.dim), "keys": keys, "dead": dead, "ann": ann}
        return self._open

    def _existing(self, path: Path) -> Path:
        if not path.exists():
            raise IndexFileError(f"{path} is missing: run `altclip index` on the collection again to write it anew")
        if path.stat().st_size == 0 and path.suffix == ".f32":
            raise IndexFileError(f"{path} is empty")
        return path

    def _recent(self, state: dict) -> tuple[np.ndarray, list[str]]:
        """Vectors committed since the search files were written (an update in progress), cached per version."""
        version = state.get("version", 0)
        if self._delta is None or self._delta[0] != version:
            rows = self.db.execute(
                "SELECT hash, embedding FROM vectors WHERE id > ? ORDER BY id", (state.get("max_id", 0),)
            ).fetchall()
            size = 4 * (self.dim or 0)
            rows = [r for r in rows if len(r[1]) == size]
            data = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim or 0)
            self._delta = (version, data, [r[0] for r in rows])
        return self._delta[1], self._delta[2]

    def matrix(self) -> tuple[Matrix, list[str]]:
        """The search files' matrix and its rows' hashes (after an update: every vector)."""
        files = self._files(self.state())
        if files is None:
            return Matrix([], self.dim or 0), []
        return files["matrix"], [k.decode() for k in files["keys"]]

    # -- writing the search files: after each update, under the index's writer lock --------------------------------

    def build_approximate(self, threshold: int = APPROX_THRESHOLD) -> bool:
        """Brings the search files up to date with the table: new vectors appended (and added to the approximate
        index, built once there are ``threshold`` vectors), removed ones marked dead, the files rewritten when
        too many are. True when the approximate index was built or extended."""
        if not self.dim:
            return False
        state = self.state()
        version = state.get("version", 0)
        needs_ann = self.count() >= max(threshold, approximate.MIN_ROWS)
        if (
            state.get("synced") == version
            and "gen" in state
            and (not needs_ann or state.get("ann_rows") == state["rows"])
        ):
            return False
        gen, rows = state.get("gen", 0), state.get("rows", 0)
        keys = np.memmap(self.file(gen, "keys"), KEY, "r", shape=(rows,)) if rows else np.empty(0, KEY)
        if rows and not self.file(gen, "f32").exists():
            rows, keys = 0, np.empty(0, KEY)
        stored = self.hashes()
        on_file = {k.decode() for k in keys}
        dead = np.array([r for r, k in enumerate(keys) if k.decode() not in stored], np.int64)
        new = stored - on_file
        if rows and len(dead) > COMPACT_DEAD * rows:
            gen, rows, new, dead = gen + 1, 0, stored, np.empty(0, np.int64)  # compact: write every vector anew
        elif not rows:
            gen += 1
        max_id = self.db.execute("SELECT MAX(id) FROM vectors").fetchone()[0] or 0
        added = self._append(gen, rows, new)
        rows += added
        with open(self._create(self.file(gen, "dead.tmp")), "wb") as f:
            np.save(f, dead)
        os.replace(self.file(gen, "dead.tmp"), self.file(gen, "dead"))
        changes = {"gen": gen, "rows": rows, "synced": version, "max_id": max_id}
        built = False
        if needs_ann and rows:
            changes.update(self._approximate(state, gen, rows))
            built = True
        elif not needs_ann:
            changes.update({"ann_rows": 0})
        with self.db:
            for key, value in changes.items():
                self._set_state(key, int(value))
        self._remove_stale_files(changes["gen"], changes.get("ann_gen", state.get("ann_gen")))
        return built

    def _append(self, gen: int, rows: int, new: set[str]) -> int:
        """Writes the vectors of ``new`` hashes after row ``rows`` of the files of ``gen``; how many."""
        if not new:
            return 0
        assert self.dim is not None  # build_approximate returns before, without one
        row_bytes = 4 * self.dim
        written = 0
        with (
            open(self._create(self.file(gen, "f32")), "r+b") as data,
            open(self._create(self.file(gen, "keys")), "r+b") as keys,
        ):
            data.truncate(rows * row_bytes)  # what a crashed update left after the committed rows
            keys.truncate(rows * 32)
            data.seek(rows * row_bytes)
            keys.seek(rows * 32)
            for hashes, blobs in self._blobs(new):
                data.write(b"".join(blobs))
                keys.write(np.array(hashes, KEY).tobytes())
                written += len(hashes)
        fsync(self.file(gen, "f32"))
        fsync(self.file(gen, "keys"))
        return written

    def _create(self, path: Path) -> Path:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # private, as the database is
        return path

    def _blobs(self, wanted: set[str], batch: int = 4096):
        """(hashes, blobs) of the wanted vectors, ``batch`` at a time, in table order."""
        assert self.dim is not None  # build_approximate returns before, without one
        size = 4 * self.dim
        hashes, blobs = [], []
        for content, blob in self.db.execute("SELECT hash, embedding FROM vectors ORDER BY id"):
            if content in wanted and len(blob) == size and len(content) == 32:
                hashes.append(content)
                blobs.append(blob)
                if len(hashes) == batch:
                    yield hashes, blobs
                    hashes, blobs = [], []
        if hashes:
            yield hashes, blobs

    def _approximate(self, state: dict, gen: int, rows: int) -> dict[str, int]:
        """The approximate index over ``rows`` rows of ``gen``'s matrix: the current one extended when it covers a
        prefix of these rows and the collection has not outgrown it, else built anew; tuned by measurement."""
        assert self.dim is not None  # build_approximate returns before, without one
        matrix = Matrix([np.memmap(self.file(gen, "f32"), np.float32, "r", shape=(rows, self.dim))], self.dim)
        index = None
        old_rows, trained = state.get("ann_rows", 0), state.get("trained", 0)
        if state.get("gen") == gen and 0 < old_rows <= rows and rows <= RETRAIN_GROWTH * trained:
            try:
                index = approximate.read(self.file(state["ann_gen"], "faiss"), dim=self.dim, rows=old_rows, mmap=False,
                                         expected=state.get("ann_crc"))  # fmt: skip
            except IndexFileError:
                index = None
        if index is None:
            plan = approximate.plan(rows, self.dim, self.memory_budget, exact_below=0)
            assert plan is not None  # needs_ann: at least approximate.MIN_ROWS rows
            index, trained = approximate.build(matrix, plan), rows
        else:
            approximate.extend(index, matrix, old_rows)
        tuned = approximate.tune(index, matrix)["params"]
        ann_gen = state.get("ann_gen", 0) + 1
        written = approximate.write(index, self.file(ann_gen, "faiss"))
        return {
            "ann_gen": ann_gen,
            "ann_crc": written,
            "ann_rows": rows,
            "trained": trained,
            "nprobe": tuned.nprobe,
            "rerank": tuned.rerank,
        }

    def _remove_stale_files(self, gen: int, ann_gen: int | None) -> None:
        keep = {self.file(gen, s).name for s in ("f32", "keys", "dead")}
        if ann_gen:
            keep.add(self.file(ann_gen, "faiss").name)
        for path in self.folder.glob("vectors*"):
            if path.name not in keep and (path.suffix in (".f32", ".keys", ".dead", ".faiss", ".tmp", ".npy")):
                path.unlink(missing_ok=True)
