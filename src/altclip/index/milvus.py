"""The index's vectors in Milvus, for collections that outgrow one machine.

``--store milvus:///path/photos.db`` keeps them in a Milvus Lite file (embedded, no server); ``--store
milvus://HOST:19530`` (``milvus+https://`` for TLS) in a Milvus server or cluster, which speaks the same client
API. ``?collection=NAME`` picks the collection (default ``altclip``); ``&index=TYPE`` its index type (``AUTOINDEX``
by default; on a server also ``IVF_FLAT``, ``IVF_PQ``, ``HNSW``, ``DISKANN``), with its build parameters (``nlist``,
``m``, ``nbits``, ``M``, ``efConstruction``) and search parameters (``nprobe``, ``ef``, ``search_list``) as further
query keys, e.g. ``milvus://host:19530?collection=photos&index=IVF_PQ&nlist=4096&m=96&nprobe=64``, all applied
when the collection is created (search parameters on every search). ``$MILVUS_TOKEN`` authenticates. File
metadata stays in the local SQLite index; vectors are keyed by content hash, written before the file rows that
refer to them, and removed when no file refers to them any more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import parse_qs, urlparse

import numpy as np

from altclip.index.store import IndexMismatchError

# The indexer's own reads see every write before it: a server's default ("Bounded") may not, so its check of what
# it stored would miss what it just wrote (Milvus Lite is always strong). Searches are "Session": they see this
# client's own writes, and do not wait for the server's next time tick as a strong read does (200 ms on a Milvus
# 2.3 server, every query); another process's writes show within about a second.
CONSISTENCY = "Strong"
SEARCH_CONSISTENCY = "Session"
BUILD_KEYS = {"nlist": int, "m": int, "nbits": int, "M": int, "efConstruction": int}
SEARCH_KEYS = {"nprobe": int, "ef": int, "search_list": int}


def milvus_index(url: str) -> tuple[str, dict, dict]:
    """(index type, build parameters, search parameters) from a ``milvus://`` URL's query keys."""
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    unknown = set(query) - {"collection", "index"} - set(BUILD_KEYS) - set(SEARCH_KEYS)
    if unknown:
        raise ValueError(f"{url}: unknown Milvus setting {sorted(unknown)[0]!r}")
    try:
        build = {k: t(query[k]) for k, t in BUILD_KEYS.items() if k in query}
        search = {k: t(query[k]) for k, t in SEARCH_KEYS.items() if k in query}
    except ValueError:
        raise ValueError(f"{url}: Milvus index settings are whole numbers") from None
    return query.get("index", "AUTOINDEX").upper(), build, search


def milvus_uri(url: str) -> tuple[str, str]:
    """(client uri, collection) from a ``milvus://`` URL."""
    parsed = urlparse(url)
    collection = parse_qs(parsed.query).get("collection", ["altclip"])[0]
    if parsed.scheme == "milvus" and not parsed.netloc:
        if not parsed.path:
            raise ValueError(
                f"{url}: give a Milvus Lite file (milvus:///path/file.db) or a server (milvus://host:port)"
            )
        return parsed.path, collection
    if parsed.scheme in ("milvus", "milvus+http", "milvus+https"):
        scheme = "https" if parsed.scheme.endswith("https") else "http"
        return f"{scheme}://{parsed.netloc}{parsed.path}", collection
    raise ValueError(f"Not a Milvus URL: {url}")


class MilvusVectors:
    """A Milvus collection of (hash, vector), created once the embedding size is known (``bind``)."""

    def __init__(self, url: str):
        from pymilvus import MilvusClient

        uri, self.collection = milvus_uri(url)
        self.index_type, self.build_params, self.search_params = milvus_index(url)
        if not uri.startswith("http"):  # a Milvus Lite file: its folder, where we make it, private as the index
            folder = os.path.dirname(os.path.abspath(uri))
            if not os.path.isdir(folder):
                os.makedirs(folder)
                os.chmod(folder, 0o700)
        self.client = MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""))
        self.dim: int | None = None
        self._ready = False

    def bind(self, dim: int) -> None:
        self.dim = dim
        self._ready = False
        self._ensure()

    def close(self) -> None:
        self.client.close()

    def _ensure(self) -> bool:
        """Creates the collection once the embedding size is known; False while it is not."""
        if self._ready:
            return True
        dim = self.dim
        if self.client.has_collection(self.collection):
            fields = self.client.describe_collection(self.collection)["fields"]
            found = next(f["params"]["dim"] for f in fields if f["name"] == "vector")
            if dim and int(found) != dim:
                raise IndexMismatchError(
                    f"Milvus collection {self.collection} holds {found}-dimensional vectors, not {dim}"
                )
            self.client.load_collection(self.collection)
        elif not dim:
            return False
        else:
            from pymilvus import DataType, MilvusClient

            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("hash", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            params = self.client.prepare_index_params()
            params.add_index(
                field_name="vector", index_type=self.index_type, metric_type="IP", params=self.build_params
            )
            self.client.create_collection(
                self.collection, schema=schema, index_params=params, consistency_level=CONSISTENCY
            )
        self._ready = True
        return True

    def existing(self, hashes: Sequence[str]) -> set[str]:
        if not hashes or not self._ensure():
            return set()
        rows = self.client.query(
            self.collection,
            filter=f"hash in {list(hashes)!r}".replace("'", '"'),
            output_fields=["hash"],
            consistency_level=CONSISTENCY,
        )
        return {r["hash"] for r in rows}

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        self._ensure()
        rows = [{"hash": h, "vector": v} for h, v in zip(hashes, np.asarray(vectors, dtype=np.float32))]
        self.client.upsert(self.collection, rows)

    def remove(self, hashes: Sequence[str]) -> None:
        if hashes and self._ensure():
            self.client.delete(self.collection, ids=list(hashes))

    def hashes(self) -> set[str]:
        if not self._ensure():
            return set()
        found: set[str] = set()
        iterator = self.client.query_iterator(self.collection, batch_size=1000, filter="", output_fields=["hash"])
        while batch := iterator.next():
            found.update(r["hash"] for r in batch)
        iterator.close()
        return found

    def vectors(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        if not hashes or not self._ensure():
            return {}
        rows = self.client.query(
            self.collection,
            filter=f"hash in {list(hashes)!r}".replace("'", '"'),
            output_fields=["hash", "vector"],
            consistency_level=CONSISTENCY,
        )
        return {r["hash"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}

    def count(self) -> int:
        if not self._ensure():
            return 0
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level=CONSISTENCY)
        return int(rows[0]["count(*)"])

    def build_approximate(self, threshold: int) -> bool:
        """Nothing to build: Milvus indexes its collection itself."""
        return False

    def problems(self) -> list[str]:
        return []

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        if not self._ensure():
            return []
        result = self.client.search(
            self.collection,
            [np.asarray(query, dtype=np.float32)],
            limit=k,
            output_fields=["hash"],
            search_params={"metric_type": "IP", "params": self.search_params},
            consistency_level=SEARCH_CONSISTENCY,
        )
        return [(hit["entity"]["hash"], float(hit["distance"])) for hit in result[0]]
