"""Fuzzing everything that decodes image files: thousands of seeded mutations of valid files in 25 format/mode
combinations go through the decoder, through ``Embedder.embed_readable`` (what embed and eval use) and through the
index. Every file must either decode or fail with that file's ImageError; nothing else may escape, nothing may hang,
and the index must stay consistent. Each part stops at its deadline, so a slow machine runs fewer cases, never
longer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from altclip.index import ImageIndex
from altclip.processing.image_processing import CLIPImageProcessor, ImageError
from hostile_images import mutated, seeds

SUFFIXES = (".jpg", ".png", ".webp", ".gif", ".tif", ".bmp")


def test_the_seeds_cover_many_formats():
    formats = {name.split("-")[0] for name in seeds()}
    assert len(formats) >= 18, formats


def test_mutated_files_through_the_decoder():
    processor = CLIPImageProcessor()
    deadline = time.monotonic() + 20
    outcomes = {"decoded": 0, "refused": 0}
    slowest = 0.0
    for i, (name, data) in enumerate(mutated(4000, seed=1)):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        try:
            array = processor.prepare(data, index=i)
        except ImageError as e:
            assert e.index == i and e.reason
            outcomes["refused"] += 1
        else:
            assert array.shape == (224, 224, 3) and array.dtype == np.uint8, name
            outcomes["decoded"] += 1
        slowest = max(slowest, time.perf_counter() - start)
    print(outcomes, f"slowest {slowest:.3f} s")
    assert sum(outcomes.values()) >= 1000, outcomes  # even a slow machine gets through this many
    assert outcomes["decoded"] and outcomes["refused"]
    assert slowest < 5, slowest


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    """2,000 mutated files named as photos (the name says nothing about the content), in a few folders."""
    folder = tmp_path_factory.mktemp("hostile")
    for i, (name, data) in enumerate(mutated(2000, seed=2)):
        sub = folder / f"d{i % 7}"
        sub.mkdir(exist_ok=True)
        (sub / f"{i:05d}-{name}{SUFFIXES[i % len(SUFFIXES)]}").write_bytes(data)
    return folder


def test_mutated_files_through_embed_readable(hostile_folder, embedder):
    paths = sorted(str(p) for p in hostile_folder.rglob("*") if p.is_file())[:600]
    vectors, kept, failed = embedder.embed_readable(paths)
    assert len(kept) + len(failed) == len(paths) and vectors.shape == (len(kept), embedder.dim)
    assert all(isinstance(reason, str) and reason for _, reason in failed)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_mutated_files_through_the_index(hostile_folder, embedder, tmp_path):
    start = time.monotonic()
    with ImageIndex(tmp_path / "index") as index:
        report = index.update([hostile_folder], embedder, batch_size=64)
        assert report.found == 2000
        assert index.count() + len(report.failed) == 2000 and index.check() == []
        print(f"{index.count()} indexed, {len(report.failed)} failed in {time.monotonic() - start:.1f} s")
        # The files that went in are searchable with the vectors of their content.
        rows = index.db.execute("SELECT path, hash FROM files WHERE hash IS NOT NULL ORDER BY path LIMIT 50").fetchall()
        vectors = dict(index.db.execute("SELECT hash, embedding FROM vectors"))
        expected = embedder.embed_images([p.decode() for p, _ in rows])
        got = np.stack([np.frombuffer(vectors[h], np.float32) for _, h in rows])
        assert np.abs(got - expected).max() < 1e-5
        again = index.update([hostile_folder], embedder, retry_errors=True)  # every failure decoded once more
        assert len(again.failed) == len(report.failed) and index.check() == []
    assert time.monotonic() - start < 120
