"""An index over embedding files in clip-retrieval's layout (what ``altclip embed`` writes, with ``--shard`` or
``--ray``, and what autofaiss reads), searched without embedding anything again:

    SOURCE/img_emb/img_emb_{i}.npy, SOURCE/metadata/metadata_{i}.parquet     the input, left where it is
    INDEX/manifest.json          the shards it was built from (rows, size, modification time), the model, the search
                                 parameters, the files below; written last, so a crash leaves the previous index
    INDEX/meta-{n}.arrow         each shard's metadata as an uncompressed Arrow file, memory-mapped: a result's
                                 path is read without loading any metadata into memory
    INDEX/vectors-{gen}.faiss    the approximate index (``approximate``), or autofaiss's own (``--faiss-index``)

Rows are numbered shard after shard, the shards in clip-retrieval's order (file names sorted as strings, as
embedding-reader and clip-retrieval sort them), so an index autofaiss built from the same folder has the same
ids, and ``/knn-service`` answers as clip-retrieval's back end does. Candidates are re-ranked exactly from the
shards' own vectors, memory-mapped. A re-run adds new shards to the approximate index without retraining it; a
changed or removed shard makes it build anew.

Every shard is checked before anything is written: a missing metadata or vector file, a count mismatch between
the two, a dimension mismatch, a shard of a ``--shard i/n`` run that is missing, vectors that are not finite or
not unit-norm, each an ``IndexFileError`` naming the file. Opening checks that no shard changed since.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from altclip.index import approximate
from altclip.index.embed_files import MODEL_KEY, SHARD_KEY
from altclip.index.image_index import Hit
from altclip.index.matrix import Matrix, open_npy
from altclip.index.store import IndexFileError, IndexMismatchError

MANIFEST = "manifest.json"
LOCK_NAME = "index.lock"  # held by the one build that writes the index
FORMAT = "altclip-embeddings-index"
PATH_COLUMNS = ("image_path", "url", "caption")  # what a result shows, the first one its metadata has
NORM_TOLERANCE = 1e-2


@dataclass
class Part:
    vectors: str  # relative to the source folder
    metadata: str
    rows: int
    size: int  # of the vector file, and its modification time: a changed shard is noticed
    mtime_ns: int
    arrow: str  # its metadata in the index folder


def is_embeddings_index(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


# -- finding and checking shards ---------------------------------------------------------------------------------------


def _shard_key(path: Path, prefix: str) -> str:
    stem = path.name.rsplit(".", 1)[0]
    return stem[len(prefix) :] if stem.startswith(prefix) else stem


def find_shards(source: Path) -> list[tuple[Path, Path]]:
    """(vectors, metadata) file pairs of ``source``, in clip-retrieval's order; IndexFileError naming a file that is
    missing from a pair, or the folder when it holds no vectors."""
    vector_dir, metadata_dir = source / "img_emb", source / "metadata"
    if not vector_dir.is_dir():
        raise IndexFileError(f"{source} has no img_emb folder: give the --output folder of `altclip embed`")
    vectors = sorted(vector_dir.rglob("*.npy"), key=str)
    if not vectors:
        raise IndexFileError(f"{vector_dir} holds no .npy files")
    metadata = {_shard_key(p, "metadata_"): p for p in metadata_dir.glob("*.parquet")} if metadata_dir.is_dir() else {}
    pairs = []
    for path in vectors:
        key = _shard_key(path, "img_emb_")
        if key not in metadata:
            raise IndexFileError(f"{metadata_dir / f'metadata_{key}.parquet'} is missing (the metadata of {path})")
        pairs.append((path, metadata.pop(key)))
    if metadata:
        orphan = sorted(metadata.values(), key=str)[0]
        missing = vector_dir / f"img_emb_{_shard_key(orphan, 'metadata_')}.npy"
        raise IndexFileError(f"{missing} is missing (the vectors of {orphan})")
    return pairs


def read_shard(vectors: Path, metadata: Path, dim: int | None) -> tuple[np.ndarray, dict[bytes, bytes]]:
    """The shard's vectors (memory-mapped) and its metadata file's key-value metadata, their counts checked."""
    import pyarrow.parquet as pq

    array = open_npy(vectors, dim)
    try:
        meta = pq.ParquetFile(metadata)
        rows, stamps = meta.metadata.num_rows, meta.schema_arrow.metadata or {}
    except Exception as e:  # pyarrow raises several types for a damaged or foreign file
        raise IndexFileError(f"{metadata} is not a readable parquet file ({str(e)[:200]})") from None
    if rows != len(array):
        raise IndexFileError(f"{metadata} has {rows:,} rows but {vectors} has {len(array):,} vectors")
    return array, stamps


def check_shards(pairs: list[tuple[Path, Path]], stamps: list[dict[bytes, bytes]]) -> str | None:
    """The model the shards were embedded with (None when they do not say); IndexFileError when a shard of a
    ``--shard i/n`` run is missing, or when shards say different models."""
    models = {s[MODEL_KEY].decode() for s in stamps if MODEL_KEY in s}
    if len(models) > 1:
        raise IndexFileError(
            f"The shards in {pairs[0][0].parent} were embedded with different models: {sorted(models)}"
        )
    counts = {s[SHARD_KEY].decode().split("/")[1] for s in stamps if SHARD_KEY in s}
    if len(counts) > 1:
        raise IndexFileError(
            f"The shards in {pairs[0][0].parent} come from runs of different shard counts: {sorted(counts)}"
        )
    if counts:
        n = int(counts.pop())
        present = {_shard_key(v, "img_emb_") for v, _ in pairs}
        for i in range(n):
            if str(i) not in present:
                folder = pairs[0][0].parent
                raise IndexFileError(f"{folder / f'img_emb_{i}.npy'} is missing: shard {i}/{n} has not been embedded "
                                     f"(run altclip embed ... --shard {i}/{n})")  # fmt: skip
    return models.pop() if models else None


def check_vectors(array: np.ndarray, path: Path) -> None:
    """Every vector finite and of unit norm (cosine search needs them so), read a chunk at a time."""
    for start in range(0, len(array), 65_536):
        chunk = np.asarray(array[start : start + 65_536], dtype=np.float32)
        norms = np.linalg.norm(chunk, axis=1)
        bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1) > NORM_TOLERANCE))
        if len(bad):
            row = start + int(bad[0])
            raise IndexFileError(
                f"{path}: vector {row} has norm {norms[bad[0]]:.4g}; the index needs unit-norm vectors"
            )


def write_arrow(metadata: Path, target: Path) -> None:
    """The parquet file's rows as an uncompressed Arrow file (memory-mappable), a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(metadata)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    schema = source.schema_arrow.remove_metadata()
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in source.iter_batches(batch_size=65_536):
            writer.write_batch(batch)
    os.replace(tmp, target)


# -- building --------------------------------------------------------------------------------------------------------


def build(
    source: Path,
    folder: Path,
    *,
    memory_budget: int = approximate.DEFAULT_MEMORY_BUDGET,
    exact_below: int = approximate.EXACT_BELOW,
    faiss_index: Path | None = None,
    model: str | None = None,
    progress=None,
) -> dict:
    """Builds (or brings up to date) the index in ``folder`` over the embedding files in ``source``. Returns what
    it did: rows, shards added, whether the approximate index was built, extended or adopted, the seconds taken."""
    start = time.perf_counter()
    source, folder = Path(source).resolve(), Path(folder).resolve()
    pairs = find_shards(source)
    arrays, stamps, dim = [], [], None
    for vectors, metadata in pairs:
        array, stamp = read_shard(vectors, metadata, dim)
        dim = dim or (array.shape[1] if len(array) else None)
        arrays.append(array)
        stamps.append(stamp)
    found_model = check_shards(pairs, stamps)
    if model and found_model and not same_model(model, found_model):
        raise IndexMismatchError(f"The embeddings in {source} were made with {found_model}, not {model}")
    model = found_model or model
    if dim is None:  # every shard is empty: there is nothing to search, and no dimension to check queries against
        raise IndexFileError(f"The embedding files in {source} hold no vectors ({len(pairs)} shards, all empty)")
    folder.mkdir(parents=True, exist_ok=True)
    with _writing(folder):
        return _build(source, folder, pairs, arrays, dim, model, memory_budget, exact_below, faiss_index, progress,
                      start)  # fmt: skip


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Held while the index in ``folder`` is written: one build at a time (another's cleanup would delete the files
    this one's manifest is about to name). The operating system's lock (``flock``), released when a build is killed."""
    from filelock import FileLock

    lock = FileLock(folder / LOCK_NAME, mode=0o600)
    with lock:
        yield


def _build(source, folder, pairs, arrays, dim, model, memory_budget, exact_below, faiss_index, progress, start):
    old = _read_manifest(folder) if (folder / MANIFEST).exists() else None
    stats = [(p[0].stat(), len(a)) for p, a in zip(pairs, arrays)]
    relative = [(str(v.relative_to(source)), str(m.relative_to(source))) for v, m in pairs]
    kept: list[Part] = []
    if old and Path(old["source"]) == source and not faiss_index and not old.get("adopted"):
        current = {(r[0], s.st_size, s.st_mtime_ns, n) for r, (s, n) in zip(relative, stats)}
        old_parts = [Part(**p) for p in old["parts"]]
        arrows = all((folder / p.arrow).is_file() for p in old_parts)  # else one was lost: copy them again
        if all((p.vectors, p.size, p.mtime_ns, p.rows) in current for p in old_parts) and old["dim"] == dim and arrows:
            kept = old_parts
    kept_names = {p.vectors for p in kept}
    order = [i for i in range(len(pairs)) if relative[i][0] in kept_names]
    order = sorted(order, key=lambda i: [p.vectors for p in kept].index(relative[i][0]))
    added = [i for i in range(len(pairs)) if relative[i][0] not in kept_names]
    serial = max([_serial(p.arrow) for p in kept] + [-1]) + 1
    parts = list(kept)
    for i in added:
        check_vectors(arrays[i], pairs[i][0])
        arrow = f"meta-{serial}.arrow"
        serial += 1
        write_arrow(pairs[i][1], folder / arrow)
        stat, rows = stats[i]
        parts.append(Part(relative[i][0], relative[i][1], rows, stat.st_size, stat.st_mtime_ns, arrow))
    order += added
    matrix = Matrix([arrays[i] for i in order], dim)
    rows = len(matrix)

    gen = (old or {}).get("gen", 0) + 1
    approx, action = None, "none"
    if faiss_index is not None:
        index = approximate.read(Path(faiss_index), dim=dim, rows=rows, inverted_file=False)
        approximate.check_ids(index, matrix, Path(faiss_index))
        tuned = approximate.tune(index, matrix)
        approx = {"file": str(Path(faiss_index).resolve()), "trained": rows, **asdict(tuned["params"]),
                  "checksum": approximate.checksum(Path(faiss_index))}  # fmt: skip
        action = "adopted"
    elif (plan := approximate.plan(rows, dim, memory_budget, exact_below)) is not None:
        index, trained = None, rows
        old_approx = (old or {}).get("approximate")
        if kept and old and old_approx and len(kept) == len(old["parts"]) and rows <= approximate_growth(old_approx):
            try:
                index = approximate.read(folder / old_approx["file"], dim=dim, rows=sum(p.rows for p in kept),
                                         mmap=False, expected=old_approx.get("checksum"))  # fmt: skip
            except IndexFileError:  # lost or damaged: this run builds it anew
                index = None
        if index is not None:
            if added:
                approximate.extend(index, matrix, index.ntotal, progress)
                action = "extended"
            trained = old_approx["trained"]
        if index is None:
            index = approximate.build(matrix, plan, progress)
            action = "built"
        if action == "none":  # nothing new: keep the file and its tuning
            approx = old_approx
        else:
            tuned = approximate.tune(index, matrix)
            written = approximate.write(index, folder / f"vectors-{gen}.faiss")
            approx = {
                "file": f"vectors-{gen}.faiss",
                "trained": trained,
                **asdict(tuned["params"]),
                "checksum": written,
            }
    manifest = {
        "format": FORMAT,
        "version": 1,
        "source": str(source),
        "model": model,
        "dim": dim,
        "rows": rows,
        "gen": gen,
        "adopted": faiss_index is not None,
        "approximate": approx,
        "parts": [asdict(p) for p in parts],
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_manifest(folder, manifest)
    _remove_stale(folder, manifest)
    return {"index": str(folder), "rows": rows, "shards": len(parts), "added_shards": len(added),
            "approximate": action, "seconds": time.perf_counter() - start}  # fmt: skip


def same_model(a: str, b: str) -> bool:
    """Whether two model names name one model: equal, or one local checkpoint folder named by two paths."""
    if a == b:
        return True
    return os.path.isdir(a) and os.path.isdir(b) and os.path.samefile(a, b)


def approximate_growth(approx: dict) -> int:
    return approx["trained"] * 4


def _serial(name: str) -> int:
    match = re.fullmatch(r"meta-(\d+)\.arrow", name)
    return int(match.group(1)) if match else -1


def _write_manifest(folder: Path, manifest: dict) -> None:
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / MANIFEST)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexFileError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise IndexFileError(f"{path} is not a readable manifest ({str(e)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != 1:
        raise IndexFileError(f"{path} is not the manifest of an index built by `altclip index --from-embeddings`")
    return manifest


def _remove_stale(folder: Path, manifest: dict) -> None:
    keep = {p["arrow"] for p in manifest["parts"]} | {MANIFEST}
    if manifest["approximate"] and not manifest["adopted"]:
        keep.add(manifest["approximate"]["file"])
    for path in folder.iterdir():
        if path.name not in keep and re.fullmatch(r"(meta-\d+\.arrow|vectors-\d+\.faiss|\..*\.tmp)", path.name):
            path.unlink(missing_ok=True)


# -- searching -------------------------------------------------------------------------------------------------------


MAX_NAME = 4096  # characters of a result's name (a path is at most 4,096 bytes on Linux)


class EmbeddingsIndex:
    """An index built by ``build``, opened for search: the shards' vectors and metadata memory-mapped, the
    approximate index memory-mapped. Searches read only what they need."""

    def __init__(self, path: str | os.PathLike):
        import pyarrow as pa

        self.path = Path(path)
        manifest = _read_manifest(self.path)
        try:
            self.source = Path(manifest["source"])
            self.dim, self.model = int(manifest["dim"]), manifest["model"]
            parts = [Part(**p) for p in manifest["parts"]]
            approx = manifest["approximate"]
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFileError(f"{self.path / MANIFEST} is incomplete ({e})") from None
        arrays, self.metadata = [], []
        for part in parts:
            vectors = self.source / part.vectors
            try:
                stat = vectors.stat()
            except FileNotFoundError:
                raise IndexFileError(f"{vectors} is missing (the index at {self.path} was built from it)") from None
            if (stat.st_size, stat.st_mtime_ns) != (part.size, part.mtime_ns):
                raise IndexFileError(f"{vectors} changed since the index at {self.path} was built from it: build it "
                                     f"again (altclip index --from-embeddings {self.source})")  # fmt: skip
            array = open_npy(vectors, self.dim, random_access=True)
            if len(array) != part.rows:
                raise IndexFileError(f"{vectors} holds {len(array):,} vectors, the index {part.rows:,}")
            arrays.append(array)
            arrow = self.path / part.arrow
            try:
                table = pa.ipc.open_file(pa.memory_map(str(arrow), "r")).read_all()
            except FileNotFoundError:
                raise IndexFileError(f"{arrow} is missing") from None
            except (OSError, pa.ArrowException) as e:
                raise IndexFileError(f"{arrow} is not a readable Arrow file ({str(e)[:200]})") from None
            if table.num_rows != part.rows:
                raise IndexFileError(f"{arrow} has {table.num_rows:,} rows, the index {part.rows:,}")
            self.metadata.append(table)
        self.matrix = Matrix(arrays, self.dim)
        self.ann, self.params = None, None
        if approx:
            file = Path(approx["file"])
            self.ann = approximate.read(file if file.is_absolute() else self.path / file, dim=self.dim,
                                        rows=len(self.matrix), inverted_file=not manifest["adopted"],
                                        expected=approx.get("checksum"))  # fmt: skip
            self.params = approximate.SearchParams(int(approx["nprobe"]), int(approx["rerank"]))
        self.column = next((c for c in PATH_COLUMNS if all(c in t.column_names for t in self.metadata)), None)

    def close(self) -> None:
        self.ann, self.metadata, self.matrix = None, [], Matrix([], self.dim)

    def __enter__(self) -> EmbeddingsIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count(self) -> int:
        return len(self.matrix)

    def bind(self, model: str, dim: int) -> None:
        """Checks that queries of ``model`` (``dim`` dimensions) can search this index."""
        if dim != self.dim or (self.model is not None and not same_model(model, self.model)):
            raise IndexMismatchError(
                f"The index at {self.path} holds embeddings of {self.model or 'an unrecorded model'} ({self.dim} "
                f"dimensions); queries of {model} ({dim} dimensions) cannot search it. Use --model {self.model}"
                if self.model
                else f"The index at {self.path} holds {self.dim}-dimensional embeddings; {model} makes "
                f"{dim}-dimensional ones"
            )

    def search(self, query: np.ndarray, top_k: int = 10) -> list[Hit]:
        if query.shape != (self.dim,):
            raise IndexMismatchError(f"Query has {query.shape[-1]} dimensions, the index {self.dim}")
        query = np.ascontiguousarray(query, dtype=np.float32)
        if self.ann is not None:
            assert self.params is not None  # read with the approximate index
            scores, rows = approximate.search(self.ann, self.matrix, query, top_k, self.params)
        else:
            scores, rows = self.matrix.search(query, top_k)
        return [Hit(float(s), int(r), self.name(int(r))) for s, r in zip(scores, rows)]

    def _row(self, row: int) -> tuple[int, int] | None:
        if not 0 <= row < len(self.matrix):
            return None
        part = int(np.searchsorted(self.matrix.offsets, row, side="right") - 1)
        return part, row - int(self.matrix.offsets[part])

    def name(self, row: int) -> str:
        """What a result shows: its image path (or url, or caption), else its row; at most ``MAX_NAME`` characters
        (metadata comes from files: a 5 MB path cost a table 13 s a row to draw, and an answer 5 MB a result)."""
        where = self._row(row)
        if where is None or self.column is None:
            return f"#{row}"
        value = self.metadata[where[0]].column(self.column)[where[1]].as_py()
        if value is None:
            return f"#{row}"
        text = str(value)
        return text if len(text) <= MAX_NAME else f"{text[:MAX_NAME]}... ({len(text):,} characters)"

    def display_name(self, row: int) -> str | None:
        return None if self._row(row) is None else self.name(row)

    def file_path(self, row: int) -> bytes | None:
        """The image file of a row, when its metadata names a local one (``image_path``)."""
        where = self._row(row)
        if where is None or self.column != "image_path":
            return None
        value = self.metadata[where[0]].column("image_path")[where[1]].as_py()
        return os.fsencode(value) if value else None

    def vectors(self, rows: list[int]) -> np.ndarray:
        missing = [r for r in rows if self._row(r) is None]
        if missing:
            raise KeyError(f"No indexed image with id {missing[0]}")
        return self.matrix.take(np.asarray(rows, np.int64)) if rows else np.zeros((0, self.dim), np.float32)
