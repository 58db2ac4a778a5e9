"""The dataset readers that training and evaluation share (``altclip.data.readers``): WebDataset members read by
many threads at once, hostile lines counted and skipped, CLIP_benchmark's multi-line captions."""

from __future__ import annotations

import io
import json
import random
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from altclip.data.readers import read_pairs, read_parallel, tar_members, tar_samples

DEEP = "[" * 50_000  # json.loads raises RecursionError on it


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def random_members(count: int, seed: int = 0) -> dict[str, bytes]:
    """Members of many sizes (a few bytes to 40 kB, across tar's 512-byte blocks), each with its own content."""
    rng = random.Random(seed)
    return {f"sample{i:04d}.jpg": i.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 40_000)) for i in range(count)}


def test_tar_members_are_read_whole_by_many_threads_at_once(tmp_path):
    """Every member, every time, from 16 threads reading one tar (a shared tarfile handle lost or mixed members)."""
    files = random_members(400)
    members = tar_members(write_tar(tmp_path / "shard.tar", files))
    assert [m.name for m in members] == list(files)
    with ThreadPoolExecutor(16) as pool:
        for round_ in range(10):
            order = members[:]
            random.Random(round_).shuffle(order)
            read = list(pool.map(lambda m: (m.name, m.read()), order))
            assert len(read) == len(files) and all(data == files[name] for name, data in read), f"round {round_}"


def test_pairs_from_a_tar_read_concurrently(tmp_path):
    """The pairs' image members, as decoding threads read them during training and evaluation."""
    images = random_members(300, seed=1)
    files = {}
    for name, data in images.items():
        files[name] = data
        files[name.replace(".jpg", ".txt")] = f"caption of {name}".encode()
    pairs, report = read_pairs([str(write_tar(tmp_path / "pairs.tar", files))])
    assert report.used == report.read == 300 and len(pairs) == 300
    with ThreadPoolExecutor(16) as pool:
        for _ in range(5):
            read = list(pool.map(lambda pair: pair[0].read(), pairs))
            assert read == [images[pair[0].name] for pair in pairs]
    assert str(pairs[0][0]) == f"{tmp_path / 'pairs.tar'}/sample0000.jpg"


def test_a_multi_line_caption_is_one_caption_per_line(tmp_path):
    """CLIP_benchmark's retrieval shards hold an image's captions in one .txt, a line each."""
    tar = write_tar(
        tmp_path / "captions.tar",
        {
            "a.jpg": b"image a",
            "a.txt": "a cat\n一只猫\n\n  a cat on a mat  \r\n".encode(),
            "b.webp": b"image b",
            "b.txt": b"a dog",
            "c.png": b"image c",
            "c.txt": b" \n \n",
            "d.txt": b"no image",
        },
    )
    pairs, report = read_pairs([str(tar)])
    assert [(m.name, caption) for m, caption in pairs] == [
        ("a.jpg", "a cat"), ("a.jpg", "一只猫"), ("a.jpg", "a cat on a mat"), ("b.webp", "a dog"),
    ]  # fmt: skip
    assert report.skipped == {"empty caption": 1, "missing image": 1}


def test_samples_are_keyed_as_webdataset_keys_them(tmp_path):
    """The key ends at the first dot of the file name; folders are part of it."""
    tar = write_tar(
        tmp_path / "keys.tar", {"x/0001.seg.png": b"1", "x/0001.txt": b"t", "0002.JPG": b"2", "README": b""}
    )
    samples = tar_samples(tar)
    assert {key: sorted(files) for key, files in samples.items()} == {"x/0001": ["seg.png", "txt"], "0002": ["jpg"]}


def test_unreadable_shards_and_members_are_counted(tmp_path):
    compressed = write_tar(tmp_path / "compressed.tar", {"a.jpg": b"x", "a.txt": b"a cat"}, mode="w:gz")
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar" * 200)
    pairs, report = read_pairs([str(compressed), str(garbage)])
    assert pairs == [] and report.skipped == {"unreadable shard": 2}
    # A member the tar no longer holds whole (the file was cut after it was listed) is an error of that member.
    tar = write_tar(tmp_path / "cut.tar", {"a.jpg": b"x" * 5000})
    member = tar_members(tar)[0]
    with open(tar, "r+b") as f:
        f.truncate(member.offset + 100)
    with pytest.raises(OSError, match="ends 4900 bytes before"):
        member.read()


def test_a_deeply_nested_json_line_is_a_counted_skip(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(b"image")
    pairs_file = tmp_path / "pairs.jsonl"
    lines = [
        json.dumps({"image": "cat.jpg", "caption": "a cat"}),
        DEEP,
        "[1, 2]",
        "{not json",
        json.dumps({"image": "cat.jpg", "caption": "一只猫"}),
    ]
    pairs_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs, report = read_pairs([str(pairs_file)])
    assert [caption for _, caption in pairs] == ["a cat", "一只猫"]
    assert report.skipped == {"JSON nested more than 64 levels deep": 1, "not a JSON object": 1, "not JSON": 1}

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(DEEP + "\n" + json.dumps({"en": "a cat", "translation": "一只猫"}) + "\n", encoding="utf-8")
    parallel, report = read_parallel([str(corpus)])
    assert parallel == [("a cat", "一只猫")] and report.skipped == {"JSON nested more than 64 levels deep": 1}


def test_text_members_are_bounded_before_they_are_read(tmp_path):
    """A sample's .txt is read whole: one over MAX_TEXT_MEMBER is skipped from its header, unread; a .cls longer
    than any class index is no label."""
    from altclip.data.readers import MAX_TEXT_MEMBER, read_labeled_images

    tar = write_tar(
        tmp_path / "big.tar",
        {"a.jpg": b"image a", "a.txt": b"x" * (MAX_TEXT_MEMBER + 1), "b.jpg": b"image b", "b.txt": b"a dog"},
    )
    pairs, report = read_pairs([str(tar)])
    assert [(m.name, caption) for m, caption in pairs] == [("b.jpg", "a dog")]
    assert report.skipped == {f"captions over {MAX_TEXT_MEMBER:,} bytes": 1}
    labelled = write_tar(
        tmp_path / "cls.tar", {"a.jpg": b"a", "a.cls": b"0" * 100 + b"1", "b.jpg": b"b", "b.cls": b"1"}
    )
    items, report = read_labeled_images([labelled], classes=2)
    assert [(m.name, label) for m, label in items] == [("b.jpg", 1)] and sum(report.skipped.values()) == 1
