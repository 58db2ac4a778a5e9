"""The image index (``altclip index`` / ``search``, the service's search): file rows in SQLite, vectors in a store,
incremental and crash-safe; an index over embedding files in clip-retrieval's layout (``altclip index
--from-embeddings``); and sharded embedding files in that layout (``altclip embed``).

    image_index.py       ImageIndex: scanning, updating, searching, checking
    store.py             what a vector store provides (VectorStore), IndexMismatchError, IndexFileError
    sqlite_store.py      the default store: the index's own SQLite file, searched from a memory-mapped matrix
    matrix.py            the exact vectors as one matrix over memory-mapped files: exact search, re-ranking
    approximate.py       the approximate index (faiss IVF-PQ, memory-mapped, re-ranked), planned and tuned
    embeddings_index.py  EmbeddingsIndex: img_emb/*.npy + metadata/*.parquet searched where they lie
    milvus.py            the Milvus store (Milvus Lite file or server)
    embed_files.py       img_emb/*.npy + metadata/*.parquet shards, for autofaiss and clip-retrieval
"""

from __future__ import annotations

import os
from pathlib import Path

from altclip.index.embeddings_index import EmbeddingsIndex, is_embeddings_index
from altclip.index.image_index import Hit, ImageIndex, UpdateReport, default_index_path
from altclip.index.store import IndexFileError, IndexMismatchError, VectorStore


def open_index(path: str | os.PathLike, *, device: str | None = None) -> ImageIndex | EmbeddingsIndex:
    """The index in folder ``path``, for search: an image index (``altclip index DIR``) or an index over embedding
    files (``altclip index --from-embeddings DIR``). Both answer ``search``, ``count``, ``bind``, ``file_path``,
    ``vectors`` and ``close``. FileNotFoundError when there is neither."""
    if is_embeddings_index(Path(path)):
        return EmbeddingsIndex(path)
    return ImageIndex(path, create=False, device=device)


__all__ = [
    "EmbeddingsIndex",
    "Hit",
    "ImageIndex",
    "IndexFileError",
    "IndexMismatchError",
    "UpdateReport",
    "VectorStore",
    "default_index_path",
    "open_index",
]
