"""Bulk embedding on a Ray cluster with Ray Data, writing exactly what ``altclip embed`` writes.

What runs where:

- **The driver** (the process that calls ``embed_on_ray``) lists the inputs as ``altclip embed`` does (sorted, cut
  into ``n`` contiguous shards), leaves out shards whose files exist and were made from the same inputs (their
  metadata records a digest of them), and writes each shard's files as soon as all
  its rows are back, atomically (temporary names, then renames), so a crash or a re-run redoes only unfinished
  shards. Only vectors travel to it, never pixels.
- **CPU tasks** read the images (files, or the members of WebDataset ``.tar`` shards, one task per tar) and decode,
  resize and crop them as ``altclip embed`` does (``altclip.processing.decoding``, in a decoding process of the
  task's own, within a worker's budget). An image that cannot be read or decoded becomes a failure row with its
  reason, never an error of the run.
- **An actor pool** embeds: each actor loads the model once (``altclip.load``), with one GPU per actor where the
  cluster has GPUs and CPU threads otherwise, and turns batches of prepared pixels (``Embedder.embed_prepared``) or
  of texts (``Embedder.embed_texts``) into unit-norm vectors.

Files and folders of images give the same files, vector for vector, as ``altclip embed --shard i/n`` for every
``i`` (``n`` from ``shards``, else one shard per ``rows_per_shard`` inputs). WebDataset shards give one output
shard per tar (the tars sorted), named ``TAR/MEMBER`` in the metadata; a tar that cannot be read is reported and
left unwritten, so a re-run tries it again. The layout is documented in ``altclip.index.embed_files``.

Every node needs altclip (and the model: a Hub id, or a path every node can read); image paths must be readable
where the tasks run (a shared file system on a cluster). The output folder is written by the driver.
"""

from __future__ import annotations

import math
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from altclip.index.embed_files import (
    EmbedError,
    finished,
    image_inputs,
    inputs_digest,
    shard_files,
    shard_of,
    stamped,
    tar_images,
    text_inputs,
    webdataset_inputs,
    write_atomically,
)
from altclip.processing import decoding

ROWS_PER_SHARD = 100_000  # vectors per output file when the number of shards is not given (300 MB at 768 dims)
MAX_PIECE_ROWS = 1000  # inputs per decoding task; fewer on small inputs so that every CPU gets work


def embed_on_ray(
    model: str,
    images: Sequence[Path],
    texts: Sequence[Path] = (),
    output: Path = Path("embeddings"),
    *,
    address: str | None = None,
    shards: int | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    overwrite: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 32,
    actors: int | None = None,
    cpus_per_actor: float = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Embeds images (folders, image files, ``.txt`` lists of paths, or WebDataset ``.tar`` shards) and the lines of
    the ``texts`` files on Ray, writing the clip-retrieval layout under ``output``.

    model: a Hub id or a checkpoint folder that every node can read.
    address: the cluster, as ``ray.init`` takes it: ``"local"`` starts one on this machine, ``"auto"`` joins the
    one running here, ``"HEAD:6379"`` or ``"ray://HEAD:10001"`` a remote one, and None ``$RAY_ADDRESS``, else the
    latest cluster started here, else a new local one. A process already connected to Ray keeps its connection.
    device: ``"cuda"`` (one GPU per actor) or ``"cpu"``; by default GPUs where the cluster has them.
    actors: the size of the embedding pool: by default one per GPU, or on CPUs one per ``2 * cpus_per_actor``
    CPUs (the other half decodes). cpus_per_actor: CPUs reserved by each actor, and its threads on CPUs.

    Returns a summary: ``shards``, the shard indices ``written`` and ``skipped`` (already done), the number of
    ``images`` and ``texts`` embedded, the images that ``failed`` (path and reason), ``seconds`` and ``files``.
    Raises ``EmbedError`` for inputs that cannot be listed and ``ValueError`` for settings the cluster cannot honour.
    """
    import ray
    import ray.data

    from altclip import AltCLIPConfig, AltCLIPProcessor

    start = time.perf_counter()
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"On Ray the device is cpu or cuda (one GPU per actor), not {device}")
    images, texts = [Path(p) for p in images], [Path(p) for p in texts]
    plan = _plan(images, texts, Path(output), shards, rows_per_shard, overwrite)
    # Loaded here, so that a missing checkpoint fails before Ray starts; the image processor travels to the tasks.
    processor = AltCLIPProcessor.from_pretrained(model).image_processor
    dim = AltCLIPConfig.from_pretrained(model).projection_dim
    writer = _Writer(Path(output), dim, plan.text_metadata, plan.digests, progress)
    for kind, index in plan.empty:  # shards without inputs: nothing to wait for
        writer.write(kind, index, [])
    if plan.images or plan.tars or plan.texts:
        connected = ray.is_initialized()
        if not connected:
            ray.init(address=address)
        context = ray.data.DataContext.get_current()
        bars = context.enable_progress_bars
        context.enable_progress_bars = bars and progress is None  # the caller shows progress
        try:
            _run(ray, plan, writer, model, processor, device, dtype, batch_size, actors, cpus_per_actor)
        finally:
            context.enable_progress_bars = bars
            if not connected:
                ray.shutdown()
    return {
        "shards": plan.count,
        "written": sorted(writer.written),
        "skipped": sorted(plan.skipped),
        "images": writer.totals["image"],
        "texts": writer.totals["text"],
        "failed": [{"path": path, "reason": reason} for _, _, path, reason in sorted(writer.failed)],
        "seconds": round(time.perf_counter() - start, 3),
        # From the start of each phase (actors starting, the model loading) to its last shard written.
        "image_seconds": round(writer.seconds["image"], 3),
        "text_seconds": round(writer.seconds["text"], 3),
        "files": sorted(writer.files),
    }


def _run(ray, plan, writer, model, processor, device, dtype, batch_size, actors, cpus_per_actor) -> None:
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    resources = ray.cluster_resources()
    gpus = 0 if device == "cpu" else int(resources.get("GPU", 0))
    if device == "cuda" and not gpus:
        raise ValueError("The Ray cluster has no GPUs (leave the device out, or ask for cpu)")
    cpus = max(1, int(resources.get("CPU", 1)))
    embed = dict(
        compute=ActorPoolStrategy(size=_pool_size(actors, gpus, cpus, cpus_per_actor)),
        batch_size=batch_size,
        num_cpus=cpus_per_actor,
        num_gpus=1 if gpus else 0,
        fn_constructor_kwargs=dict(
            model=model, gpu=bool(gpus), dtype=dtype, batch_size=batch_size, threads=cpus_per_actor
        ),
    )
    # Decoding in a task pool of its own size (one task per CPU at most), which Ray Data does not fuse into the
    # actors even where their resources match (CPU clusters): it runs on every CPU the actors leave.
    read = dict(fn_kwargs=dict(processor=processor, chunk=batch_size), compute=TaskPoolStrategy(size=cpus))
    writer.total = sum(len(part) for _, part in plan.images + plan.texts)
    if plan.tars:
        items = [{"shard": index, "tar": tar} for index, tar in plan.tars]
        decoded = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _read_tars, batch_size=1, **read
        )
        writer.consume("image", decoded.map_batches(_Embed, **embed), {index for index, _ in plan.tars}, tars=True)
    if plan.images:
        decoded = _pieces(ray, plan.images, cpus).map_batches(_read_files, batch_size=1, **read)
        writer.consume("image", decoded.map_batches(_Embed, **embed), {index for index, _ in plan.images})
    if plan.texts:
        rows = _pieces(ray, plan.texts, cpus).map_batches(_text_rows, batch_size=1)
        writer.consume("text", rows.map_batches(_Embed, **embed), {index for index, _ in plan.texts})


def _pool_size(actors: int | None, gpus: int, cpus: int, cpus_per_actor: float) -> int:
    """Actors as asked, else one per GPU, else one per ``2 * cpus_per_actor`` CPUs; at least one CPU left over for
    the decoding tasks, without which the run would wait for ever."""
    size = actors or gpus or (max(1, int(cpus // (2 * cpus_per_actor))) if cpus_per_actor > 0 else 1)
    if size * cpus_per_actor > cpus - 1:
        raise ValueError(
            f"{size} actors of {cpus_per_actor:g} CPUs leave none of the cluster's {cpus} CPUs for decoding: ask for "
            "fewer actors or fewer CPUs per actor"
        )
    return size


# ---------------------------------------------------------------------------------------------------------------
# The plan (on the driver): the shards, which of them are done, and the inputs of the others


@dataclass
class _Plan:
    count: int  # shards
    text_metadata: str  # the texts' metadata folder: "metadata" when only texts are embedded, else "text_metadata"
    images: list[tuple[int, list[str]]] = field(default_factory=list)  # (shard, image paths) still to embed
    tars: list[tuple[int, str]] = field(default_factory=list)  # (shard, WebDataset tar) still to embed
    texts: list[tuple[int, list[str]]] = field(default_factory=list)  # (shard, texts) still to embed
    empty: list[tuple[str, int]] = field(default_factory=list)  # ("image" or "text", shard) without inputs
    skipped: list[int] = field(default_factory=list)  # shards whose files exist, made from the same inputs
    digests: dict[tuple[str, int], str] = field(default_factory=dict)  # ("image" or "text", shard): its inputs'


def _plan(images, texts, output: Path, shards: int | None, rows_per_shard: int, overwrite: bool) -> _Plan:
    tars = webdataset_inputs(images)
    for tar in tars:
        if not Path(tar).is_file():
            raise EmbedError(f"{tar} does not exist")
    paths = image_inputs(images) if images and not tars else []
    captions = text_inputs(texts) if texts else []
    if shards is not None and shards < 1:
        raise ValueError("The number of shards must be at least 1")
    if tars and shards not in (None, len(tars)):
        raise ValueError(f"WebDataset input gives one output shard per tar ({len(tars)}), not {shards}")
    count = len(tars) or shards or max(1, math.ceil(max(len(paths), len(captions)) / rows_per_shard))
    plan = _Plan(count, "metadata" if not images else "text_metadata")
    for index in range(count):
        done = True
        if images:
            part = [tars[index]] if tars else shard_of(paths, index, count)
            digest = plan.digests["image", index] = inputs_digest(part)
            if overwrite or not finished(shard_files(output, "image", index), digest):
                done = False
                if tars:
                    plan.tars.append((index, tars[index]))
                elif part:
                    plan.images.append((index, part))
                else:
                    plan.empty.append(("image", index))
        if texts:
            part = shard_of(captions, index, count)
            digest = plan.digests["text", index] = inputs_digest(part)
            if overwrite or not finished(shard_files(output, "text", index, plan.text_metadata), digest):
                done = False
                if part:
                    plan.texts.append((index, part))
                else:
                    plan.empty.append(("text", index))
        if done:
            plan.skipped.append(index)
    return plan


def _pieces(ray, parts: list[tuple[int, list[str]]], cpus: int):
    """A dataset of pieces of shards (shard, start: the first row's number, count: the shard's rows, values: the
    paths or texts), one piece per block, small enough that every CPU gets some. Built here on the driver, from
    items: ``from_arrow`` would start a task per block just to read its schema."""
    size = max(1, min(MAX_PIECE_ROWS, math.ceil(sum(len(part) for _, part in parts) / (4 * cpus))))
    pieces = [
        {"shard": index, "start": start, "count": len(part), "values": part[start : start + size]}
        for index, part in parts
        for start in range(0, len(part), size)
    ]
    return ray.data.from_items(pieces, override_num_blocks=len(pieces))


def _text_rows(batch: dict) -> dict:
    """Pieces of text shards as rows (shard, row, count, text)."""
    columns: dict[str, list[Any]] = {"shard": [], "row": [], "count": [], "text": []}
    for shard, start, count, texts in zip(batch["shard"], batch["start"], batch["count"], batch["values"]):
        columns["shard"] += [shard] * len(texts)
        columns["row"] += range(start, start + len(texts))
        columns["count"] += [count] * len(texts)
        columns["text"] += [str(text) for text in texts]
    return {key: np.asarray(value, object if key == "text" else np.int64) for key, value in columns.items()}


# ---------------------------------------------------------------------------------------------------------------
# Reading and decoding (CPU tasks)


_POOL = None  # this Ray worker process's decoding pool, kept for the tasks that follow


def _pool(processor):
    """A decoding process for this task's CPU (as ``altclip embed`` decodes: each image within a worker's budget,
    so that a file that crashes or exhausts a decoder is that file's failure, not the task's); threads where
    ``$ALTCLIP_DECODE`` says so."""
    import os

    from altclip.processing.decode_pool import ENVIRONMENT, DecodePool, memory_budget

    global _POOL
    if _POOL is None:
        budget = memory_budget(processor.max_pixels, decoding.MAX_FILE_BYTES)
        _POOL = DecodePool(1, os.environ.get(ENVIRONMENT) or "processes", memory_bytes=budget)
    return _POOL


def _decoded(processor, shard, rows, count, paths: list[str], sources: list) -> dict:
    """A batch of decoded rows; an image that failed has zero pixels and its reason in ``error`` (the rule of
    ``Embedder.embed_readable``: ``decoding.prepare_or_reason``)."""
    pixels = np.zeros((len(sources), processor.crop_size["height"], processor.crop_size["width"], 3), np.uint8)
    errors = []
    readable = (decoding.readable(source) for source in sources)
    prepared = _pool(processor).map(
        decoding.prepare_or_reason, readable, processor.preparation, failed=lambda r: (None, r)
    )
    for i, (_, (array, reason), _) in enumerate(prepared):
        if array is not None:
            pixels[i] = array
        errors.append(reason)
    return {
        "shard": np.asarray(shard, np.int64),
        "row": np.asarray(rows, np.int64),
        "count": np.asarray(count, np.int64),
        "path": np.asarray(paths, object),
        "error": np.asarray(errors, object),
        "pixels": pixels,
    }


def _read_files(batch: dict, processor, chunk: int):
    for shard, start, count, paths in zip(batch["shard"], batch["start"], batch["count"], batch["values"]):
        paths = [str(path) for path in paths]
        for first in range(0, len(paths), chunk):
            part = paths[first : first + chunk]
            rows = range(start + first, start + first + len(part))
            yield _decoded(processor, [shard] * len(part), rows, [count] * len(part), part, part)


def _read_tars(batch: dict, processor, chunk: int):
    """The image members of each tar, in the tar's order, as the rows of its shard, named ``TAR/MEMBER``. A tar
    that cannot be opened gives one row numbered -1 that carries the reason."""
    for shard, tar in zip(batch["shard"], batch["tar"]):
        try:
            members = tar_images(tar)
        except (tarfile.TarError, OSError) as e:
            yield _decoded(processor, [shard], [-1], [0], [str(tar)], [_Unreadable(f"unreadable tar: {e}")])
            continue
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            rows = range(start, start + len(part))
            yield _decoded(processor, [shard] * len(part), rows, [len(members)] * len(part), list(map(str, part)), part)


@dataclass
class _Unreadable:
    reason: str

    def read(self) -> bytes:
        raise OSError(self.reason)


# ---------------------------------------------------------------------------------------------------------------
# Embedding (the actor pool)


class _Embed:
    """Loads the model once; turns batches of prepared pixels, or of texts, into unit-norm vectors."""

    def __init__(self, model: str, gpu: bool, dtype: str | None, batch_size: int, threads: float):
        import torch

        import altclip
        from altclip.inference import Embedder

        if not gpu:
            torch.set_num_threads(max(1, round(threads)))
        loaded, processor = altclip.load(model, device="cuda" if gpu else "cpu", dtype=dtype)
        self.embedder = Embedder(loaded, processor, model, batch_size)

    def __call__(self, batch: dict) -> dict:
        out = {key: value for key, value in batch.items() if key != "pixels"}
        if "text" in batch:
            out["embedding"] = self.embedder.embed_texts([str(text) for text in batch["text"]])
            return out
        ok = batch["error"] == ""
        out["embedding"] = np.zeros((len(ok), self.embedder.dim), np.float32)
        if ok.any():
            out["embedding"][ok] = self.embedder.embed_prepared(batch["pixels"][ok])
        return out


# ---------------------------------------------------------------------------------------------------------------
# Writing (on the driver)


class _Shard:
    """The rows of one shard as they arrive, in any order."""

    def __init__(self, count: int, dim: int):
        self.vectors = np.zeros((count, dim), np.float32)
        self.names: list[str | None] = [None] * count
        self.errors = [""] * count
        self.missing = count

    def add(self, row: int, vector: np.ndarray, name: str, error: str) -> None:
        if self.names[row] is None:
            self.missing -= 1
        self.vectors[row], self.names[row], self.errors[row] = vector, name, error


class _Writer:
    """Writes each shard's two files once all its rows are back, to temporary names and then renamed, as
    ``altclip embed`` does: a shard's files are complete or absent."""

    def __init__(self, output: Path, dim: int, text_metadata: str, digests: dict[tuple[str, int], str], progress):
        self.output, self.dim, self.text_metadata, self.progress = output, dim, text_metadata, progress
        self.digests = digests  # of each shard's inputs, recorded in its metadata file
        self.totals = {"image": 0, "text": 0}
        self.seconds = {"image": 0.0, "text": 0.0}
        self.failed: list[tuple[int, int, str, str]] = []  # (shard, row, path, reason)
        self.written: set[int] = set()
        self.files: set[str] = set()
        self.total = self.done = 0  # rows, for progress

    def consume(self, kind: str, dataset, shards: set[int], tars: bool = False) -> None:
        """Writes the ``shards`` of ``kind`` from ``dataset``'s rows. Only tars can have no rows (no images)."""
        start = time.perf_counter()
        pending: dict[int, _Shard] = {}
        finished: set[int] = set()
        unreadable: dict[int, tuple[str, str]] = {}  # tars: shard -> (path, reason)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            names = batch["path"] if kind == "image" else batch["text"]
            errors = batch["error"] if kind == "image" else [""] * len(names)
            for i, (index, row) in enumerate(zip(batch["shard"].tolist(), batch["row"].tolist())):
                if row < 0:
                    unreadable[index] = (str(names[i]), str(errors[i]))
                    continue
                if index in finished:
                    continue  # a row of a retried task, written already
                if index not in pending:
                    pending[index] = _Shard(int(batch["count"][i]), self.dim)
                    self.total += pending[index].vectors.shape[0] if tars else 0  # tar sizes are learnt as read
                shard = pending[index]
                shard.add(row, batch["embedding"][i], str(names[i]), str(errors[i]))
                if shard.missing == 0:
                    self._write_shard(kind, index, pending.pop(index))
                    finished.add(index)
            self.done += len(batch["shard"])
            if self.progress is not None:
                self.progress(self.done, max(self.total, self.done))
        for index in sorted(shards - finished):
            if index in unreadable:
                self.failed.append((index, -1, *unreadable[index]))  # left unwritten: a re-run tries it again
            elif tars and index not in pending:
                self.write(kind, index, [])  # a tar without images
            else:
                raise RuntimeError(f"Rows of shard {index} never came back from Ray")
        self.seconds[kind] += time.perf_counter() - start

    def _write_shard(self, kind: str, index: int, shard: _Shard) -> None:
        kept = [row for row, error in enumerate(shard.errors) if not error]
        names = cast(list[str], shard.names)  # every row has arrived
        self.failed += [(index, row, names[row], error) for row, error in enumerate(shard.errors) if error]
        self.write(kind, index, [names[row] for row in kept], shard.vectors[kept])

    def write(self, kind: str, index: int, names: list[str], vectors: np.ndarray | None = None) -> None:
        import pyarrow as pa

        if vectors is None:
            vectors = np.zeros((0, self.dim), np.float32)
        targets = shard_files(self.output, kind, index, self.text_metadata)
        column = "image_path" if kind == "image" else "caption"
        shards = sum(1 for k, _ in self.digests if k == kind)
        metadata = stamped(pa.table({column: names}), self.digests[kind, index], shard=f"{index}/{shards}")
        write_atomically({targets[0]: vectors.astype(np.float32), targets[1]: metadata})
        self.totals[kind] += len(names)
        self.written.add(index)
        self.files.update(str(target) for target in targets)
