"""Training data: parallel text for teacher learning, image-text pairs for contrastive learning.

Unusable entries (mismatched parallel lines, empty captions, missing or unreadable images, invalid UTF-8) are
counted and skipped with a report, never fatal: a long run does not die on one bad line.

Parallel corpora: ``.tsv`` / ``.txt`` lines ``english<TAB>translation`` (or only English), ``.jsonl`` objects with
``en`` (or ``source``) and ``translation`` (or ``target``, ``text``), or two line-aligned files given as
``en.txt::zh.txt``. Image-text pairs: ``.csv`` (header with an image column: image, filepath, path or file, and a
caption column: caption, text or title), ``.jsonl`` with the same keys, or WebDataset ``.tar`` shards (an image
and a ``.txt`` caption per sample, sharing a name).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from altclip.utils.files import IMAGE_SUFFIXES

IMAGE_COLUMNS = ("image", "filepath", "path", "file", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title")


@dataclass
class DataReport:
    """What was read and what was skipped, and why."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    @property
    def used(self) -> int:
        return self.read - sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.used} of {self.read} samples usable"
        for reason, count in self.skipped.most_common():
            text += f"; skipped {count} ({reason}: e.g. {', '.join(self.examples[reason])})"
        return text

    def to_dict(self) -> dict:
        return {"read": self.read, "used": self.used, "skipped": dict(self.skipped), "examples": self.examples}


def _lines(path: Path, report: DataReport) -> list[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; lines that are not valid UTF-8 are skipped and counted."""
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                out.append((number, raw.decode("utf-8").rstrip("\r\n")))
            except UnicodeDecodeError:
                report.read += 1
                report.skip("invalid UTF-8", f"{path.name}:{number}")
    return out


def read_parallel(sources: list[str]) -> tuple[list[tuple[str, str | None]], DataReport]:
    """(english, translation or None) pairs."""
    report, pairs = DataReport(), []
    for source in sources:
        if "::" in source:
            english, other = (Path(p) for p in source.split("::", 1))
            left, right = _lines(english, report), _lines(other, report)
            if len(left) != len(right):
                report.skip(
                    "the two files have different line counts", f"{english.name} {len(left)}, {other.name} {len(right)}"
                )
            for (number, en), (_, xx) in zip(left, right):
                _add_pair(pairs, report, en, xx, f"{english.name}:{number}")
            continue
        path = Path(source)
        for number, line in _lines(path, report):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                    en = row.get("en", row.get("source"))
                    xx = row.get("translation", row.get("target", row.get("text")))
                except (json.JSONDecodeError, AttributeError):
                    report.read += 1
                    report.skip("not a JSON object", where)
                    continue
                _add_pair(pairs, report, en, xx, where)
            else:
                columns = line.split("\t")
                if len(columns) > 2:
                    report.read += 1
                    report.skip("more than two tab-separated columns", where)
                    continue
                _add_pair(pairs, report, columns[0], columns[1] if len(columns) == 2 else None, where)
    return pairs, report


def _add_pair(pairs: list, report: DataReport, en, xx, where: str) -> None:
    report.read += 1
    if not isinstance(en, str) or not en.strip():
        report.skip("no English text", where)
    elif xx is not None and (not isinstance(xx, str) or not xx.strip()):
        report.skip("empty translation", where)
    else:
        pairs.append((en.strip(), None if xx is None else xx.strip()))


@dataclass(frozen=True)
class TarMember:
    """An image inside a WebDataset shard."""

    tar: str
    name: str

    def read(self) -> bytes:
        handle = _open_tars.get(self.tar)
        if handle is None:
            handle = _open_tars[self.tar] = tarfile.open(self.tar)
        member = handle.extractfile(self.name)
        if member is None:
            raise OSError(f"{self.name} is not a file in {self.tar}")
        return member.read()


_open_tars: dict[str, tarfile.TarFile] = {}


def read_pairs(
    sources: list[str], image_root: str | None = None
) -> tuple[list[tuple[Path | TarMember, str]], DataReport]:
    """(image, caption) pairs; images that do not exist are skipped and counted (undecodable ones are found when
    they are read)."""
    report, pairs = DataReport(), []
    root = Path(image_root) if image_root else None
    for source in sources:
        path = Path(source)
        if path.suffix == ".tar":
            _read_tar(path, pairs, report)
            continue
        rows = _table(path, report)
        for where, row in rows:
            report.read += 1
            image = next((row[c] for c in IMAGE_COLUMNS if row.get(c)), None)
            caption = next((row[c] for c in CAPTION_COLUMNS if c in row), None)
            if not isinstance(caption, str) or not caption.strip():
                report.skip("empty caption", where)
                continue
            if not isinstance(image, str):
                report.skip("no image column", where)
                continue
            image_path = (root or path.parent) / image if not os.path.isabs(image) else Path(image)
            if not image_path.is_file():
                report.skip("missing image", str(image_path))
                continue
            pairs.append((image_path, caption.strip()))
    return pairs, report


def _table(path: Path, report: DataReport) -> list[tuple[str, dict]]:
    rows = []
    if path.suffix == ".jsonl":
        for number, line in _lines(path, report):
            if line.strip():
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError
                    rows.append((f"{path.name}:{number}", row))
                except ValueError:
                    report.read += 1
                    report.skip("not a JSON object", f"{path.name}:{number}")
        return rows
    text = "\n".join(line for _, line in _lines(path, report))
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not set(reader.fieldnames) & set(IMAGE_COLUMNS):
        raise ValueError(f"{path}: the header needs an image column ({', '.join(IMAGE_COLUMNS)}) and a caption column")
    for number, row in enumerate(reader, 2):
        rows.append((f"{path.name}:{number}", row))
    return rows


def _read_tar(path: Path, pairs: list, report: DataReport) -> None:
    samples: dict[str, dict[str, str]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    key, _, ext = member.name.rpartition(".")
                    samples.setdefault(key, {})[ext.lower()] = member.name
            texts = {key: tar.extractfile(files["txt"]).read() for key, files in samples.items() if "txt" in files}
    except (tarfile.TarError, OSError) as e:
        report.read += 1
        report.skip("unreadable shard", f"{path.name} ({e})")
        return
    for key, files in sorted(samples.items()):
        report.read += 1
        image = next((files[e.lstrip(".")] for e in IMAGE_SUFFIXES if e.lstrip(".") in files), None)
        if image is None:
            report.skip("missing image", f"{path.name}:{key}")
            continue
        caption = texts.get(key, b"")
        try:
            caption_text = caption.decode("utf-8").strip()
        except UnicodeDecodeError:
            report.skip("invalid UTF-8", f"{path.name}:{key}")
            continue
        if not caption_text:
            report.skip("empty caption", f"{path.name}:{key}")
            continue
        pairs.append((TarMember(str(path), image), caption_text))
