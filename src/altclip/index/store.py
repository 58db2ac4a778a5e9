"""What an image index needs from the place its vectors live (``VectorStore``), and the error for an index that
does not fit the model asked for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class IndexMismatchError(ValueError):
    """The index cannot be used as asked: it was built with another model or embedding size (and, as
    ``IndexFileError``, one of its files cannot be used)."""


class IndexFileError(IndexMismatchError):
    """A file of an index, or one it was built from, is missing, damaged, foreign, or does not match the others (a
    count or dimension mismatch); the message names the file. Nothing is served from such an index."""


class VectorStore(Protocol):
    """Unit-norm vectors keyed by content hash. Each store holds its own connection and knows the embedding size
    it was bound to; the index never needs to know which store it has."""

    def bind(self, dim: int) -> None:
        """The embedding size from now on; an IndexMismatchError when the store already holds another size."""

    def existing(self, hashes: Sequence[str]) -> set[str]: ...

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Adds vectors; a hash already stored keeps its vector (adding is idempotent)."""

    def remove(self, hashes: Sequence[str]) -> None: ...

    def hashes(self) -> set[str]: ...

    def vectors(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of ``hashes`` (those it holds)."""

    def count(self) -> int: ...

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest (hash, cosine) to a unit-norm query, best first."""

    def build_approximate(self, threshold: int) -> bool:
        """After an update: build an approximate-search structure once there are ``threshold`` vectors, if the store
        uses one; True when it built one."""

    def problems(self) -> list[str]:
        """Consistency problems of the stored vectors themselves (the index checks how rows and vectors match)."""

    def close(self) -> None: ...
