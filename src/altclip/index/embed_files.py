"""Embeddings written in the layout of clip-retrieval, which autofaiss and clip-retrieval read:

    OUTPUT/img_emb/img_emb_{i}.npy          (images, dim) float32, unit norm
    OUTPUT/text_emb/text_emb_{i}.npy        (texts, dim) float32, unit norm
    OUTPUT/metadata/metadata_{i}.parquet    one row per image ("image_path"), or per text ("caption") when only
                                            texts are embedded
    OUTPUT/text_metadata/text_metadata_{i}.parquet   the texts' rows when images are embedded too

``i`` is the shard: the inputs, sorted, are cut into ``n`` equal contiguous parts and shard ``i`` embeds part
``i``. A shard's files appear atomically, and its metadata file records a digest of the inputs it was made from:
a re-run skips a shard whose files exist and whose inputs are the same, and makes again one whose inputs changed
(files added or removed before it shift the parts), so shards can be fanned out to any number of machines (Ray,
Spark, Slurm) and retried freely.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altclip.data.readers import TarMember, is_image_member, tar_members
from altclip.utils.files import IMAGE_SUFFIXES, display, scan


class EmbedError(ValueError):
    """An input list or text file could not be read."""


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n (like 3/8), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def webdataset_inputs(images: Sequence[Path]) -> list[str]:
    """The WebDataset ``.tar`` shards among image inputs, sorted: all of the inputs or none (a mix is refused with
    a ValueError). Each tar is one output shard."""
    tars = sorted(str(p) for p in images if Path(p).suffix.lower() == ".tar")
    if tars and len(tars) != len(images):
        raise ValueError("Give either WebDataset .tar shards or images (folders, files, .txt lists), not both")
    return tars


def tar_images(tar: str) -> list[TarMember]:
    """The image members of a tar, in the tar's order (named ``TAR/MEMBER`` by ``str``); raises
    ``tarfile.TarError`` or ``OSError`` for a tar that cannot be read."""
    return [member for member in tar_members(tar) if is_image_member(member)]


def image_inputs(inputs: Sequence[Path]) -> list[str]:
    """Image paths from folders (searched recursively), image files, and .txt files listing one path per line."""
    paths: set[str] = set()
    for item in inputs:
        if item.is_dir():
            paths.update(display(p) for p in scan([item]).files)
        elif item.suffix.lower() == ".txt":
            paths.update(line.strip() for line in _read_lines(item) if line.strip())
        elif item.suffix.lower() in IMAGE_SUFFIXES or item.is_file():
            paths.add(str(item))
        else:
            raise EmbedError(f"{item} does not exist")
    return sorted(paths)


def text_inputs(files: Sequence[Path]) -> list[str]:
    return [line for f in files for line in _read_lines(f) if line.strip()]


def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EmbedError(f"{path} could not be read: {e.strerror}") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EmbedError(f"{path} is not valid UTF-8 (line {line})") from None


def shard_of(items: list[str], index: int, count: int) -> list[str]:
    return items[index * len(items) // count : (index + 1) * len(items) // count]


def shard_files(output: Path, kind: str, index: int, text_metadata: str = "metadata") -> tuple[Path, Path]:
    """The (vectors, metadata) files of shard ``index`` of ``kind`` "image" or "text"; the texts' metadata folder is
    ``text_metadata`` ("text_metadata" where images are embedded too)."""
    if kind == "image":
        return output / "img_emb" / f"img_emb_{index}.npy", output / "metadata" / f"metadata_{index}.parquet"
    return output / "text_emb" / f"text_emb_{index}.npy", output / text_metadata / f"{text_metadata}_{index}.parquet"


INPUTS_KEY = b"altclip.inputs"  # in a shard's metadata file: the digest of the inputs the shard was made from
MODEL_KEY = b"altclip.modeling.model"  # the model that made its vectors (altclip index --from-embeddings records it)
SHARD_KEY = b"altclip.shard"  # which shard it is, "i/n" (a missing shard is noticed)


def inputs_digest(items: Sequence[str]) -> str:
    """A digest of a shard's inputs (paths or texts), in order."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def stamped(table, digest: str, *, model: str | None = None, shard: str | None = None):
    """``table`` (pyarrow) carrying the digest of the inputs it was made from (for ``finished``), and where known
    the model that made the vectors and the shard ("i/n") it is."""
    stamps = {INPUTS_KEY: digest.encode()}
    if model is not None:
        stamps[MODEL_KEY] = model.encode("utf-8", "surrogateescape")
    if shard is not None:
        stamps[SHARD_KEY] = shard.encode()
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **stamps})


def finished(files: Sequence[Path], digest: str) -> bool:
    """Whether a shard's (vectors, metadata) files exist and were made from inputs of this digest. A shard made from
    other inputs, by a version that recorded none, or whose metadata cannot be read, is not finished."""
    import pyarrow.parquet as pq

    if not all(f.exists() for f in files):
        return False
    try:
        metadata = pq.read_schema(files[1]).metadata or {}
    except Exception:  # a damaged file: make the shard again
        return False
    return metadata.get(INPUTS_KEY) == digest.encode()


def write_atomically(outputs: dict[Path, Any]) -> None:
    """Writes each array (as .npy) and pyarrow table (as .parquet) to a temporary name first, then renames them all:
    a shard is either complete or absent."""
    import pyarrow.parquet as pq

    temporary = []
    for target, value in outputs.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        if isinstance(value, np.ndarray):
            with open(tmp, "wb") as f:
                np.save(f, value)
        else:
            pq.write_table(value, tmp)
        temporary.append((tmp, target))
    for tmp, target in temporary:
        os.replace(tmp, target)


def embed_shard(
    embedder,
    images: Sequence[Path],
    texts: Sequence[Path],
    output: Path,
    index: int,
    count: int,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Embeds shard ``index`` of ``count`` of the images (folders, files, ``.txt`` lists; or WebDataset ``.tar``
    shards, one per output shard, as ``--ray`` reads them) and of the lines of the ``texts`` files, writing its
    files under ``output``; skips a shard made from the same inputs unless ``overwrite``. A tar that cannot be read
    is a failure, and its image files are not written (a re-run tries it again)."""
    import pyarrow as pa

    tars = webdataset_inputs(images)
    if tars and count != len(tars):
        raise ValueError(f"WebDataset input gives one output shard per tar ({len(tars)}), not {count}")
    image_paths = [tars[index]] if tars else shard_of(image_inputs(images), index, count) if images else []
    captions = shard_of(text_inputs(texts), index, count) if texts else []
    targets: list[Path] = []
    image_digest, text_digest = inputs_digest(image_paths), inputs_digest(captions)
    if images:
        targets += shard_files(output, "image", index)
    if texts:
        targets += shard_files(output, "text", index, "text_metadata" if images else "metadata")
    done = (not images or finished(targets[:2], image_digest)) and (not texts or finished(targets[-2:], text_digest))
    if not overwrite and done:
        return {"skipped": True, "shard": f"{index}/{count}", "images": 0, "texts": 0, "failed": []}

    unreadable = None
    if tars:  # the tar's image members are this shard's images
        try:
            sources: Sequence[Any] = tar_images(tars[index])
        except (tarfile.TarError, OSError) as e:
            sources, unreadable = [], {"path": tars[index], "reason": f"unreadable tar: {e}"}
        image_paths = [str(member) for member in sources]
    else:
        sources = image_paths
    total = len(image_paths) + len(captions)
    matrix, indices, failures = embedder.embed_readable(sources, progress and (lambda done, _: progress(done, total)))
    kept = [image_paths[i] for i in indices]
    failed = [{"path": image_paths[i], "reason": reason} for i, reason in failures]
    failed += [unreadable] if unreadable else []

    outputs: dict[Path, object] = {}
    if images and not unreadable:
        outputs[targets[0]] = matrix.astype(np.float32)
        outputs[targets[1]] = stamped(
            pa.table({"image_path": kept}), image_digest, model=embedder.name, shard=f"{index}/{count}"
        )
    if texts:
        text_matrix = embedder.embed_texts(captions) if captions else np.zeros((0, embedder.dim), np.float32)
        outputs[targets[-2]] = text_matrix.astype(np.float32)
        outputs[targets[-1]] = stamped(pa.table({"caption": captions}), text_digest)
        if progress:
            progress(total, total)

    write_atomically(outputs)
    return {
        "skipped": False,
        "shard": f"{index}/{count}",
        "images": len(kept),
        "texts": len(captions),
        "failed": failed,
        "files": [str(t) for t in outputs],
    }
