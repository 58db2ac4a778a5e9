"""The exact vectors of an index as one (N, dim) matrix over memory-mapped files, read without loading them: the
image index's own ``vectors.f32``, or the ``img_emb_{i}.npy`` shards of ``altclip embed`` (float32 or float16).

Exact search multiplies the matrix in chunks, so its memory stays bounded whatever N is; re-ranking an approximate
index's candidates reads only their rows.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from altclip.index.store import IndexFileError

CHUNK_ROWS = 65_536  # rows multiplied at once by exact search: 192 MB of float32 at 768 dimensions


def open_npy(path: Path, dim: int | None = None, random_access: bool = False) -> np.ndarray:
    """A 2-D float32 or float16 ``.npy`` file, memory-mapped; IndexFileError naming it when it is missing, is not an
    npy file, has another shape or type, or is shorter than its header says. ``random_access``: see
    ``advise_random``."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise IndexFileError(f"{path} is missing") from None
    except (OSError, ValueError, EOFError) as e:  # not npy, a damaged header, truncated data (mmap too short)
        raise IndexFileError(f"{path} is not a readable .npy file of vectors ({_short(e)})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype not in (np.float32, np.float16):
        shape = getattr(array, "shape", "?")
        raise IndexFileError(f"{path} holds {getattr(array, 'dtype', '?')} values of shape {shape}, not a 2-D matrix of "
                             "float32 or float16 vectors")  # fmt: skip
    if dim is not None and array.shape[0] and array.shape[1] != dim:
        raise IndexFileError(f"{path} holds {array.shape[1]}-dimensional vectors, the index {dim}-dimensional ones")
    if random_access:
        advise_random(array)
    return array


def advise_random(array: np.ndarray) -> None:
    """Tells the kernel that a memory-mapped ``array`` is read at random, so that it reads no more than the pages
    asked for: re-ranking reads scattered rows, and read-ahead would pull in 128 KB around each 3 KB row (and fill
    the page cache with rows no query wants). Nothing for an array in memory."""
    mapped = getattr(array, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:197] + "..."


class Matrix:
    """Rows of vectors from one or more arrays (memory-mapped files), in order: row ``r`` of the matrix is row
    ``r - offset`` of the part that holds it."""

    def __init__(self, parts: Sequence[np.ndarray], dim: int):
        # Empty parts are kept, so that part ``p`` is the ``p``-th array given (an embeddings index looks up a
        # row's metadata by it); ``searchsorted(..., side="right")`` never maps a row to an empty part.
        self.parts = list(parts)
        self.dim = dim
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # (parts + 1,)
        self.files = [MappedFile.of(part) for part in self.parts]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def random_access(self) -> None:
        """From here on rows are read at random (re-ranking), not in order (training, filling): ``advise_random``."""
        for part in self.parts:
            advise_random(part)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The (len(rows), dim) float32 vectors of ``rows`` (each in range)."""
        out = np.empty((len(rows), self.dim), np.float32)
        part_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for p in np.unique(part_of):
            where = np.flatnonzero(part_of == p)
            local = rows[where] - self.offsets[p]
            self._check(p)
            order = np.argsort(local)  # in file order: sequential reads where rows are near
            out[where[order]] = self.parts[p][local[order]]
        return out

    def chunks(self, rows: int = CHUNK_ROWS):
        """(first row, (n, dim) float32 array) over the whole matrix, ``rows`` at a time."""
        for p, part in enumerate(self.parts):
            for start in range(0, len(part), rows):
                self._check(p)
                yield int(self.offsets[p]) + start, np.asarray(part[start : start + rows], dtype=np.float32)

    def _check(self, p: int) -> None:
        if (file := self.files[p]) is not None:
            file.check()

    def search(self, query: np.ndarray, k: int, dead: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact search: the ``k`` rows of highest inner product with ``query``, best first, as (scores, rows);
        ``dead`` rows (sorted) are left out."""
        best_scores, best_rows = np.empty(0, np.float32), np.empty(0, np.int64)
        for start, chunk in self.chunks():
            scores = chunk @ query  # (n,)
            if dead is not None and len(dead):
                inside = dead[(dead >= start) & (dead < start + len(chunk))] - start
                scores[inside] = -np.inf
            keep = min(k, len(scores))
            top = np.argpartition(-scores, keep - 1)[:keep] if keep < len(scores) else np.arange(len(scores))
            best_scores = np.concatenate([best_scores, scores[top]])
            best_rows = np.concatenate([best_rows, top + start])
            if len(best_scores) > k:
                top = np.argpartition(-best_scores, k - 1)[:k]
                best_scores, best_rows = best_scores[top], best_rows[top]
        order = np.argsort(-best_scores, kind="stable")
        scores, rows = best_scores[order], best_rows[order]
        alive = np.isfinite(scores)
        return scores[alive], rows[alive]

    def rerank(self, query: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of ``candidates`` (rows; -1 for none) by their exact inner product with ``query``. A
        candidate outside the matrix (a faiss file that does not belong to it) is no row, and is left out."""
        rows = np.unique(candidates[(candidates >= 0) & (candidates < len(self))])
        if not len(rows):
            return np.empty(0, np.float32), np.empty(0, np.int64)
        scores = self.take(rows) @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return scores[order], rows[order]


class MappedFile:
    """The file behind a memory-mapped part, held open from when it was mapped. Reading a page of a mapping past its
    file's end (a shard cut short in place, by ``truncate`` or a copy over it, while a server holds it) kills the
    process with SIGBUS; reads check the file's size first (``fstat``, a microsecond), and one cut short is an
    IndexFileError naming it. A file deleted or replaced by a rename keeps its old data mapped, and stays readable."""

    def __init__(self, path: str, required: int):
        self.path, self.required = path, required
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 (held for fstat as long as the mapping lives)

    @classmethod
    def of(cls, part: np.ndarray) -> MappedFile | None:
        mapped, path = getattr(part, "_mmap", None), getattr(part, "filename", None)
        if not isinstance(part, np.memmap) or mapped is None or path is None:
            return None  # in memory: nothing can cut it short
        start = part.offset - part.offset % mmap.ALLOCATIONGRANULARITY  # where the mapping begins in the file
        try:
            return cls(path, start + len(mapped))
        except OSError:  # deleted since it was mapped: what is mapped stays readable
            return None

    def check(self) -> None:
        size = os.fstat(self.file.fileno()).st_size
        if size < self.required:
            raise IndexFileError(f"{self.path} was cut short while the index was open ({size:,} bytes, {self.required:,} "
                                 "mapped): open the index again, or build it again if the file changed")  # fmt: skip


def fsync(path: os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
