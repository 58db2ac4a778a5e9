"""Fuzzing everything that decodes image files: a fixed number of seeded mutations of valid files in 25 format/mode
combinations, and of issue 21's crafted headers, go through the decoder (in worker processes, each image within a
CPU budget), through ``Embedder.embed_readable`` (what embed and eval use) and through the index. Every file must
either decode or fail with that file's ImageError; nothing else may escape, no file may exhaust its budget, and the
index must stay consistent. The counts are fixed: a slow machine takes longer, never tests less."""

from __future__ import annotations

import random

import numpy as np
import pytest

from altclip.index import ImageIndex
from altclip.processing import decoding
from altclip.processing.decode_pool import DecodePool
from altclip.processing.image_processing import CLIPImageProcessor, ImageError
from hostile_images import mutate, mutated, padded, seeds

SUFFIXES = (".jpg", ".png", ".webp", ".gif", ".tif", ".bmp")


def test_the_seeds_cover_many_formats():
    formats = {name.split("-")[0] for name in seeds()}
    assert len(formats) >= 18, formats


def test_mutated_files_through_the_decoder():
    """2,000 mutations of valid files and 400 of crafted headers (small ones, near the bounds) through the library's
    processor, and all of them again through worker processes, where a file that ran away would exhaust its CPU
    budget: each decodes or is that file's ImageError, the same in both."""
    processor = CLIPImageProcessor()
    rng = random.Random(3)
    crafted = [padded(kind, pieces) for kind in ("tiff", "jpeg", "png", "gif") for pieces in (40, 4000)]
    files = [data for _, data in mutated(2000, seed=1)] + [mutate(rng.choice(crafted), rng) for _ in range(400)]
    outcomes = {"decoded": 0, "refused": 0}
    expected = []
    for i, data in enumerate(files):
        try:
            array = processor.prepare(data, index=i)
        except ImageError as e:
            assert e.index == i and e.reason
            outcomes["refused"] += 1
            expected.append((None, e.reason))
        else:
            assert array.shape == (224, 224, 3) and array.dtype == np.uint8
            outcomes["decoded"] += 1
            expected.append((array, ""))
    print(outcomes)
    assert outcomes["decoded"] and outcomes["refused"]
    with DecodePool(2, "processes", cpu_seconds=30) as pool:
        out = pool.map(decoding.prepare_or_reason, files, processor.preparation, failed=lambda r: (None, r))
        for (_, (array, reason), _), (want, want_reason) in zip(out, expected):
            assert reason == want_reason  # "took more than 30 s of CPU time" would differ
            assert (array is None and want is None) or np.array_equal(array, want)


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
    with ImageIndex(tmp_path / "index") as index:
        report = index.update([hostile_folder], embedder, batch_size=64)
        assert report.found == 2000
        assert index.count() + len(report.failed) == 2000 and index.check() == []
        print(f"{index.count()} indexed, {len(report.failed)} failed in {report.seconds:.1f} s")
        # The files that went in are searchable with the vectors of their content.
        rows = index.db.execute("SELECT path, hash FROM files WHERE hash IS NOT NULL ORDER BY path LIMIT 50").fetchall()
        vectors = dict(index.db.execute("SELECT hash, embedding FROM vectors"))
        expected = embedder.embed_images([p.decode() for p, _ in rows])
        got = np.stack([np.frombuffer(vectors[h], np.float32) for _, h in rows])
        assert np.abs(got - expected).max() < 1e-5
        again = index.update([hostile_folder], embedder, retry_errors=True)  # every failure decoded once more
        assert len(again.failed) == len(report.failed) and index.check() == []
