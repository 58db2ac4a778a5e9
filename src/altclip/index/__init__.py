"""The image index (``altclip index`` / ``search``, the service's search): file rows in SQLite, vectors in a store,
incremental and crash-safe; and sharded embedding files in the clip-retrieval layout (``altclip embed``).

    image_index.py   ImageIndex: scanning, updating, searching, checking
    store.py         what a vector store provides (VectorStore), IndexMismatchError
    sqlite_store.py  the default store: the index's own SQLite file, exact search or faiss HNSW
    milvus.py        the Milvus store (Milvus Lite file or server)
    embed_files.py   img_emb/*.npy + metadata/*.parquet shards, for autofaiss and clip-retrieval
"""

from altclip.index.image_index import Hit, ImageIndex, UpdateReport, default_index_path
from altclip.index.store import IndexMismatchError, VectorStore

__all__ = ["Hit", "ImageIndex", "IndexMismatchError", "UpdateReport", "VectorStore", "default_index_path"]
