"""Image search at 100k, 1M and 10M vectors: build time, memory, latency and recall of the index that
`altclip index --from-embeddings` builds, against exact search, beside the other candidates (faiss HNSW, usearch).

    python benchmarks/search_scale.py --rows 100000 --candidates --crossover --sqlite # the comparisons, at 100k
                                                     # (--candidates needs `pip install usearch`)
    python benchmarks/search_scale.py --rows 1000000 --http --sqlite                  # the targets at 1M
    python benchmarks/search_scale.py --rows 10000000 --budget 4294967296 --data /big/disk/search10m   # 10M
    python benchmarks/search_scale.py --rows 1000000 --milvus-only     # a local Milvus server (`pip install milvus`)

The vectors are synthetic, shaped like image embeddings: points of 4,096 Gaussian clusters (spread 0.7 around
centres drawn from N(0, 1)) in a 48-dimensional latent space, projected to 768 dimensions by a fixed random matrix,
plus isotropic noise of a quarter of the signal's scale per dimension, normalised. Neighbours have graded
similarities (a query's top-1 cosine is about 0.73, its 10th about 0.65), unlike isotropic clusters where every
neighbour is a near-tie. Queries are 200 more points of the same distribution, never in the collection. They are
written in clip-retrieval's layout (img_emb/img_emb_{i}.npy, metadata/metadata_{i}.parquet, 100,000 rows a shard,
as `altclip embed --shard` writes them), streamed: memory stays at one chunk whatever the size.

Each phase runs in its own process, so its peak memory (and the memory an opened index holds: RssAnon, the
process's own; RssFile, pages of mapped files) is its own. Results: one JSON file (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, LATENT, CLUSTERS, SHARD_ROWS, CHUNK = 768, 48, 4096, 100_000, 25_000
QUERY_SEED = 10**9


def _structure():
    rng = np.random.default_rng(20)
    centres = rng.standard_normal((CLUSTERS, LATENT)).astype(np.float32)
    projection = (rng.standard_normal((LATENT, DIM)) / np.sqrt(LATENT)).astype(np.float32)
    return centres, projection


def synthetic(n: int, seed: int, spread: float = 0.7, noise: float = 0.25) -> np.ndarray:
    """(n, 768) unit vectors of the distribution above; the same for the same seed."""
    centres, projection = _structure()
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(0, CLUSTERS, n)] + spread * rng.standard_normal((n, LATENT), dtype=np.float32)
    x = latent @ projection
    x += noise * np.sqrt(1 + spread**2) * rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def generate(folder: Path, rows: int, shard_rows: int = SHARD_ROWS, first_shard: int = 0) -> None:
    """Writes ``rows`` vectors as shards of clip-retrieval's layout, a chunk at a time; existing shards are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    shards = (rows + shard_rows - 1) // shard_rows
    for s in range(first_shard, first_shard + shards):
        n = min(shard_rows, rows - (s - first_shard) * shard_rows)
        vectors, metadata = folder / "img_emb" / f"img_emb_{s}.npy", folder / "metadata" / f"metadata_{s}.parquet"
        if metadata.exists():
            continue
        out = np.lib.format.open_memmap(vectors, mode="w+", dtype=np.float32, shape=(n, DIM))
        for start in range(0, n, CHUNK):
            out[start : start + CHUNK] = synthetic(min(CHUNK, n - start), seed=s * 1000 + start // CHUNK)
        out.flush()
        del out
        paths = [f"/photos/{s:05d}/{i:06d}.jpg" for i in range(n)]
        pq.write_table(pa.table({"image_path": paths}), metadata)


def rss() -> dict:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    mb = lambda key: int(fields.get(key, "0 kB").split()[0]) / 1024  # noqa: E731
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rss_anon_mb": round(mb("RssAnon"), 1),
        "rss_file_mb": round(mb("RssFile"), 1),
        "peak_rss_mb": round(peak, 1),
    }


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


# -- phases (each in its own process) -------------------------------------------------------------------------------


def image_name(shard: int, row: int) -> str:
    """The image_path of a generated vector: results are compared by it, whatever order an index numbers rows in."""
    return f"/photos/{shard:05d}/{row:06d}.jpg"


def row_names(shards: list[Path], lengths: list[int]):
    """A function from rows of the matrix over ``shards`` (in that order) to image names."""
    numbers = [int(p.stem.rsplit("_", 1)[1]) for p in shards]
    offsets = np.cumsum([0] + lengths)

    def names(rows) -> list[str]:
        parts = np.searchsorted(offsets, rows, side="right") - 1
        return [image_name(numbers[p], int(r - offsets[p])) for p, r in zip(parts, rows)]

    return names


def phase_truth(args) -> dict:
    """Each query's exact top 10 (by image name), over every shard there is now: truth.npy, or after the added
    shard truth_added.npy."""
    from altclip.index.approximate import exact_neighbours
    from altclip.index.embeddings_index import find_shards
    from altclip.index.matrix import Matrix, open_npy

    shards = [v for v, _ in find_shards(args.data)]
    parts = [open_npy(v) for v in shards]
    matrix = Matrix(parts, DIM)
    queries = synthetic(args.queries, QUERY_SEED)
    start = time.perf_counter()
    truth = exact_neighbours(matrix, queries, 10)
    names = row_names(shards, [len(p) for p in parts])
    np.save(args.data / args.truth, np.array([names(t) for t in truth]))
    seconds = []
    for q in queries[: args.exact_queries]:
        t = time.perf_counter()
        matrix.search(q, 10)
        seconds.append(time.perf_counter() - t)
    return {"truth_seconds": round(time.perf_counter() - start, 1), "exact": percentiles(seconds), **rss()}


def phase_build(args) -> dict:
    from altclip.index.embeddings_index import build

    report = build(args.data, args.index, memory_budget=args.budget)
    manifest = json.loads((args.index / "manifest.json").read_text())
    return {**report, "manifest_approximate": manifest["approximate"], **rss()}


def phase_query(args) -> dict:
    import faiss  # noqa: F401  (imported before the clock starts: the first query measures the index, not imports)
    import pyarrow  # noqa: F401

    from altclip.index import EmbeddingsIndex

    queries = synthetic(args.queries, QUERY_SEED)
    truth = np.load(args.data / args.truth)
    imported = rss()
    start = time.perf_counter()
    index = EmbeddingsIndex(args.index)
    opened = time.perf_counter()
    index.search(queries[0], 10)
    first = time.perf_counter()
    after_first = rss()
    seconds, found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = index.search(q, 10)
        seconds.append(time.perf_counter() - t)
        found.append(np.array([h.path for h in hits]))
    return {
        "open_s": round(opened - start, 4),
        "first_query_s": round(first - start, 4),
        "after_imports": imported,
        "after_first_query": after_first,
        **percentiles(seconds),
        "recall_at_10": round(_recall(found, truth), 4),
        "after_queries": rss(),
    }


def phase_add(args) -> dict:
    from altclip.index.embeddings_index import build

    generate(args.data, 10_000, shard_rows=10_000, first_shard=ADDED_SHARD)  # a new shard of 10,000
    report = build(args.data, args.index, memory_budget=args.budget)
    return {**report, **rss()}


ADDED_SHARD = 900_000  # removed before each run, so that each run builds from the same vectors


def phase_crossover(args) -> dict:
    """Exact against approximate search on the first n rows, for growing n: where approximate gets faster."""
    from altclip.index import approximate
    from altclip.index.embeddings_index import find_shards
    from altclip.index.matrix import Matrix, open_npy

    parts = [open_npy(v) for v, _ in find_shards(args.data)]
    queries = synthetic(50, QUERY_SEED)
    rows = []
    for n in (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000):
        matrix = Matrix([np.ascontiguousarray(parts[0][:n])], DIM)
        exact = [_timed(matrix.search, q, 10) for q in queries]
        plan = approximate.plan(n, DIM, exact_below=0)
        index = approximate.build(matrix, plan)
        tuned = approximate.tune(index, matrix)
        approx = [_timed(approximate.search, index, matrix, q, 10, tuned["params"]) for q in queries]
        rows.append({"rows": n, "exact": percentiles(exact), "approximate": percentiles(approx),
                     "recall_at_10": round(tuned["recall"], 3), "params": vars(tuned["params"])})  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)
    return {"sizes": rows}


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def phase_candidates(args) -> dict:
    """The other index types on the same vectors: faiss HNSW (flat vectors in memory), faiss IVF-PQ with 8-bit codes
    (autofaiss's kind), and usearch (HNSW, int8 vectors, opened memory-mapped with ``view``)."""
    from altclip.index import approximate
    from altclip.index.embeddings_index import find_shards
    from altclip.index.matrix import Matrix, open_npy

    shards = [v for v, _ in find_shards(args.data)]
    parts = [open_npy(v) for v in shards]
    matrix, names = Matrix(parts, DIM), row_names(shards, [len(p) for p in parts])
    queries = synthetic(args.queries, QUERY_SEED)
    truth = np.load(args.data / args.truth)
    which = args.candidate
    work = args.data / f"candidate-{which}"
    start = time.perf_counter()
    if which == "hnsw":
        import faiss

        index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        for _, chunk in matrix.chunks():
            index.add(chunk)
        build = time.perf_counter() - start
        faiss.write_index(index, str(work))
        del index
        t = time.perf_counter()
        index = faiss.read_index(str(work))
        search = lambda q: index.search(q[None], 10, params=faiss.SearchParametersHNSW(efSearch=128))[1][0]  # noqa: E731
    elif which == "ivfpq8":
        import faiss

        plan = approximate.plan(len(matrix), DIM, exact_below=0)
        index = faiss.index_factory(DIM, f"IVF{plan.nlist},PQ64", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).cp.niter = approximate.TRAIN_ITERATIONS
        index.train(matrix.take(approximate.sample_rows(len(matrix), plan.train_rows)))
        approximate.extend(index, matrix, 0)
        tuned = approximate.tune(index, matrix)["params"]
        build = time.perf_counter() - start
        faiss.write_index(index, str(work))
        t = time.perf_counter()
        index = approximate.read(work, dim=DIM)
        search = lambda q: approximate.search(index, matrix, q, 10, tuned)[1]  # noqa: E731
    else:
        from usearch.index import Index

        index = Index(ndim=DIM, metric="ip", dtype="i8", connectivity=16)
        for first, chunk in matrix.chunks():
            index.add(np.arange(first, first + len(chunk)), chunk, threads=args.threads)
        build = time.perf_counter() - start
        index.save(str(work))
        del index
        t = time.perf_counter()
        index = Index.restore(str(work), view=True)
        index.expansion_search = 128

        def search(q):
            keys = index.search(q, 100).keys
            return matrix.rerank(q, np.asarray(keys, np.int64), 10)[1]

    search(queries[0])
    first = time.perf_counter() - t
    after_first = rss()
    seconds, found = [], []
    for q in queries:
        s = time.perf_counter()
        found.append(np.array(names(search(q))))
        seconds.append(time.perf_counter() - s)
    result = {"candidate": which, "build_s": round(build, 1), "file_mb": round(work.stat().st_size / 2**20, 1),
              "first_query_s": round(first, 4), "after_first_query": after_first, **percentiles(seconds),
              "recall_at_10": round(_recall(found, truth), 4)}  # fmt: skip
    work.unlink()
    return result


def phase_http(args) -> dict:
    """POST /v1/search (text queries: a tiny random model whose embeddings have 768 dimensions, so the model costs
    about a millisecond and the rest is the service and the index) and /knn-service with an embedding_input, over
    real HTTP to `altclip serve`."""
    import httpx

    import altclip
    from altclip.loading.registry import known_model

    checkpoint = args.data / "tiny-768"
    if not (checkpoint / "config.json").exists():
        config = known_model("tiny").config()
        config.projection_dim = 768
        config.text_config.project_dim = 768
        altclip.write_random_checkpoint(config, checkpoint)
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(
        [sys.executable, "-m", "altclip", "serve", "--index", str(args.index), "--model", str(checkpoint),
         "--port", str(port), "--max-wait-ms", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(600):
                try:
                    if client.get(url + "/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            texts = [f"query number {i}" for i in range(args.queries)]
            search, knn = [], []
            for text in texts:
                t = time.perf_counter()
                assert client.post(url + "/v1/search", json={"query": text, "top_k": 10}).status_code == 200
                search.append(time.perf_counter() - t)
            for q in synthetic(args.queries, QUERY_SEED):
                t = time.perf_counter()
                answer = client.post(url + "/knn-service", json={"embedding_input": q.tolist(), "num_images": 10})
                assert answer.status_code == 200, answer.text
                knn.append(time.perf_counter() - t)
            embed = []
            for text in texts[:50]:
                t = time.perf_counter()
                client.post(url + "/v1/embed/text", json={"texts": [text]})
                embed.append(time.perf_counter() - t)
    finally:
        server.terminate()
        server.wait(30)
    return {"v1_search": percentiles(search), "knn_service_embedding": percentiles(knn),
            "v1_embed_text_alone": percentiles(embed)}  # fmt: skip


def milvus_indexes(rows: int) -> dict:
    """Index type -> (build parameters, search parameters to try); about 4 sqrt(n) lists, as Milvus advises."""
    nlist = 1 << round(np.log2(4 * np.sqrt(rows)))
    return {
        "IVF_SQ8": ({"nlist": nlist}, [{"nprobe": n} for n in (16, 32, 64, 128)]),
        "IVF_PQ": ({"nlist": nlist, "m": 48, "nbits": 8}, [{"nprobe": n} for n in (32, 128)]),
    }


def phase_milvus(args) -> dict:
    """The same vectors in a real Milvus server (the `milvus` package's standalone server, here on the same two
    cores), searched through the image index's Milvus store (`--store milvus://HOST:PORT?index=...`): insert time,
    each index type's build time, then latency and recall@10 of ``MilvusVectors.search`` per search setting. The
    store keys vectors by content hash; here the image name is the key, so results compare with the truth directly."""
    from milvus import MilvusServer

    from altclip.index.embeddings_index import find_shards
    from altclip.index.milvus import MilvusVectors

    server = MilvusServer()
    server.set_base_dir(str(args.data / "milvus-server"))
    server.start()
    result: dict = {"server": "milvus (PyPI) standalone " + server.get_milvus_executable_path().rsplit("/", 1)[-1]}
    try:
        base = f"milvus://127.0.0.1:{server.listen_port}?collection=bench"
        indexes = milvus_indexes(args.rows)
        first, build = next(iter(indexes.items()))
        store = MilvusVectors(base + _milvus_query(first, build[0]))
        client = store.client
        if client.has_collection("bench"):
            client.drop_collection("bench")
        store.bind(DIM)
        start = time.perf_counter()
        for vectors, _ in find_shards(args.data):
            number = int(vectors.stem.rsplit("_", 1)[1])
            part = np.load(vectors, mmap_mode="r")
            for lo in range(0, len(part), 5_000):
                chunk = np.ascontiguousarray(part[lo : lo + 5_000])
                rows = [{"hash": image_name(number, lo + i), "vector": v} for i, v in enumerate(chunk)]
                client.insert("bench", rows)
        client.flush("bench")
        result["insert_s"] = round(time.perf_counter() - start, 1)
        print("inserted", result["insert_s"], file=sys.stderr, flush=True)
        queries = synthetic(args.queries, QUERY_SEED)
        truth = np.load(args.data / args.truth)
        for kind, (build_params, searches) in indexes.items():
            start = time.perf_counter()
            if kind != first:
                client.release_collection("bench")
                client.drop_index("bench", "vector")
                params = client.prepare_index_params()
                params.add_index(field_name="vector", index_type=kind, metric_type="IP", params=build_params)
                client.create_index("bench", params)
            while (info := client.describe_index("bench", "vector"))["indexed_rows"] < info["total_rows"]:
                time.sleep(1)
            client.release_collection("bench")
            client.load_collection("bench")  # the sealed segments with their index, nothing searched brute force
            seconds_built = round(time.perf_counter() - start, 1)
            row: dict = {"index": kind, "build": build_params, "build_and_load_s": seconds_built, "searches": []}
            print(kind, build_params, "built and loaded", seconds_built, file=sys.stderr, flush=True)
            for search in searches:
                searcher = MilvusVectors(base + _milvus_query(kind, build_params, search))
                searcher.search(queries[0], 10)
                seconds, found = [], []
                for q in queries:
                    t = time.perf_counter()
                    hits = searcher.search(q, 10)
                    seconds.append(time.perf_counter() - t)
                    found.append(np.array([h for h, _ in hits]))
                searcher.close()
                recall = round(_recall(found, truth), 4)
                row["searches"].append({**search, **percentiles(seconds), "recall_at_10": recall})
                print(kind, row["searches"][-1], file=sys.stderr, flush=True)
            result.setdefault("indexes", []).append(row)
        store.close()
    finally:
        server.stop()
    return result


def _milvus_query(kind: str, build: dict, search: dict | None = None) -> str:
    return "&" + "&".join(f"{k}={v}" for k, v in {"index": kind, **build, **(search or {})}.items())


def _sqlite_rows(index, shard: Path) -> int:
    """Puts a shard's vectors into an image index as the files it names, as `altclip index` would (one transaction
    per 10,000: vectors, then the file rows that refer to them); how many."""
    import hashlib

    vectors = np.load(shard, mmap_mode="r")
    number = int(shard.stem.rsplit("_", 1)[1])
    for start in range(0, len(vectors), 10_000):
        chunk = np.asarray(vectors[start : start + 10_000])
        names = [image_name(number, r) for r in range(start, start + len(chunk))]
        hashes = [hashlib.blake2b(n.encode(), digest_size=16).hexdigest() for n in names]
        with index.db:
            index.store.add(hashes, chunk)
            index.db.executemany(
                "INSERT INTO files (path, size, mtime_ns, hash, error, indexed_at) VALUES (?, 1, 1, ?, NULL, 0)",
                [(n.encode(), h) for n, h in zip(names, hashes)],
            )
    return len(vectors)


def phase_sqlite_build(args) -> dict:
    """The image index's own store (SQLite) with the collection's vectors, then what `altclip index` does at the end
    of a run: build the search structures (this code: the matrix file and IVF-PQ; before: the HNSW index)."""
    import shutil

    from altclip.index import ImageIndex

    folder = args.data / "sqlite-index"
    shutil.rmtree(folder, ignore_errors=True)
    index = ImageIndex(folder)
    index.bind("synthetic", DIM)
    start = time.perf_counter()
    first = 0
    for vectors in sorted((args.data / "img_emb").glob("*.npy"), key=str):
        if str(ADDED_SHARD) not in vectors.name:
            first += _sqlite_rows(index, vectors)
    inserted = time.perf_counter() - start
    start = time.perf_counter()
    index.store.build_approximate(args.threshold)
    return {"rows": first, "insert_s": round(inserted, 1), "build_s": round(time.perf_counter() - start, 1), **rss()}


def phase_sqlite_query(args) -> dict:
    import faiss  # noqa: F401
    import torch  # noqa: F401

    from altclip.index import ImageIndex

    queries = synthetic(args.queries, QUERY_SEED)
    truth = np.load(args.data / args.truth)
    start = time.perf_counter()
    index = ImageIndex(args.data / "sqlite-index", create=False)
    index.search(queries[0], 10)
    first = time.perf_counter() - start
    after_first = rss()
    seconds, found = [], []
    for q in queries[: args.sqlite_queries]:
        t = time.perf_counter()
        hits = index.search(q, 10)
        seconds.append(time.perf_counter() - t)
        found.append(np.array([h.path for h in hits]))
    return {"first_query_s": round(first, 3), "after_first_query": after_first, **percentiles(seconds),
            "recall_at_10": round(_recall(found, truth[: len(found)]), 4), "after_queries": rss()}  # fmt: skip


def _recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    """As altclip.index.approximate.recall (repeated here: --sqlite-only also measures code from before it)."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def phase_sqlite_add(args) -> dict:
    from altclip.index import ImageIndex

    index = ImageIndex(args.data / "sqlite-index", create=False)
    generate(args.data, 10_000, shard_rows=10_000, first_shard=ADDED_SHARD)  # the shard the embeddings index adds
    rows = index.count() + _sqlite_rows(index, args.data / "img_emb" / f"img_emb_{ADDED_SHARD}.npy")
    start = time.perf_counter()
    index.store.build_approximate(args.threshold)
    return {"rows": rows, "update_s": round(time.perf_counter() - start, 1), **rss()}


PHASES = {"sqlite-build": phase_sqlite_build, "sqlite-query": phase_sqlite_query, "sqlite-add": phase_sqlite_add,"truth": phase_truth, "build": phase_build, "query": phase_query, "add": phase_add,
          "crossover": phase_crossover, "candidate": phase_candidates, "http": phase_http,
          "milvus": phase_milvus}  # fmt: skip


def run_phase(name: str, args, **extra) -> dict:
    """Runs one phase in a process of its own; its result (JSON on its last stdout line)."""
    command = [sys.executable, __file__, "--phase", name, "--rows", str(args.rows), "--data", str(args.data),
               "--index", str(args.index), "--budget", str(args.budget), "--queries", str(args.queries),
               "--threads", str(args.threads)] + [f"--{k}={v}" for k, v in extra.items()]  # fmt: skip
    print(f"[{time.strftime('%H:%M:%S')}] {name} {extra or ''}", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    if done.returncode:
        return {"error": f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=None, help="[default: /tmp/altclip-search-ROWS]")
    parser.add_argument("--index", type=Path, default=None, help="[default: DATA/index]")
    parser.add_argument("--budget", type=int, default=2**30, help="memory budget of the index, bytes")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="faiss's threads (OMP_NUM_THREADS)")
    parser.add_argument("--candidates", action="store_true", help="also measure HNSW, IVF-PQ 8-bit and usearch")
    parser.add_argument("--crossover", action="store_true", help="also measure exact vs approximate by size")
    parser.add_argument("--http", action="store_true", help="also measure through `altclip serve`")
    parser.add_argument("--milvus", action="store_true", help="also measure a local Milvus server (`milvus` package)")
    parser.add_argument("--milvus-only", action="store_true", help="only that (and the exact truth)")
    parser.add_argument("--sqlite", action="store_true", help="also measure the image index's own store (SQLite)")
    parser.add_argument("--sqlite-only", action="store_true", help="only that (e.g. on another checkout's code)")
    parser.add_argument("--sqlite-queries", type=int, default=50)
    parser.add_argument("--threshold", type=int, default=5_000, help="--sqlite: approximate index from this size")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--truth", default="truth.npy", help=argparse.SUPPRESS)
    parser.add_argument("--candidate", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = args.data or Path(f"/tmp/altclip-search-{args.rows}")
    args.index = args.index or args.data / "index"
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return
    start = time.perf_counter()
    _remove_added(args)
    generate(args.data, args.rows)
    result = {"rows": args.rows, "dim": DIM, "threads": args.threads, "budget": args.budget,
              "generate_s": round(time.perf_counter() - start, 1), "date": time.strftime("%Y-%m-%d"),
              "cpu": _cpu(), "faiss_threads": args.threads}  # fmt: skip
    sqlite = {"sqlite-queries": args.sqlite_queries, "threshold": args.threshold}
    after = {"truth": "truth_added.npy"}
    # --sqlite-only may measure another checkout's code (PYTHONPATH): the truth files of an earlier run serve
    needed = ["truth.npy", after["truth"]] if args.sqlite_only else ["truth.npy"] if args.milvus_only else []
    known = bool(needed) and all((args.data / name).exists() for name in needed)
    if not known:
        result["truth"] = run_phase("truth", args, **{"exact-queries": args.exact_queries})
    if args.sqlite or args.sqlite_only:
        result["sqlite"] = {phase: run_phase(phase, args, **sqlite) for phase in ("sqlite-build", "sqlite-query")}
        result["sqlite"]["sqlite-add"] = run_phase("sqlite-add", args, **sqlite)  # the shard of 10,000 below
        if not known:
            run_phase("truth", args, **after)
        result["sqlite"]["sqlite-query-after-add"] = run_phase("sqlite-query", args, **sqlite, **after)
    _remove_added(args)
    if not (args.sqlite_only or args.milvus_only):
        result["build"] = run_phase("build", args)
        result["query"] = run_phase("query", args)
        result["add_10000"] = run_phase("add", args)
        result["truth_after_add"] = run_phase("truth", args, **after)
        result["query_after_add"] = run_phase("query", args, **after)
        if args.http:
            result["http"] = run_phase("http", args)
    _remove_added(args)
    if args.milvus or args.milvus_only:
        result["milvus"] = run_phase("milvus", args)
    if args.crossover:
        result["crossover"] = run_phase("crossover", args)
    if args.candidates:
        result["candidates"] = [run_phase("candidate", args, candidate=c) for c in ("ivfpq8", "usearch", "hnsw")]
    _write(args, result)


def _remove_added(args) -> None:
    """Takes away the shard of 10,000 that the add phases put in, so that every run starts from the same vectors
    (the embeddings index built from it then builds anew)."""
    for sub, name in (("img_emb", f"img_emb_{ADDED_SHARD}.npy"), ("metadata", f"metadata_{ADDED_SHARD}.parquet")):
        (args.data / sub / name).unlink(missing_ok=True)


def _write(args, result: dict) -> None:
    out = args.out or Path(__file__).parent / "results" / f"search_scale_{args.rows}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {out}", file=sys.stderr)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return f"x{os.cpu_count()}"


if __name__ == "__main__":
    main()
