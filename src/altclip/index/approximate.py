"""The approximate index: faiss IVF-PQ, searched memory-mapped, its candidates re-ranked exactly.

An inverted file of ``nlist`` clusters holds each vector as a product-quantized code (``m`` bytes); a query scans
the ``nprobe`` clusters nearest to it, ranks their codes, and the best ``rerank`` candidates are scored exactly
from the index's float32 vectors (``matrix.Matrix``, memory-mapped), so the scores returned are true cosines and
the order among the found is exact. Chosen by measurement over HNSW and usearch (``benchmarks/search_scale.py``,
the README's table): it builds several times faster on a small machine, holds 72 bytes per vector instead of the
vector itself, and extends without a rebuild (new vectors are assigned to the trained clusters).

``plan`` picks the layout from the collection's size and a memory budget, ``build`` trains and fills it, ``extend``
adds rows, ``tune`` picks ``nprobe`` and ``rerank`` by measuring recall against exact search on the collection's
own vectors, and ``read`` opens a file memory-mapped (``IO_FLAG_MMAP``: the codes stay in the page cache, so
opening costs milliseconds at any size), checking that it is a faiss index of the expected size and metric.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from altclip.index.matrix import Matrix
from altclip.index.store import IndexFileError

# Below this many vectors no approximate index is built: measured (benchmarks/search_scale.py, the README's
# crossover), exact search is faster at 1,000 vectors, as fast at 2,000, and 2.8 times slower at 5,000.
EXACT_BELOW = 5_000
DEFAULT_MEMORY_BUDGET = 2**30  # bytes the approximate index may hold in memory: codes, ids and clusters
TARGET_RECALL = 0.97  # tune aims here so that queries unlike the tuning ones still get 0.95
MIN_ROWS = 20  # fewer vectors than this are always searched exactly (16 centroids per code part need more)
TRAIN_ITERATIONS = 10  # k-means iterations: past 10 the clusters barely move and training time grows linearly


class FaissMissing(ImportError):
    pass


def faiss_module():
    try:
        import faiss
    except ImportError:
        raise FaissMissing("Approximate search needs faiss: pip install 'altclip[index]'") from None
    return faiss


@dataclass
class Plan:
    """What to build: an IVF of ``nlist`` clusters with codes of ``m`` 4-bit parts (faiss's fast-scan layout:
    ``m / 2`` bytes per vector, scanned with SIMD shuffles), trained on ``train_rows`` vectors."""

    nlist: int
    m: int
    train_rows: int

    @property
    def factory(self) -> str:
        quantizer = "_HNSW32" if self.nlist > 4096 else ""  # assigning vectors to many clusters: a graph, not a scan
        return f"IVF{self.nlist}{quantizer},PQ{self.m}x4fs"

    def memory(self, rows: int, dim: int) -> int:
        """Bytes the built index holds: codes and ids per row, the clusters' centroids."""
        return rows * (self.m // 2 + 8) + self.nlist * dim * 4


@dataclass
class SearchParams:
    """How queries search a built index: clusters scanned, candidates re-ranked exactly (picked by ``tune``)."""

    nprobe: int = 32
    rerank: int = 100


def plan(
    rows: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET, exact_below: int = EXACT_BELOW
) -> Plan | None:
    """The layout for ``rows`` vectors within ``memory_budget`` bytes; None below ``exact_below`` rows (exact search
    is as fast there) and below ``MIN_ROWS``. ``nlist`` about 2 sqrt(rows) (a power of two; faiss advises 4 to 16
    sqrt(rows): fewer clusters train and fill twice as fast, and fast-scan codes make the longer lists cheap to scan),
    with at least 39 training vectors per cluster; codes of one 4-bit part per 8 dimensions (48 bytes at 768), fewer
    where the memory budget needs it."""
    if rows < max(exact_below, MIN_ROWS):
        return None
    nlist = int(2 ** round(np.log2(2 * np.sqrt(rows))))
    nlist = max(1, min(nlist, 65_536, rows // 39))
    train_rows = min(rows, max(40 * nlist, 65_536), 262_144)
    sizes = [m for m in (dim // 8, dim // 16, dim // 32) if m >= 2 and m % 2 == 0 and dim % m == 0] or [2]
    fitting = [m for m in sizes if Plan(nlist, m, train_rows).memory(rows, dim) <= memory_budget]
    if not fitting:
        smallest = Plan(nlist, sizes[-1], train_rows).memory(rows, dim)
        raise ValueError(
            f"{rows:,} vectors need at least {smallest / 2**20:,.0f} MiB for an approximate index; the memory budget "
            f"is {memory_budget / 2**20:,.0f} MiB"
        )
    return Plan(nlist=nlist, m=fitting[0], train_rows=train_rows)


def sample_rows(rows: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct rows out of ``rows``, sorted (reads in file order), the same for the same arguments."""
    if count >= rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, count, replace=False))


def build(matrix: Matrix, plan: Plan, progress=None):
    """A trained IVF-PQ index holding every row of ``matrix`` (ids: row numbers)."""
    faiss = faiss_module()
    index = faiss.index_factory(matrix.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # IndexIVFPQFastScan
    ivf.cp.niter = TRAIN_ITERATIONS
    ivf.cp.max_points_per_centroid = max(64, plan.train_rows // plan.nlist + 1)  # train on all of the sample
    ivf.cp.min_points_per_centroid = ivf.pq.cp.min_points_per_centroid = 1  # plan() sized them; no warnings
    index.train(matrix.take(sample_rows(len(matrix), plan.train_rows)))
    extend(index, matrix, 0, progress)
    return index


def extend(index, matrix: Matrix, start: int, progress=None) -> None:
    """Adds rows ``start`` onwards of ``matrix`` (the index holds rows ``0..start-1``) to a trained index."""
    if index.ntotal != start:
        raise ValueError(f"The approximate index holds {index.ntotal} rows, not {start}")
    for first, chunk in matrix.chunks():
        end = first + len(chunk)
        if end <= start:
            continue
        chunk = chunk[max(0, start - first) :]
        index.add_with_ids(np.ascontiguousarray(chunk), np.arange(end - len(chunk), end, dtype=np.int64))
        if progress:
            progress(end, len(matrix))


def candidates(index, query: np.ndarray, params: SearchParams) -> np.ndarray:
    """Up to ``params.rerank`` candidate rows for a unit-norm query (-1 where fewer were found). ``nprobe`` applies
    to an inverted file; another kind of index (one autofaiss built) is searched with its own settings."""
    search = _search_parameters(index, params)
    _, rows = index.search(query[None].astype(np.float32, copy=False), params.rerank, params=search)
    return rows[0]


def check_ids(index, matrix: Matrix, path: Path, queries: int = 50) -> None:
    """IndexFileError naming ``path`` when the index answers with ids that are not rows of ``matrix`` (a faiss file
    of the same size and dimension built over other vectors, or with ids of its own), probed with queries shaped
    like the collection."""
    params = SearchParams(nprobe=64, rerank=100)
    for query in tuning_queries(matrix, min(queries, len(matrix))):
        found = candidates(index, query, params)
        bad = found[(found < -1) | (found >= len(matrix))]
        if len(bad):
            raise IndexFileError(
                f"{path} answers with id {int(bad[0]):,}, but the shards hold rows 0 to {len(matrix) - 1:,}: it was "
                "not built over these embedding files (in their order)"
            )


def _search_parameters(index, params: SearchParams):
    faiss = faiss_module()
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    ivf = faiss.SearchParametersIVF(nprobe=params.nprobe)
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):  # OPQ or PCA before the IVF (autofaiss's)
        return faiss.SearchParametersPreTransform(index_params=ivf)
    return ivf


def search(index, matrix: Matrix, query: np.ndarray, k: int, params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the ``k`` best, best first: candidates from the index, re-ranked exactly."""
    wider = SearchParams(params.nprobe, max(params.rerank, k))
    return matrix.rerank(query, candidates(index, query, wider), k)


# -- choosing nprobe and rerank by measurement ----------------------------------------------------------------------


def tuning_queries(matrix: Matrix, count: int = 200, seed: int = 1) -> np.ndarray:
    """Queries shaped like the collection but further from it than a typical neighbour: random rows moved by noise
    as large as themselves (cosine about 0.7 to the row they came from), so that their neighbours spread over
    several clusters, as those of text queries do (a text's embedding lies further from the images it matches than
    images lie from each other). Recall measured on them is lower than on queries near the rows."""
    base = matrix.take(sample_rows(len(matrix), count, seed))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = base + noise
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def exact_neighbours(matrix: Matrix, queries: np.ndarray, k: int) -> np.ndarray:
    """(len(queries), k) rows of the exact top-k of each query: one pass over the matrix for all of them."""
    best = np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64)
    for start, chunk in matrix.chunks():
        scores = queries @ chunk.T  # (q, n)
        keep = min(k, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        merged_scores = np.concatenate([best[0], np.take_along_axis(scores, top, 1)], axis=1)
        merged_rows = np.concatenate([best[1], top + start], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best = np.take_along_axis(merged_scores, order, 1), np.take_along_axis(merged_rows, order, 1)
    return best[1]


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k that was found."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def tune(index, matrix: Matrix, target: float = TARGET_RECALL, k: int = 10, queries: int = 200) -> dict:
    """The fastest (nprobe, rerank) whose recall@k against exact search reaches ``target`` on queries shaped like
    the collection, measured; the most thorough one tried when none does. Returns the chosen SearchParams with
    what was measured.

    A setting's time is its search with the rows it re-ranks in memory, plus the cost of reading them where they are
    not: the most thorough setting runs twice first, the rows read from wherever they are, then from memory, and the
    difference per row re-ranked is what a row costs to read. Where the vectors fit in memory that is about nothing;
    where they do not (10M float32 vectors are 31 GB), each query reads its candidates from disk, and fewer
    candidates from more clusters answer faster. (Timing each setting as it came would charge the first ones for
    reading rows that the later ones then find in memory.)"""
    sample = tuning_queries(matrix, min(queries, len(matrix)))
    truth = exact_neighbours(matrix, sample, k)
    probes = [p for p in (4, 8, 16, 32, 64, 128, 256) if p <= max(_nlist(index), 4)]
    reranks = (25, 50, 100, 200, 400)
    matrix.random_access()
    thorough = SearchParams(probes[-1], reranks[-1])
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        for q in sample:
            search(index, matrix, q, k, thorough)
        passes.append(time.perf_counter() - start)
    row_read = max(0.0, passes[0] - passes[1]) / (len(sample) * thorough.rerank)
    tried = []
    for nprobe in probes:
        for rerank in reranks:
            params = SearchParams(nprobe, max(rerank, k))
            start = time.perf_counter()
            found = [search(index, matrix, q, k, params)[1] for q in sample]
            seconds = (time.perf_counter() - start) / len(sample) + params.rerank * row_read
            tried.append((recall(found, truth), seconds, params))
    good = [t for t in tried if t[0] >= target]
    chosen = min(good, key=lambda t: t[1]) if good else max(tried, key=lambda t: (t[0], -t[1]))
    return {"params": chosen[2], "recall": chosen[0], "ms": chosen[1] * 1000, "target": target, "queries": len(sample),
            "row_read_ms": row_read * 1000}  # fmt: skip


def _nlist(index) -> int:
    try:
        return faiss_module().extract_index_ivf(index).nlist
    except RuntimeError:  # not an inverted file: nprobe means nothing
        return 0


# -- files ------------------------------------------------------------------------------------------------------------


def write(index, path: Path) -> int:
    """Writes ``index`` to ``path`` atomically (a temporary file renamed over it), readable by its owner alone.
    Returns the file's ``checksum``, for ``read`` to check the file against before faiss parses it."""
    faiss = faiss_module()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return checksum(path)


def checksum(path: Path) -> int:
    """The file's CRC-32: 2 GB/s here, so checking an index's file at 1M vectors costs about 30 ms. It tells a
    damaged, cut or replaced file from the one written, not a forgery from the truth (whoever can write the index
    folder can write anything)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


# faiss trusts the sizes a file declares: one damaged byte of a list's length made a 24 KB file allocate 15 GB.
# A file with no checksum to check (another tool's, or written before checksums) is first read in a child process
# that may use this much memory beyond the file's own size.
TRIAL_READ_MEMORY = 512 * 2**20
_TRIAL_READ = """
import resource, sys
import faiss
path, allowed = sys.argv[1], int(sys.argv[2])
with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + allowed, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
except MemoryError:
    sys.exit(3)
except Exception as e:
    print(str(e).strip().splitlines()[-1:], file=sys.stderr)
    sys.exit(4)
"""


def trial_read(path: Path, timeout: float = 120) -> None:
    """Reads ``path`` with faiss in a child process whose memory is bounded (``TRIAL_READ_MEMORY`` beyond the file's
    size), so a file that declares more than it holds costs that child, not this process. IndexFileError if the read
    fails there. Without ``/proc`` (not Linux) there is nothing to bound it by, and the file is read as it is."""
    if not Path("/proc/self/statm").exists():
        return
    allowed = path.stat().st_size + TRIAL_READ_MEMORY
    try:
        done = subprocess.run([sys.executable, "-c", _TRIAL_READ, str(path), str(allowed)],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise IndexFileError(f"{path} is not a readable faiss index (reading it took over {timeout:.0f} s)") from None
    if done.returncode == 3:
        raise IndexFileError(f"{path} is not a readable faiss index (it declares more data than it holds)") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise IndexFileError(f"{path} is not a readable faiss index ({reason[0][:200]})")


def read(
    path: Path,
    *,
    dim: int,
    rows: int | None = None,
    mmap: bool = True,
    inverted_file: bool = True,
    expected: int | None = None,
):
    """The faiss index in ``path``, memory-mapped unless ``mmap`` is False (to extend it). IndexFileError naming the
    file when it is missing, not a faiss index (or a damaged one), not searched by inner product, of another
    dimension or number of rows than the index it belongs to, or (``inverted_file``) not an inverted file.

    ``expected`` is the ``checksum`` the file was written with: a file that differs is refused before faiss parses
    it. Without one, the file is first read in a bounded child process (``trial_read``)."""
    faiss = faiss_module()
    if not path.is_file():
        raise IndexFileError(f"{path} is missing")
    with open(path, "rb") as f:
        magic = f.read(4)
    if len(magic) < 4 or magic[:1] != b"I" or not magic.isascii() or not magic.isalnum():  # faiss's four-letter tags
        raise IndexFileError(f"{path} is not a faiss index")
    if expected is None:
        trial_read(path)
    elif checksum(path) != expected:
        raise IndexFileError(f"{path} is damaged or was replaced since it was written (its checksum differs)")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as e:  # faiss says what it could not read
        raise IndexFileError(f"{path} is not a readable faiss index ({_first_line(e)})") from None
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        if inverted_file:
            raise IndexFileError(f"{path} is a faiss {type(index).__name__}, not an inverted-file index") from None
        ivf = index
    if index.d != dim:
        raise IndexFileError(f"{path} holds {index.d}-dimensional vectors, the index {dim}-dimensional ones")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFileError(f"{path} ranks by L2 distance, not by inner product (cosine) as the index needs")
    if rows is not None and index.ntotal != rows:
        raise IndexFileError(f"{path} holds {index.ntotal:,} vectors, the index {rows:,}")
    if not ivf.is_trained:
        raise IndexFileError(f"{path} holds an untrained index")
    return index


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def describe(index, params: SearchParams) -> dict:
    faiss = faiss_module()
    ivf = faiss.extract_index_ivf(index)
    return {"type": faiss.reverse_index_factory(index) if hasattr(faiss, "reverse_index_factory") else type(index).__name__,
            "nlist": ivf.nlist, "rows": index.ntotal, **asdict(params)}  # fmt: skip
