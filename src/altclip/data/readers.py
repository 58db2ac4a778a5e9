"""Datasets from user files, shared by training and evaluation: parallel text for teacher learning, image-text
pairs for contrastive learning and retrieval, and the members of WebDataset shards.

Unusable entries (mismatched parallel lines, empty captions, missing or unreadable images, invalid UTF-8, a JSON
line that is not an object or is nested absurdly deep) are counted and skipped with a report, never fatal: a long
run does not die on one bad line.

Parallel corpora: ``.tsv`` / ``.txt`` lines ``english<TAB>translation`` (or only English), ``.jsonl`` objects with
``en`` (or ``source``) and ``translation`` (or ``target``, ``text``), or two line-aligned files given as
``en.txt::zh.txt``. Image-text pairs: ``.csv`` (header with an image column: image, filepath, path or file, and a
caption column: caption, text or title), ``.jsonl`` with the same keys, or WebDataset ``.tar`` shards (an image
and a ``.txt`` per sample, sharing a key; each line of the ``.txt`` is a caption, as in CLIP_benchmark's shards).

Tar members are read by offset (``TarMember``), each read with a file handle of its own, so that decoding threads
can read one shard at once.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from altclip.utils import jsonsafe
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
    report = DataReport()
    pairs: list[tuple[str, str | None]] = []
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
                row = _json_object(line)
                if isinstance(row, str):
                    report.read += 1
                    report.skip(row, where)
                    continue
                english_text = row.get("en", row.get("source"))
                translation = row.get("translation", row.get("target", row.get("text")))
                _add_pair(pairs, report, english_text, translation, where)
            else:
                columns = line.split("\t")
                if len(columns) > 2:
                    report.read += 1
                    report.skip("more than two tab-separated columns", where)
                    continue
                _add_pair(pairs, report, columns[0], columns[1] if len(columns) == 2 else None, where)
    return pairs, report


def _json_object(line: str) -> dict | str:
    """The JSON object on a line, or why there is none (the reason its line is skipped)."""
    try:
        row = jsonsafe.loads(line)
    except jsonsafe.NestingError:
        return f"JSON nested more than {jsonsafe.MAX_DEPTH} levels deep"
    except ValueError:
        return "not JSON"
    return row if isinstance(row, dict) else "not a JSON object"


def _add_pair(pairs: list, report: DataReport, en, xx, where: str) -> None:
    report.read += 1
    if not isinstance(en, str) or not en.strip():
        report.skip("no English text", where)
    elif xx is not None and (not isinstance(xx, str) or not xx.strip()):
        report.skip("empty translation", where)
    else:
        pairs.append((en.strip(), None if xx is None else xx.strip()))


MAX_TEXT_MEMBER = 1 << 20  # bytes of a sample's captions (.txt): read whole, so bounded before they are read


@dataclass(frozen=True)
class TarMember:
    """A file inside an uncompressed tar (a WebDataset shard), where the tar's header put it. Each ``read`` opens
    the tar on its own and reads the member's bytes at their offset, so any number of threads (or processes) read
    members of one tar at once; no ``tarfile`` handle is shared."""

    tar: str
    name: str
    offset: int  # of the member's data in the tar file
    size: int

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"the tar ends {self.size - len(data)} bytes before this member does")
        return data

    def __str__(self) -> str:
        return f"{self.tar}/{self.name}"


def tar_members(path: str | Path) -> list[TarMember]:
    """The regular files of an uncompressed tar, in the tar's order, read from its headers once. Raises
    ``tarfile.TarError`` or ``OSError`` for a tar that cannot be read (a compressed one included: its members have
    no offsets in the file)."""
    with tarfile.open(path, "r:") as tar:
        return [
            TarMember(str(path), member.name, member.offset_data, member.size)
            for member in tar.getmembers()
            if member.isreg() and not member.issparse()
        ]


def is_image_member(member: TarMember) -> bool:
    return member.name.lower().endswith(IMAGE_SUFFIXES)


def tar_samples(path: str | Path) -> dict[str, dict[str, TarMember]]:
    """A WebDataset shard's samples, by key, each its files by extension (lower case), as ``webdataset`` groups
    them: the key is a member's name up to the first dot of its file name (``s01/0001.seg.png``: key ``s01/0001``,
    extension ``seg.png``). Raises as ``tar_members`` does."""
    samples: dict[str, dict[str, TarMember]] = {}
    for member in tar_members(path):
        folder, _, file = member.name.rpartition("/")
        stem, dot, ext = file.partition(".")
        if dot:
            samples.setdefault(f"{folder}/{stem}" if folder else stem, {})[ext.lower()] = member
    return samples


def sample_image(files: dict[str, TarMember]) -> TarMember | None:
    """A sample's image member, the first of the image extensions it has."""
    return next((files[e[1:]] for e in IMAGE_SUFFIXES if e[1:] in files), None)


def read_pairs(
    sources: list[str], image_root: str | None = None
) -> tuple[list[tuple[Path | TarMember, str]], DataReport]:
    """(image, caption) pairs; images that do not exist are skipped and counted (undecodable ones are found when
    they are read)."""
    report = DataReport()
    pairs: list[tuple[Path | TarMember, str]] = []
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
                row = _json_object(line)
                if isinstance(row, str):
                    report.read += 1
                    report.skip(row, f"{path.name}:{number}")
                else:
                    rows.append((f"{path.name}:{number}", row))
        return rows
    text = "\n".join(line for _, line in _lines(path, report))
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not set(reader.fieldnames) & set(IMAGE_COLUMNS):
        raise ValueError(f"{path}: the header needs an image column ({', '.join(IMAGE_COLUMNS)}) and a caption column")
    for number, row in enumerate(reader, 2):
        rows.append((f"{path.name}:{number}", row))
    return rows


def _samples_with_images(shard: Path, report: DataReport) -> Iterator[tuple[str, TarMember, dict[str, TarMember]]]:
    """(where, image, all its files) of each sample of a WebDataset shard that has an image, in key order; an
    unreadable shard and a sample without an image are counted in ``report`` and skipped."""
    try:
        samples = tar_samples(shard)
    except (tarfile.TarError, OSError) as e:
        report.read += 1
        report.skip("unreadable shard", f"{shard.name} ({e})")
        return
    for key, files in sorted(samples.items()):
        report.read += 1
        where = f"{shard.name}:{key}"
        image = sample_image(files)
        if image is None:
            report.skip("missing image", where)
            continue
        yield where, image, files


def _read_tar(path: Path, pairs: list, report: DataReport) -> None:
    """The (image, caption) pairs of a WebDataset shard: each sample's image, with each line of its ``.txt`` as a
    caption (CLIP_benchmark's retrieval shards hold several captions of an image that way)."""
    for where, image, files in _samples_with_images(path, report):
        if "txt" in files and files["txt"].size > MAX_TEXT_MEMBER:
            report.skip(f"captions over {MAX_TEXT_MEMBER:,} bytes", where)
            continue
        try:
            text = files["txt"].read().decode("utf-8") if "txt" in files else ""
        except UnicodeDecodeError:
            report.skip("invalid UTF-8", where)
            continue
        except OSError as e:
            report.skip("unreadable caption", f"{where} ({e})")
            continue
        captions = [line.strip() for line in text.splitlines() if line.strip()]
        if not captions:
            report.skip("empty caption", where)
            continue
        pairs.extend((image, caption) for caption in captions)


@dataclass(frozen=True)
class WebDatasetFolder:
    """A dataset in CLIP_benchmark's WebDataset layout (what ``clip_benchmark_export_wds`` writes)::

    ROOT/{split}/0.tar, 1.tar, ...             samples: an image (webp, png, jpg) with a .cls label, or a .txt
                                               of captions (one per line) for retrieval
    ROOT/classnames.txt                        one class name per line, in label order
    ROOT/zeroshot_classification_templates.txt one template per line, the class written as {c}
    ROOT/dataset_type.txt                      "retrieval" or "multilabel" (else classification)
    """

    root: Path
    split: str

    @classmethod
    def find(cls, root: str | Path, split: str = "test") -> WebDatasetFolder | None:
        """The dataset at ``root``, or None when ``root/split`` holds no ``.tar`` shard."""
        folder = Path(root) / split
        return cls(Path(root), split) if folder.is_dir() and any(folder.glob("*.tar")) else None

    @staticmethod
    def splits(root: str | Path) -> list[str]:
        """The splits of a WebDataset folder at ``root``: its sub-folders holding ``.tar`` shards."""
        return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and any(p.glob("*.tar")))

    @property
    def shards(self) -> list[Path]:
        """The split's shards, in their numbers' order (0.tar, 1.tar, ..., 10.tar)."""
        tars = (self.root / self.split).glob("*.tar")
        return sorted(tars, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))

    @property
    def kind(self) -> str:
        return (self._lines("dataset_type.txt") or ["classification"])[0].lower()

    @property
    def classnames(self) -> list[str] | None:
        return self._lines("classnames.txt")

    @property
    def templates(self) -> list[str] | None:
        return self._lines("zeroshot_classification_templates.txt")

    def _lines(self, name: str) -> list[str] | None:
        """The stripped, non-empty lines of a file of the dataset, or None without the file."""
        path = self.root / name
        if not path.is_file():
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e}") from None
        return [line.strip() for line in text.splitlines() if line.strip()]


def read_labeled_images(shards: list[Path], classes: int) -> tuple[list[tuple[TarMember, int]], DataReport]:
    """(image, class index) of each sample of WebDataset classification shards, whose ``.cls`` holds the index;
    a sample without an image, or whose label is not an index below ``classes``, is counted and skipped."""
    report, items = DataReport(), []
    for shard in shards:
        for where, image, files in _samples_with_images(shard, report):
            try:
                small = "cls" in files and files["cls"].size <= 64  # a class index: a few digits
                label = int(files["cls"].read().decode("ascii").strip()) if small else None
            except (OSError, ValueError):  # unreadable, not a number
                label = None
            if label is None or not 0 <= label < classes:
                report.skip(f"no class label (.cls with a number below {classes})", where)
                continue
            items.append((image, label))
    return items, report
