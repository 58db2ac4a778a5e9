"""The image index: search, incremental updates, crash safety, bad files, stores."""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip.index import ImageIndex, IndexMismatchError
from altclip.inference import Embedder
from hostile_images import crafted


def make_images(folder: Path, n: int, start: int = 0, size=(96, 72)) -> list[Path]:
    """Distinct synthetic photos: a coloured background with a few rectangles, alternating JPEG and PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        array = np.empty((size[1], size[0], 3), np.uint8)
        array[:] = rng.integers(0, 256, 3)
        for _ in range(3):
            x, y = rng.integers(0, size[0] - 10), rng.integers(0, size[1] - 10)
            array[y : y + rng.integers(5, 30), x : x + rng.integers(5, 30)] = rng.integers(0, 256, 3)
        path = folder / f"img_{i:04d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def indexed_paths(index: ImageIndex) -> dict[str, str]:
    return {os.fsdecode(p): h for p, h in index.db.execute("SELECT path, hash FROM files WHERE hash IS NOT NULL")}


def assert_faithful(index: ImageIndex, folder: Path, embedder: Embedder) -> None:
    """The index holds exactly the readable images under ``folder``, each with the embedding of its content."""
    assert index.check() == []
    on_disk = {str(p) for p in folder.rglob("*") if p.suffix in (".jpg", ".png") and p.is_file()}
    rows = indexed_paths(index)
    assert set(rows) == on_disk
    paths = sorted(rows)
    expected = embedder.embed_images(paths)
    vectors = dict(index.db.execute("SELECT hash, embedding FROM vectors"))
    got = np.stack([np.frombuffer(vectors[rows[p]], np.float32) for p in paths])
    assert np.abs(got - expected).max() < 1e-5


def test_index_and_search(tmp_path, embedder):
    folder = tmp_path / "photos"
    paths = make_images(folder, 12)
    with ImageIndex(tmp_path / "index") as index:
        report = index.update([folder], embedder, batch_size=5)
        assert (report.found, report.new, report.embedded, report.failed) == (12, 12, 12, [])
        assert_faithful(index, folder, embedder)
        for path in paths[:4]:
            top = index.search(embedder.embed_images([str(path)])[0], 3)
            assert top[0].path == str(path) and top[0].score == pytest.approx(1.0, abs=1e-5)
            assert top[0].score >= top[1].score >= top[2].score
        hits = index.search(embedder.embed_texts(["一只红色的猫"])[0], 5)
        assert len(hits) == 5 and all(-1 <= h.score <= 1 for h in hits)
        assert index.file_path(hits[0].id) == os.fsencode(hits[0].path)
        stored = index.vectors([h.id for h in hits[::-1]])  # by id, in the order asked
        assert np.abs(stored - embedder.embed_images([h.path for h in hits[::-1]])).max() < 1e-5
        with pytest.raises(KeyError, match="No indexed image with id 999"):
            index.vectors([hits[0].id, 999])
        again = index.update([folder], embedder)
        assert (again.unchanged, again.embedded) == (12, 0)


def test_changes_are_followed_exactly(tmp_path, embedder):
    folder = tmp_path / "photos"
    paths = make_images(folder, 8)
    with ImageIndex(tmp_path / "index") as index:
        index.update([folder], embedder)
        # add two, modify one, rename one, delete one, duplicate one
        make_images(folder, 2, start=100)
        make_images(tmp_path / "other", 1, start=200)[0].replace(paths[0])  # new content at the same path
        os.utime(paths[0], ns=(1, 1))  # and an unusual mtime
        paths[1].rename(folder / "renamed.png")
        paths[2].unlink()
        (folder / "sub").mkdir()
        shutil.copy(paths[3], folder / "sub" / "copy.jpg")
        report = index.update([folder], embedder)
        assert (report.new, report.changed, report.deleted) == (4, 1, 2)  # 2 added + renamed + copy; paths[0]
        assert report.embedded == 3  # the two new images and the modified one
        assert report.reused == 2  # the renamed file and the duplicate reuse their vectors
        assert_faithful(index, folder, embedder)
        hit = index.search(embedder.embed_images([str(paths[3])])[0], 1)[0]
        assert {hit.path, *hit.duplicates} == {str(paths[3]), str(folder / "sub" / "copy.jpg")}
        assert index.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 9  # 10 files, one duplicate


def test_bad_files_are_recorded_not_fatal(tmp_path, embedder):
    folder = tmp_path / "photos"
    make_images(folder, 3)
    (folder / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    good = (folder / "img_0001.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not an image, not even looked at")
    (folder / "broken-link.jpg").symlink_to(folder / "missing.jpg")
    (folder / "loop").symlink_to(folder)  # a symbolic link loop
    weird = os.fsencode(str(folder)) + b"/caf\xe9-latin1.png"  # a file name that is not UTF-8
    Image.new("RGB", (40, 30), "red").save(weird.decode("utf-8", "surrogateescape"))
    with ImageIndex(tmp_path / "index") as index:
        report = index.update([folder], embedder)
        failed = dict(report.failed)
        assert set(failed) == {str(folder / n) for n in ("corrupt.jpg", "truncated.jpg", "broken-link.jpg")}
        assert "not a readable image" in failed[str(folder / "corrupt.jpg")]
        assert failed[str(folder / "broken-link.jpg")] == "broken symbolic link"
        assert index.count() == 4 and index.check() == []
        assert any(
            p.endswith("caf\\xe9-latin1.png")
            for p, _ in [(h.path, 0) for h in index.search(embedder.embed_texts(["red"])[0], 10)]
        )
        assert len(index.errors()) == 3
        # unchanged broken files are not retried, and stay reported
        assert index.update([folder], embedder).failed == [(str(folder / "broken-link.jpg"), "broken symbolic link")]
        (folder / "corrupt.jpg").unlink()
        index.update([folder], embedder)
        assert len(index.errors()) == 2


def test_crafted_files_of_any_format_are_recorded_not_fatal(tmp_path, embedder):
    """Malformed files on which Pillow raises ValueError, KeyError, NotImplementedError, ... (named .jpg, as a photo
    would be) are each recorded with a reason; the run indexes the rest, and a re-run does not stumble either."""
    folder = tmp_path / "photos"
    make_images(folder, 3)
    for name, data in crafted().items():
        (folder / f"{name}.jpg").write_bytes(data)
    with ImageIndex(tmp_path / "index") as index:
        report = index.update([folder], embedder)
        assert sorted(Path(p).stem for p, _ in report.failed) == sorted(crafted())
        assert all(r.startswith(("not a readable image", "could not be decoded")) for _, r in report.failed)
        assert index.count() == 3 and index.check() == []
        again = index.update([folder], embedder, retry_errors=True)
        assert len(again.failed) == len(crafted()) and index.count() == 3


def test_files_over_the_size_limit_and_fifos_are_not_read(tmp_path, embedder, monkeypatch):
    import altclip.index.image_index as image_index
    from altclip.utils.files import read_regular_file

    folder = tmp_path / "photos"
    paths = make_images(folder, 2, size=(300, 200))
    monkeypatch.setattr(image_index, "MAX_FILE_BYTES", min(p.stat().st_size for p in paths) + 1)
    with ImageIndex(tmp_path / "index") as index:
        report = index.update([folder], embedder)
        assert index.count() == 1
    ((path, reason),) = report.failed
    assert path == str(max(paths, key=lambda p: p.stat().st_size)) and "over the limit" in reason
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(ValueError, match="not a regular file"):
        read_regular_file(fifo, 100)


def test_unreadable_file(tmp_path, checkpoint):
    """A file without read permission is recorded with the reason. Root reads everything, so as root the
    indexer runs without the capabilities that bypass file permissions."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    folder = tmp_path / "photos"
    make_images(folder, 3)
    secret = folder / "img_0001.jpg"
    secret.chmod(0)
    code = (
        "import altclip, sys; from altclip.index import ImageIndex; from altclip.inference import Embedder\n"
        f"m, p = altclip.load({str(checkpoint)!r})\n"
        f"r = ImageIndex({str(tmp_path / 'index')!r}).update([{str(folder)!r}], Embedder(m, p, 'x'))\n"
        "print(r.failed)"
    )
    result = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"('{secret}', 'could not be read: Permission denied')" in result.stdout


def test_refuses_another_model(tmp_path, embedder, checkpoint):
    folder = tmp_path / "photos"
    make_images(folder, 2)
    with ImageIndex(tmp_path / "index") as index:
        index.update([folder], embedder)
        other = Embedder(embedder.model, embedder.processor, "some/other-model")
        with pytest.raises(IndexMismatchError, match="cannot be mixed"):
            index.update([folder], other)
        with pytest.raises(IndexMismatchError, match="Query has 3 dimensions"):
            index.search(np.zeros(3, np.float32))


def search_files(index_dir: Path) -> set[str]:
    return {p.name for p in index_dir.glob("vectors-*")}


def test_approximate_index_agrees_with_exact(tmp_path, embedder):
    """Past the threshold the store searches a faiss IVF-PQ index, re-ranked exactly: on a small collection it finds
    what exact search finds, with the same scores. New images extend it (no retraining), and until an update has
    written its files, the vectors it committed are searched exactly."""
    from altclip.index import approximate

    folder = tmp_path / "photos"
    paths = make_images(folder, 40)
    index_dir = tmp_path / "index"
    with ImageIndex(index_dir) as index:
        index.update([folder], embedder, approx_threshold=10)
        state = index.store.state()
        assert state["ann_rows"] == state["rows"] == 40 and state["trained"] == 40
        assert f"vectors-{state['ann_gen']}.faiss" in search_files(index_dir)
        queries = embedder.embed_images([str(p) for p in paths]) + 0.05
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        matrix, hashes = index.store.matrix()
        for q in queries[:10]:
            exact_scores, exact_rows = matrix.search(q, 5)
            found = index.store.search(q, 5)
            assert [h for h, _ in found] == [hashes[r] for r in exact_rows]
            assert np.allclose([s for _, s in found], exact_scores, atol=1e-6)
        make_images(folder, 3, start=500)
        index.update([folder], embedder, approx_threshold=10)
        state = index.store.state()
        assert (state["ann_rows"], state["trained"]) == (43, 40)  # extended, not retrained
        new = embedder.embed_images([str(folder / "img_0500.png")])[0]
        assert index.search(new, 1)[0].path == str(folder / "img_0500.png")
        ann = approximate.read(index_dir / f"vectors-{state['ann_gen']}.faiss", dim=index.dim, rows=43)
        assert ann.ntotal == 43
    with ImageIndex(index_dir) as index:  # vectors committed but not yet in the files are searched too
        make_images(folder, 1, start=600)
        with index.db:
            index.store.add(["f" * 32], embedder.embed_images([str(folder / "img_0600.png")]))
        assert index.store.state()["rows"] == 43
        assert index.store.search(embedder.embed_images([str(folder / "img_0600.png")])[0], 1)[0][0] == "f" * 32


def test_search_files_follow_removals_and_compact(tmp_path, embedder):
    """Removed vectors are left out of results at once, and once a fifth of the rows are dead the files are written
    anew (a new generation) without them; the old generation's files are gone."""
    folder = tmp_path / "photos"
    paths = make_images(folder, 20)
    index_dir = tmp_path / "index"
    with ImageIndex(index_dir) as index:
        index.update([folder], embedder)
        gen = index.store.state()["gen"]
        paths[0].unlink()
        index.update([folder], embedder)
        assert index.store.state()["gen"] == gen and index.store.state()["rows"] == 20
        gone = embedder.embed_images([str(paths[1])])[0]
        assert all(h.path != str(paths[0]) for h in index.search(gone, 20)) and len(index.search(gone, 20)) == 19
        for path in paths[1:6]:
            path.unlink()
        index.update([folder], embedder)
        state = index.store.state()
        assert state["gen"] == gen + 1 and state["rows"] == 14
        assert search_files(index_dir) == {f"vectors-{gen + 1}.{s}" for s in ("f32", "keys", "dead")}
        assert_faithful(index, folder, embedder)
        assert len(index.search(gone, 20)) == 14


def test_crash_while_writing_the_approximate_index_leaves_the_old_one(tmp_path, embedder, monkeypatch):
    """An update that dies while it writes the approximate index (here: faiss fails half-way through the file)
    leaves the previous files and state in use: searches still work and find the new images (exactly, from the
    matrix's tail); the next update finishes the job."""
    from altclip.index import approximate

    folder = tmp_path / "photos"
    make_images(folder, 30)
    index_dir = tmp_path / "index"
    with ImageIndex(index_dir) as index:
        index.update([folder], embedder, approx_threshold=10)
        before = index.store.state()
        files = search_files(index_dir)
        real_write = approximate.write

        def dying_write(ann, path):
            with open(path.with_name(f".{path.name}.tmp"), "wb") as f:
                f.write(b"IwPQ half a file")
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(approximate, "write", dying_write)
        make_images(folder, 2, start=700)
        with pytest.raises(OSError):
            index.update([folder], embedder, approx_threshold=10)
        assert {k: index.store.state()[k] for k in ("ann_gen", "ann_rows", "rows")} == {
            k: before[k] for k in ("ann_gen", "ann_rows", "rows")
        }
        assert files <= search_files(index_dir) | {f".vectors-{before['ann_gen'] + 1}.faiss.tmp"}
        new = embedder.embed_images([str(folder / "img_0700.png")])[0]
        assert index.search(new, 1)[0].path == str(folder / "img_0700.png")  # committed, searched exactly
        monkeypatch.setattr(approximate, "write", real_write)
        index.update([folder], embedder, approx_threshold=10)
        assert index.store.state()["ann_rows"] == 32 and index.search(new, 1)[0].path == str(folder / "img_0700.png")


def test_damaged_search_files_name_the_file(tmp_path, embedder):
    from altclip.index import IndexFileError

    folder = tmp_path / "photos"
    make_images(folder, 24)
    index_dir = tmp_path / "index"
    query = embedder.embed_texts(["x"])[0]
    for damage, message in [
        (lambda f: f.write_bytes(b"PK\x03\x04 a zip file"), "is not a faiss index"),
        (lambda f: f.write_bytes(f.read_bytes()[:300]), "damaged or was replaced since it was written"),
        (lambda f: f.unlink(), "is missing"),
    ]:
        with ImageIndex(index_dir) as index:
            index.update([folder], embedder, approx_threshold=10)  # the files as they should be
            ann = index_dir / f"vectors-{index.store.state()['ann_gen']}.faiss"
            damage(ann)
        with ImageIndex(index_dir) as index, pytest.raises(IndexFileError, match=message) as raised:
            index.search(query, 3)
        assert str(ann) in str(raised.value)
        ann.unlink(missing_ok=True)
        with ImageIndex(index_dir) as index, index.db:  # make the next update write it again
            index.store._set_state("synced", -1)


def check_milvus_store(tmp_path, embedder, store: str) -> None:
    folder = tmp_path / "photos"
    paths = make_images(folder, 6)
    with ImageIndex(tmp_path / "index", store=store) as index:
        index.update([folder], embedder)
        assert index.store.count() == 6 and index.check() == []
        top = index.search(embedder.embed_images([str(paths[2])])[0], 2)
        assert top[0].path == str(paths[2]) and top[0].score == pytest.approx(1.0, abs=1e-4)
        paths[0].unlink()
        shutil.copy(paths[1], folder / "dup.jpg")
        report = index.update([folder], embedder)
        assert (report.deleted, report.reused, report.embedded) == (1, 1, 0)
        assert index.store.count() == 5 and index.check() == []
        hits = index.search(embedder.embed_images([str(paths[2])])[0], 5)
        stored = index.vectors([h.id for h in hits])
        assert np.abs(stored - embedder.embed_images([h.path for h in hits])).max() < 1e-5
    with ImageIndex(tmp_path / "index") as again:  # the store is remembered
        assert again.meta("store") == store and again.search(embedder.embed_images([str(paths[2])])[0], 1)[
            0
        ].path == str(paths[2])


def test_milvus_store(tmp_path, embedder):
    check_milvus_store(tmp_path, embedder, f"milvus://{tmp_path}/milvus/photos.db?collection=photos")
    assert stat.S_IMODE((tmp_path / "milvus").stat().st_mode) == 0o700  # a folder it made is private, as the index's


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """A real Milvus server (standalone, with its embedded etcd), started from the ``milvus`` package for these
    tests; its port."""
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    server.start()
    try:
        yield server.listen_port
    finally:
        server.stop()


@pytest.mark.parametrize(
    "index", ["index=AUTOINDEX", "index=IVF_PQ&nlist=4&m=4&nprobe=4", "index=HNSW&M=8&efConstruction=32&ef=16"]
)
def test_milvus_server_store(tmp_path, embedder, milvus_server, index):
    """The same store against a Milvus server (what a cluster speaks), with its index types and search settings."""
    from altclip.index.milvus import MilvusVectors

    store = f"milvus://127.0.0.1:{milvus_server}?collection=t{abs(hash(index)) % 10**6}&{index}"
    check_milvus_store(tmp_path, embedder, store)
    described = MilvusVectors(store)
    try:
        (info,) = [i for i in described.client.list_indexes(described.collection)]
        assert described.client.describe_index(described.collection, info)["index_type"] == index.split("&")[0][6:]
        # a search does not ask for a strong read (on a server it waits for the next time tick: 200 ms a query)
        levels = []
        search = described.client.search
        described.client.search = lambda *a, **k: levels.append(k.get("consistency_level")) or search(*a, **k)
        fields = described.client.describe_collection(described.collection)["fields"]
        dim = next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector")
        assert described.search(np.ones(dim, np.float32), 1) and levels == ["Session"]
    finally:
        described.close()


def test_milvus_settings_are_checked():
    from altclip.index.milvus import milvus_index

    assert milvus_index("milvus://h:1?index=ivf_pq&nlist=64&nprobe=8") == ("IVF_PQ", {"nlist": 64}, {"nprobe": 8})
    with pytest.raises(ValueError, match="unknown Milvus setting 'nprob'"):
        milvus_index("milvus://h:1?nprob=8")
    with pytest.raises(ValueError, match="whole numbers"):
        milvus_index("milvus://h:1?nlist=many")


def _rows(index_dir: Path) -> int:
    """Committed file rows, read without taking part in the writer's transactions."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{index_dir / 'index.sqlite3'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_at_random_moments_never_corrupts(tmp_path, checkpoint, embedder):
    """Kill the indexer (a real `altclip index` process) with SIGKILL while it writes, several times, each time once
    the index has grown by a random number of batches (an event, not a time: a loaded machine kills at the same
    points); every interrupted state is consistent, and a final run completes the index exactly."""
    folder = tmp_path / "photos"
    make_images(folder, 240, size=(640, 480))
    index_dir = tmp_path / "index"
    command = [sys.executable, "-m", "altclip", "index", str(folder), "--index", str(index_dir),
               "--model", str(checkpoint), "--batch-size", "4", "--workers", "1", "--json"]  # fmt: skip
    rng = random.Random(0)
    partial_counts = []
    for attempt in range(6):
        if attempt == 4:  # later runs also delete and add files
            for p in sorted(folder.glob("img_00[0-1]*"))[:10]:
                p.unlink()
            make_images(folder, 5, start=1000, size=(640, 480))
        before = _rows(index_dir)
        target = before + 4 * rng.randint(1, 8)  # batches of 4 rows: kill after 1 to 8 of them are committed
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and _rows(index_dir) < target:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with ImageIndex(index_dir) as index:
            assert index.check() == [], f"inconsistent after kill {attempt}"
            partial_counts.append(index.count())
    print("rows after each kill:", partial_counts)
    assert sum(0 < c < 235 for c in partial_counts) >= 3, f"too few kills landed mid-run: {partial_counts}"
    assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0
    with ImageIndex(index_dir) as index:
        assert_faithful(index, folder, embedder)


def test_a_rerun_repairs_rows_whose_vector_is_missing(tmp_path, embedder):
    folder = tmp_path / "photos"
    make_images(folder, 8)
    with ImageIndex(tmp_path / "index") as index:
        index.update([folder], embedder)
        with index.db:  # what concurrent runs of older versions left behind
            index.db.execute("DELETE FROM vectors WHERE id IN (SELECT id FROM vectors ORDER BY id LIMIT 3)")
            index.store._changed()
        assert index.check() == ["3 file rows refer to missing vectors"]
        report = index.update([folder], embedder)
        assert (report.repaired, report.embedded, report.unchanged) == (3, 3, 5)
        assert_faithful(index, folder, embedder)


def test_one_writer_at_a_time(tmp_path, embedder):
    """An update waits while another holds the index (here: another connection, as another process would)."""
    import threading

    folder = tmp_path / "photos"
    make_images(folder, 3)
    waited, finished = threading.Event(), threading.Event()
    other = ImageIndex(tmp_path / "index")
    worker = threading.Thread(target=lambda: (other.update([folder], embedder, on_wait=waited.set), finished.set()))
    try:
        with ImageIndex(tmp_path / "index") as holder, holder.writing():
            worker.start()
            assert waited.wait(30)
            time.sleep(0.3)
            assert not finished.is_set() and holder.count() == 0
        worker.join(60)  # leaving the block released the lock
        assert finished.is_set() and other.count() == 3
    finally:
        worker.join(60)
        other.close()


GATED_INDEXER = """
import os, sys, time
import altclip.index.image_index as image_index
load, calls = image_index._load, []
def gated_load(path, embedder):
    calls.append(path)
    deadline = time.monotonic() + 120
    while len(calls) == 40 and not os.path.exists(os.environ["GATE"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return load(path, embedder)
image_index._load = gated_load
from altclip.cli import main
main()
"""


def test_two_indexers_on_one_index_lose_nothing(tmp_path, checkpoint, embedder):
    """Issue 12's scenario with two real processes: photos indexed in d1 are moved to d2; `altclip index d2` is in the
    middle of its run (it stops before its 40th file until the test opens a gate) when `altclip index d1` starts on
    the same index, whose garbage collection used to delete the vectors that d2's new rows were about to reuse. The
    gate opens once the second process waits for the first (or has finished without waiting, as it used to).
    Afterwards every file's vector is a fresh embedding of its content."""
    d1, d2, index_dir, gate = tmp_path / "d1", tmp_path / "d2", tmp_path / "index", tmp_path / "gate"
    make_images(d1, 160)
    with ImageIndex(index_dir) as index:
        index.update([d1], embedder)
    d2.mkdir()
    for path in d1.iterdir():
        path.rename(d2 / path.name)
    args = ["--index", str(index_dir), "--model", str(checkpoint), "--workers", "1", "--batch-size", "8"]
    log = tmp_path / "second.log"
    first = subprocess.Popen(
        [sys.executable, "-c", GATED_INDEXER, "index", str(d2), *args],
        env={**os.environ, "GATE": str(gate), "ALTCLIP_DECODE": "threads"},  # the gate wraps _load in threads
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    second = None
    try:
        while first.poll() is None and _rows(index_dir) == 160:  # until the first has committed rows for d2
            time.sleep(0.05)
        with open(log, "wb") as stderr:
            second = subprocess.Popen(
                [sys.executable, "-m", "altclip", "index", str(d1), *args], stdout=subprocess.DEVNULL, stderr=stderr
            )
            while second.poll() is None and b"waiting for it to finish" not in b" ".join(log.read_bytes().split()):
                time.sleep(0.05)
            gate.touch()
            first_err = first.communicate(timeout=300)[1]
            second.wait(timeout=300)
    finally:
        gate.touch()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    assert (first.returncode, second.returncode) == (0, 0), (first_err, log.read_text())
    with ImageIndex(index_dir) as index:
        assert_faithful(index, d2, embedder)
        assert index.count() == 160
