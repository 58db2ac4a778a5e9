"""The index over embedding files in clip-retrieval's layout (``altclip index --from-embeddings``): built from what
``altclip embed`` writes, searched like an image index (library, command line, service, clip-retrieval's API), an
index autofaiss built served as clip-retrieval's own back end serves it, incremental, crash-safe, and every bad input
an error naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from altclip.cli import build as build_cli
from altclip.index import EmbeddingsIndex, IndexFileError, IndexMismatchError, approximate, open_index
from altclip.index.embeddings_index import build
from test_index import make_images


@pytest.fixture
def run(checkpoint):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(build_cli(), [str(a) for a in args], env={"ALTCLIP_MODEL": str(checkpoint)})

    return invoke


def write_shards(folder: Path, sizes: list[int], dim: int = 16, seed: int = 0, first: int = 0) -> np.ndarray:
    """Shards of random unit vectors in clip-retrieval's layout (as `altclip embed` writes them); all the vectors,
    in shard order."""
    rng = np.random.default_rng(seed)
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    out = []
    for i, n in enumerate(sizes, start=first):
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        np.save(folder / "img_emb" / f"img_emb_{i}.npy", vectors)
        pq.write_table(pa.table({"image_path": [f"/photos/{i}/{r}.jpg" for r in range(n)]}),
                       folder / "metadata" / f"metadata_{i}.parquet")  # fmt: skip
        out.append(vectors)
    return np.concatenate(out)


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return np.argsort(-(vectors @ query), kind="stable")[:k].tolist()


def test_from_embeddings_of_altclip_embed(run, tmp_path, embedder):
    """`altclip embed --shard` twice, then `altclip index --from-embeddings`: `altclip search` finds what exact
    search over the embedding files finds; the model comes from the files."""
    folder = tmp_path / "photos"
    paths = make_images(folder, 9)
    out = tmp_path / "emb"
    for shard in ("0/2", "1/2"):
        assert run("embed", folder, "--output", out, "--shard", shard).exit_code == 0
    result = run("index", "--from-embeddings", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["rows"], report["shards"], report["approximate"]) == (9, 2, "none")  # small: exact
    index_dir = out / "index"
    with open_index(index_dir) as index:
        assert isinstance(index, EmbeddingsIndex) and index.model == embedder.name and index.count() == 9
    hits = json.loads(run("search", "--image", paths[4], "--index", index_dir, "-k", "3", "--json").stdout)
    assert hits[0]["path"] == str(paths[4]) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    query = embedder.embed_texts(["一只红色的猫"])[0]
    names = [
        p for i in (0, 1) for p in pq.read_table(out / "metadata" / f"metadata_{i}.parquet")["image_path"].to_pylist()
    ]
    vectors = np.concatenate([np.load(out / "img_emb" / f"img_emb_{i}.npy") for i in (0, 1)])
    by_text = json.loads(run("search", "一只红色的猫", "--index", index_dir, "-k", "4", "--json").stdout)
    assert [h["path"] for h in by_text] == [names[i] for i in exact_top(vectors, query, 4)]
    again = json.loads(run("index", "--from-embeddings", out, "--json").stdout)
    assert (again["added_shards"], again["rows"]) == (0, 9)


def test_approximate_equals_exact_at_full_nprobe_and_extends(tmp_path):
    """The IVF-PQ index probing every cluster and re-ranking enough candidates returns exact search's answer; a new
    shard is added without retraining (the trained count stays), and its vectors are found."""
    source = tmp_path / "emb"
    vectors = write_shards(source, [700, 500], dim=32)
    report = build(source, tmp_path / "index", exact_below=0)
    assert report["approximate"] == "built"
    with EmbeddingsIndex(tmp_path / "index") as index:
        index.params = approximate.SearchParams(nprobe=4096, rerank=1200)
        for q in vectors[:20] + 0.3:
            q = q / np.linalg.norm(q)
            hits = index.search(q.astype(np.float32), 10)
            assert [h.id for h in hits] == exact_top(vectors, q, 10)
            assert np.allclose([h.score for h in hits], np.sort(vectors @ q)[::-1][:10], atol=1e-6)
        assert hits[0].path.startswith("/photos/")
    more = write_shards(source, [300], dim=32, seed=1, first=2)
    report = build(source, tmp_path / "index", exact_below=0)
    assert (report["approximate"], report["added_shards"], report["rows"]) == ("extended", 1, 1500)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["approximate"]["trained"] == 1200
    with EmbeddingsIndex(tmp_path / "index") as index:
        assert index.search(more[7], 1)[0].id == 1207 and index.display_name(1207) == "/photos/2/7.jpg"


def test_embedding_files_with_no_vectors_at_all_are_refused_as_empty(run, tmp_path):
    """Every shard empty (an `altclip embed` whose files all failed): no index of 0 dimensions whose searches would
    blame the model, but an error saying the files hold no vectors (exit 5)."""
    source = tmp_path / "emb"
    write_shards(source, [0, 0])
    with pytest.raises(IndexFileError, match="hold no vectors"):
        build(source, tmp_path / "index")
    result = run("index", "--from-embeddings", source)
    assert result.exit_code == 5 and "hold no vectors" in " ".join(result.output.split())
    assert not (source / "index" / "manifest.json").exists()


@pytest.mark.parametrize("exact_below", [0, 10_000])
def test_an_empty_shard_does_not_shift_the_names_of_the_next(tmp_path, exact_below):
    """A shard of no vectors (what `altclip embed --shard i/n` writes for a slice with no inputs, or whose files all
    failed) is part of the index without shifting the metadata: every row is named by its own shard's file, found
    exactly or approximately."""
    source = tmp_path / "emb"
    sizes = [30, 0, 20, 25] if exact_below else [300, 0, 200, 250]
    vectors = write_shards(source, sizes)
    names = [f"/photos/{i}/{r}.jpg" for i, n in enumerate(sizes) for r in range(n)]
    build(source, tmp_path / "index", exact_below=exact_below)
    with EmbeddingsIndex(tmp_path / "index") as index:
        index.params = index.params and approximate.SearchParams(nprobe=4096, rerank=1000)
        assert [index.name(r) for r in range(len(names))] == names
        for row in (0, sizes[0] - 1, sizes[0], len(names) - 1):
            hit = index.search(vectors[row], 1)[0]
            assert (hit.id, hit.path) == (row, names[row])


def test_a_build_holds_the_index_lock_and_repairs_lost_files(tmp_path, monkeypatch):
    """Builds of one index take turns (another build's cleanup deletes the files this one's manifest is about to
    name): the manifest is written under the index's lock. Files of the index that were lost (a faiss file, a
    metadata copy) are made again by the next build, which does not stop at them."""
    from filelock import FileLock, Timeout

    from altclip.index import embeddings_index

    source = tmp_path / "emb"
    vectors = write_shards(source, [300, 200])
    held = []
    write_manifest = embeddings_index._write_manifest

    def checking(folder, manifest):
        with pytest.raises(Timeout):
            FileLock(folder / "index.lock").acquire(timeout=0)
        held.append(True)
        write_manifest(folder, manifest)

    monkeypatch.setattr(embeddings_index, "_write_manifest", checking)
    build(source, tmp_path / "index", exact_below=0)
    assert held == [True]
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    (tmp_path / "index" / manifest["approximate"]["file"]).unlink()
    (tmp_path / "index" / manifest["parts"][1]["arrow"]).unlink()
    report = build(source, tmp_path / "index", exact_below=0)
    assert (report["approximate"], report["rows"]) == ("built", 500)
    with EmbeddingsIndex(tmp_path / "index") as index:
        hit = index.search(vectors[420], 1)[0]
        assert (hit.id, hit.path) == (420, "/photos/1/120.jpg")


def test_crash_during_a_build_leaves_the_old_index(tmp_path, monkeypatch):
    source = tmp_path / "emb"
    vectors = write_shards(source, [400], dim=16)
    build(source, tmp_path / "index", exact_below=0)
    manifest = (tmp_path / "index" / "manifest.json").read_text()
    write_shards(source, [200], dim=16, seed=3, first=1)

    def dying(index, path):
        path.with_name(f".{path.name}.tmp").write_bytes(b"IwPQ half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(approximate, "write", dying)
    with pytest.raises(OSError):
        build(source, tmp_path / "index", exact_below=0)
    assert (tmp_path / "index" / "manifest.json").read_text() == manifest
    with EmbeddingsIndex(tmp_path / "index") as index:  # the old index, over the shards it was built from
        assert index.count() == 400 and index.search(vectors[5], 1)[0].id == 5


def _stamp_shard(path: Path, shard: str) -> None:
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"altclip.shard": shard.encode()}), path)


@pytest.mark.parametrize(
    "damage, named, message",
    [
        (lambda s: (s / "metadata" / "metadata_1.parquet").unlink(), "metadata/metadata_1.parquet", "is missing"),
        (lambda s: (s / "img_emb" / "img_emb_1.npy").unlink(), "img_emb/img_emb_1.npy", "is missing"),
        (lambda s: pq.write_table(pa.table({"image_path": ["a"] * 3}), s / "metadata" / "metadata_1.parquet"),
         "metadata/metadata_1.parquet", "has 3 rows but"),
        (lambda s: np.save(s / "img_emb" / "img_emb_1.npy", (np.ones((20, 8)) / np.sqrt(8)).astype(np.float32)),
         "img_emb/img_emb_1.npy", "8-dimensional"),
        (lambda s: (s / "img_emb" / "img_emb_1.npy").write_bytes(b"\x93NUMPY garbage"), "img_emb/img_emb_1.npy",
         "not a readable .npy"),
        (lambda s: (s / "metadata" / "metadata_1.parquet").write_bytes(b"PAR1 not really"),
         "metadata/metadata_1.parquet", "not a readable parquet"),
        (lambda s: np.save(s / "img_emb" / "img_emb_1.npy", np.full((20, 16), 2.0, np.float32)),
         "img_emb/img_emb_1.npy", "unit-norm"),
        (lambda s: [_stamp_shard(s / "metadata" / f"metadata_{i}.parquet", f"{i}/3") for i in (0, 1)],
         "img_emb/img_emb_2.npy", "shard 2/3 has not been embedded"),
    ],
)  # fmt: skip
def test_bad_embedding_files_name_the_file(run, tmp_path, damage, named, message):
    source = tmp_path / "emb"
    write_shards(source, [30, 20])
    damage(source)
    with pytest.raises(IndexFileError, match=message) as raised:
        build(source, tmp_path / "index")
    assert str(source / named) in str(raised.value)
    result = run("index", "--from-embeddings", source, "--index", tmp_path / "index")
    assert result.exit_code == 5 and str(source / named) in " ".join(result.output.split()), result.output
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_opening_checks_the_files_it_was_built_from(run, tmp_path):
    """A shard changed or removed since the build, a damaged approximate index: the index is not served, and the
    message names the file."""
    source = tmp_path / "emb"
    write_shards(source, [300, 200])
    build(source, tmp_path / "index", exact_below=0)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    faiss_file = tmp_path / "index" / manifest["approximate"]["file"]
    saved = faiss_file.read_bytes()
    faiss_file.write_bytes(b"not faiss at all")
    with pytest.raises(IndexFileError, match="is not a faiss index"):
        EmbeddingsIndex(tmp_path / "index")
    faiss_file.write_bytes(saved[: len(saved) // 2])
    with pytest.raises(IndexFileError, match=f"{faiss_file} is damaged or was replaced since it was written"):
        EmbeddingsIndex(tmp_path / "index")
    faiss_file.write_bytes(saved)
    EmbeddingsIndex(tmp_path / "index").close()
    write_shards(source, [201], first=1)
    with pytest.raises(IndexFileError, match="img_emb_1.npy changed since the index"):
        EmbeddingsIndex(tmp_path / "index")
    result = run("search", "a cat", "--index", tmp_path / "index")
    assert result.exit_code == 5 and "img_emb_1.npy changed" in " ".join(result.output.split())
    (source / "img_emb" / "img_emb_0.npy").unlink()
    with pytest.raises(IndexFileError, match="img_emb_0.npy is missing"):
        EmbeddingsIndex(tmp_path / "index")


def test_foreign_faiss_files_are_refused(tmp_path):
    import faiss

    source = tmp_path / "emb"
    write_shards(source, [50, 30])
    cases = {
        "other-dim.index": (faiss.IndexFlatIP(8), 80, "8-dimensional vectors"),
        "other-count.index": (faiss.IndexFlatIP(16), 79, "holds 79 vectors, the index 80"),
        "l2.index": (faiss.IndexFlatL2(16), 80, "L2 distance"),
    }
    for name, (index, count, message) in cases.items():
        index.add(np.random.default_rng(0).standard_normal((count, index.d)).astype(np.float32))
        faiss.write_index(index, str(tmp_path / name))
        with pytest.raises(IndexFileError, match=message) as raised:
            build(source, tmp_path / "index", faiss_index=tmp_path / name)
        assert str(tmp_path / name) in str(raised.value)
    (tmp_path / "zip.index").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(IndexFileError, match="is not a faiss index"):
        build(source, tmp_path / "index", faiss_index=tmp_path / "zip.index")


def test_a_faiss_file_whose_ids_are_not_rows_is_refused_and_never_crashes_a_search(tmp_path):
    """A faiss file of the right dimension and count whose ids are not the shards' rows (an ID map of its own ids,
    or a file replaced after the build) is an error naming it when adopted, and a search through one drops the ids
    that are no row instead of failing."""
    import faiss

    source = tmp_path / "emb"
    vectors = write_shards(source, [50, 30])
    mapped = faiss.IndexIDMap(faiss.IndexFlatIP(16))
    mapped.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64) + 10**9)
    faiss.write_index(mapped, str(tmp_path / "ids.index"))
    with pytest.raises(IndexFileError, match="answers with id 1,000,000,") as raised:
        build(source, tmp_path / "index", faiss_index=tmp_path / "ids.index")
    assert str(tmp_path / "ids.index") in str(raised.value) and not (tmp_path / "index" / "manifest.json").exists()
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors)
    faiss.write_index(flat, str(tmp_path / "flat.index"))
    build(source, tmp_path / "index", faiss_index=tmp_path / "flat.index")
    with EmbeddingsIndex(tmp_path / "index") as index:
        index.ann = mapped  # what a file replaced after the build answers
        assert index.search(vectors[3], 5) == []


def test_a_faiss_file_that_declares_more_than_it_holds_costs_a_bounded_child_not_the_process(tmp_path):
    """faiss allocates what a file declares before it reads it: a flat index whose vector count says 2**28 (1 GB)
    in a file of 700 bytes. A file with no checksum (another tool's) is read first in a child process bounded to its
    size and 512 MiB more, so it is refused there; read in this process it would allocate the gigabyte (and then fail
    on a read error)."""
    import struct

    import faiss

    source = tmp_path / "emb"
    vectors = write_shards(source, [50, 30])
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors)
    faiss.write_index(flat, str(tmp_path / "flat.index"))
    data = bytearray((tmp_path / "flat.index").read_bytes())
    field = data.find(struct.pack("<Q", 80 * 16))  # the length of the vectors' array: 80 x 16 floats
    assert field > 0
    data[field : field + 8] = struct.pack("<Q", 2**28)
    (tmp_path / "lying.index").write_bytes(data)
    with pytest.raises(IndexFileError, match="declares more data than it holds") as raised:
        build(source, tmp_path / "index", faiss_index=tmp_path / "lying.index")
    assert str(tmp_path / "lying.index") in str(raised.value)


def test_the_index_own_faiss_file_is_checked_before_faiss_reads_it(tmp_path):
    """A search file altclip wrote carries its CRC-32 in the manifest: a damaged or replaced file is refused before
    faiss parses it (a flipped byte of a list's length made faiss allocate 15 GB)."""
    source = tmp_path / "emb"
    write_shards(source, [3000, 3000])
    build(source, tmp_path / "index", exact_below=1000)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    ann = tmp_path / "index" / manifest["approximate"]["file"]
    data = bytearray(ann.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ann.write_bytes(data)
    with pytest.raises(IndexFileError, match="damaged or was replaced since it was written") as raised:
        EmbeddingsIndex(tmp_path / "index")
    assert str(ann) in str(raised.value)


def test_model_and_dimension_are_checked(tmp_path, embedder):
    source = tmp_path / "emb"
    write_shards(source, [25])
    build(source, tmp_path / "index", model="some/model")
    with EmbeddingsIndex(tmp_path / "index") as index:
        index.bind("some/model", 16)
        with pytest.raises(IndexMismatchError, match="Use --model some/model"):
            index.bind("other/model", 16)
        with pytest.raises(IndexMismatchError, match="Query has 3 dimensions"):
            index.search(np.zeros(3, np.float32))


# -- autofaiss and clip-retrieval's back end ------------------------------------------------------------------------


def clip_back():
    """clip-retrieval's back end module (``clip_retrieval.clip_back``), as installed without its dependencies: the
    model-loading packages it imports at the top (and never calls for an embedding query) are stand-ins."""
    import importlib
    import importlib.abc
    import importlib.machinery
    import sys
    import types

    pytest.importorskip("flask_restful")

    class Absent(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return object

    class StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        names = ("wandb", "webdataset", "all_clip", "sentence_transformers", "clip", "open_clip", "img2dataset")

        def find_spec(self, name, path, target=None):
            if (
                name.split(".")[0] in self.names
                and importlib.machinery.PathFinder.find_spec(name.split(".")[0]) is None
            ):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            return Absent(spec.name)

        def exec_module(self, module):
            pass

    finder = StandIns()
    sys.meta_path.insert(0, finder)
    try:
        module = importlib.import_module("clip_retrieval.clip_back")  # the package's own clip_back is a function
    finally:
        sys.meta_path.remove(finder)
    return module


def test_autofaiss_index_served_as_clip_retrieval_serves_it(tmp_path, embedder, checkpoint):
    """`altclip embed` writes the layout, autofaiss builds its index over img_emb, `altclip index --from-embeddings
    --faiss-index` adopts it, and `altclip serve` answers /knn-service and /metadata as clip-retrieval's own back end
    (its KnnService, on the same faiss file and metadata folder) answers."""
    import faiss
    import httpx
    from autofaiss import build_index

    from serving import serve_process

    runner = CliRunner()
    folder = tmp_path / "photos"
    make_images(folder, 14)
    out = tmp_path / "emb"
    for shard in ("0/3", "1/3", "2/3"):
        assert runner.invoke(build_cli(), ["embed", str(folder), "--output", str(out), "--shard", shard,
                                           "--model", str(checkpoint)]).exit_code == 0  # fmt: skip
    knn_file = tmp_path / "knn.index"
    # save_on_disk=False: autofaiss's own writer fails to write its infos JSON under numpy 2 (float32 values)
    index, _ = build_index(embeddings=str(out / "img_emb"), save_on_disk=False, max_index_memory_usage="100M",
                           current_memory_available="1G", verbose=40)  # fmt: skip
    faiss.write_index(index, str(knn_file))
    result = runner.invoke(build_cli(), ["index", "--from-embeddings", str(out), "--faiss-index", str(knn_file),
                                         "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["approximate"] == "adopted"

    back = clip_back()
    resource = back.ClipResource(
        device="cpu", model=None, preprocess=None, tokenizer=None, model_txt_mclip=None, safety_model=None,
        violence_detector=None, metadata_provider=back.ParquetMetadataProvider(str(out / "metadata")),
        image_index=back.load_index(str(knn_file), True), text_index=None, ivf_old_to_new_mapping=None,
        columns_to_return=["image_path"], metadata_is_ordered_by_ivf=False, aesthetic_embeddings=None,
    )  # fmt: skip
    theirs = back.KnnService(clip_resources={"index": resource})
    images = embedder.embed_images([str(p) for p in sorted(folder.iterdir())[:3]])
    queries = np.concatenate([embedder.embed_texts(["一只猫", "a red square", "кошка"]), images])
    with serve_process("--model", str(checkpoint), "--index", str(out / "index")) as url:
        for q in queries:
            expected = theirs.query(embedding_input=q.tolist(), num_images=5, num_result_ids=5, deduplicate=False)
            answer = httpx.post(url + "/knn-service", json={"embedding_input": q.tolist(), "num_images": 5})
            assert answer.status_code == 200, answer.text
            ours = answer.json()
            assert [r["id"] for r in ours] == [r["id"] for r in expected]
            assert np.allclose([r["similarity"] for r in ours], [r["similarity"] for r in expected], atol=1e-5)
            assert [r["caption"] for r in ours] == [Path(r["image_path"]).name for r in expected]
            ids = [r["id"] for r in expected]
            metadata = httpx.post(url + "/metadata", json={"ids": ids}).json()
            names = [Path(m["image_path"]).name for m in theirs.clip_resources["index"].metadata_provider.get(ids)]
            assert [m["metadata"]["caption"] for m in metadata] == names
        search = httpx.post(url + "/v1/search", json={"query": "一只猫", "top_k": 3}).json()["results"]
        assert len(search) == 3 and all(r["name"].endswith((".jpg", ".png")) for r in search)
        thumbnail = httpx.get(url + f"/v1/thumbnails/{search[0]['id']}")
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert httpx.get(url + "/v1/info").json()["index"]["images"] == 14


def test_serve_refuses_a_damaged_embeddings_index(tmp_path, checkpoint, run):
    source = tmp_path / "emb"
    write_shards(source, [30])
    build(source, tmp_path / "index")
    shutil.copy(source / "img_emb" / "img_emb_0.npy", tmp_path / "saved.npy")
    (source / "img_emb" / "img_emb_0.npy").unlink()
    result = run("serve", "--index", tmp_path / "index", "--port", "0")
    assert result.exit_code == 5 and "img_emb_0.npy is missing" in " ".join(result.output.split())


@pytest.mark.parametrize("rows", [30, 6000], ids=["exact", "approximate"])
def test_a_shard_cut_short_under_a_running_server_is_a_503_not_a_crash(tmp_path, embedder, rows):
    """A shard truncated in place while the service has it mapped: reading its pages would kill the process
    (SIGBUS). The search that would read them is a 503 naming the file, and the server goes on answering."""
    import os

    from altclip.server import ServerSettings
    from serving import in_process

    source = tmp_path / "emb"
    write_shards(source, [rows], dim=embedder.dim)
    build(source, tmp_path / "index", exact_below=1000)
    with in_process(ServerSettings(index=str(tmp_path / "index")), embedder) as app:
        assert app.post("/v1/search", json={"query": "a cat", "top_k": 3}).status_code == 200
        os.truncate(source / "img_emb" / "img_emb_0.npy", 128)
        answer = app.post("/v1/search", json={"query": "a cat", "top_k": 3})
        assert answer.status_code == 503, answer.text
        assert "img_emb_0.npy was cut short while the index was open" in answer.json()["detail"]
        assert app.get("/healthz").status_code == 200


def test_names_from_metadata_are_bounded(tmp_path):
    """Metadata comes from files: a result's name is cut to MAX_NAME characters, saying how long it was."""
    from altclip.index.embeddings_index import MAX_NAME

    source = tmp_path / "emb"
    write_shards(source, [3])
    long = "/photos/" + "x" * 1_000_000 + ".jpg"
    pq.write_table(pa.table({"image_path": [long, "/photos/b.jpg", None]}), source / "metadata" / "metadata_0.parquet")
    build(source, tmp_path / "index")
    with EmbeddingsIndex(tmp_path / "index") as index:
        assert index.name(0) == long[:MAX_NAME] + f"... ({len(long):,} characters)"
        assert (index.name(1), index.name(2)) == ("/photos/b.jpg", "#2")
