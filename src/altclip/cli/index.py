"""``altclip index``, ``search``, ``embed`` and ``demo``: the commands built on the image index."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.text import Text

from altclip.cli.common import (
    EXIT_INDEX,
    EXIT_INPUT,
    EXIT_MODEL,
    EXIT_USAGE,
    BatchOpt,
    DeviceOpt,
    DtypeOpt,
    IndexOpt,
    JsonOpt,
    ModelOpt,
    emit_json,
    err,
    fail,
    load_embedder,
    note,
    print_table,
    printable,
    require_paths,
)
from altclip.loading.registry import is_random
from altclip.utils.files import IMAGE_SUFFIXES
from altclip.utils.progress import Progress

if TYPE_CHECKING:  # the index (and with it PyTorch) is imported by the commands that use it, not by --help
    from altclip.index import ImageIndex, UpdateReport

app = typer.Typer()

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="STORE",
        help="Where vectors live: sqlite (in the index folder), milvus://HOST:PORT or milvus:///FILE.db "
        "[default: sqlite, or the store the index was built with]",
    ),
]


def parse_size(text: str) -> int:
    """Bytes from ``512M``, ``1G``, ``1.5GB`` or a plain number."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in units and value[-1:] else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size (like 512M or 2G)") from None
    if not number > 0:
        raise typer.BadParameter(f"{text!r}: the budget must be positive")
    return int(number * units[unit])


MemoryBudgetOpt = Annotated[
    str,
    typer.Option(
        "--memory-budget",
        metavar="SIZE",
        help="Memory the approximate index may hold (its codes, ids and clusters): sizes its codes",
    ),
]


def _open_for_search(index: Path | None):
    """The index at ``index`` (an image index or one built from embedding files), or a clear exit."""
    from altclip.index import IndexFileError, default_index_path, open_index

    path = index or default_index_path()
    try:
        return open_index(path)
    except FileNotFoundError as e:
        fail(str(e), EXIT_INDEX)
    except IndexFileError as e:
        fail(f"The index at {path} cannot be used: {e}", EXIT_INDEX)
    except ImportError as e:
        fail(f"{e}. Searching this index needs: pip install 'altclip[index]'", EXIT_USAGE)
    except sqlite3.DatabaseError as e:
        fail(f"{path} holds no usable index ({e}); move it away, or pass another --index", EXIT_INDEX)
    except OSError as e:
        fail(f"The index at {path} could not be opened: {e.strerror or e}", EXIT_INDEX)


def _open_index(index: Path | None, create: bool, store: str | None = None) -> ImageIndex:
    from altclip.index import ImageIndex, default_index_path

    path = index or default_index_path()
    try:
        return ImageIndex(path, create=create, store=store)
    except FileNotFoundError as e:  # no index there yet
        fail(str(e), EXIT_INDEX)
    except ImportError as e:
        fail(f"{e}. The Milvus store needs: pip install 'altclip[milvus]'", EXIT_USAGE)
    except sqlite3.DatabaseError as e:  # not an SQLite file, or a damaged one
        fail(f"{path} holds no usable index ({e}); move it away, or pass another --index", EXIT_INDEX)
    except OSError as e:  # a file where the folder should be, no permission, ...
        fail(f"The index at {path} could not be opened: {e.strerror or e}", EXIT_INDEX)
    except ValueError as e:  # an unknown --store
        fail(str(e), EXIT_USAGE)


def _report(report: UpdateReport, index: ImageIndex, as_json: bool) -> None:
    rate = report.embedded / report.model_seconds if report.model_seconds else 0.0
    summary = {
        "index": str(index.path),
        "model": index.model,
        "images": index.count(),
        "found": report.found,
        "new": report.new,
        "changed": report.changed,
        "unchanged": report.unchanged,
        "deleted": report.deleted,
        "embedded": report.embedded,
        "reused": report.reused,
        "repaired": report.repaired,
        "failed": [{"path": p, "reason": r} for p, r in report.failed],
        "seconds": round(report.seconds, 3),
        "decode_seconds": round(report.decode_seconds, 3),
        "model_seconds": round(report.model_seconds, 3),
        "wait_seconds": round(report.wait_seconds, 3),
    }
    if as_json:
        emit_json(summary)
        return
    err.print(
        f"{index.count()} images in {index.path}: {report.new} new, {report.changed} changed, {report.deleted} deleted, "
        f"{report.unchanged} unchanged; {report.embedded} embedded ({report.reused} reused an existing vector"
        + (f", {report.repaired} had lost theirs" if report.repaired else "")
        + f") in {report.seconds:.1f} s"
        + (f", {rate:.1f} images/s in the model" if rate else ""),
        highlight=False,
    )
    if report.failed:
        note(f"{len(report.failed)} could not be indexed:")
        for path, reason in report.failed[:20]:
            err.print(f"  {printable(path)}: {printable(reason)}", highlight=False)
        if len(report.failed) > 20:
            err.print(f"  ... and {len(report.failed) - 20} more (see --json)")


@app.command("index")
def index_command(
    folders: Annotated[
        list[Path] | None, typer.Argument(metavar="FOLDER", help="Folders (or image files) to index")
    ] = None,
    index: IndexOpt = None,
    store: StoreOpt = None,
    from_embeddings: Annotated[
        Path | None,
        typer.Option(
            "--from-embeddings",
            metavar="DIR",
            help="Index the embedding files of `altclip embed --output DIR` (img_emb/*.npy, metadata/*.parquet) "
            "without embedding again; --index defaults to DIR/index [default: none, index FOLDERs]",
        ),
    ] = None,
    faiss_index: Annotated[
        Path | None,
        typer.Option(
            "--faiss-index",
            metavar="FILE",
            help="With --from-embeddings: search this faiss index (autofaiss build_index over DIR/img_emb) instead "
            "of building one [default: none, build one]",
        ),
    ] = None,
    memory_budget: MemoryBudgetOpt = "1G",
    workers: Annotated[int | None, typer.Option(min=1, help="Decoding threads [default: CPU count, at most 8]")] = None,
    retry_errors: Annotated[bool, typer.Option(help="Try again files that failed before, even unchanged")] = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 32,
    as_json: JsonOpt = False,
) -> None:
    """Index the images under FOLDERS for search, or the embedding files of `altclip embed` (--from-embeddings).
    Re-runs are incremental and a killed run resumes."""
    from altclip.index import IndexMismatchError

    budget = parse_size(memory_budget)
    if from_embeddings is not None:
        if folders:
            fail("Give FOLDERs to index, or --from-embeddings DIR, not both", EXIT_USAGE)
        _index_embeddings(from_embeddings, index, faiss_index, budget, model, as_json)
        return
    if faiss_index is not None:
        fail("--faiss-index goes with --from-embeddings", EXIT_USAGE)
    if not folders:
        fail("Give the FOLDERs to index (or --from-embeddings DIR)", EXIT_USAGE)
    require_paths(folders)
    with _open_index(index, create=True, store=store) as idx:
        embedder = load_embedder(model or idx.model, device, dtype, batch_size)
        try:
            with Progress("Indexing", enabled=not as_json) as progress:
                report = idx.update(
                    folders,
                    embedder,
                    batch_size=batch_size,
                    workers=workers,
                    retry_errors=retry_errors,
                    progress=progress,
                    memory_budget=budget,
                    on_wait=lambda: err.print(
                        f"Another altclip index is updating {idx.path}; waiting for it to finish...", highlight=False
                    ),
                )
        except IndexMismatchError as e:
            fail(str(e), EXIT_INDEX)
        except ValueError as e:  # a memory budget too small for the collection
            fail(str(e), EXIT_USAGE)
        except KeyboardInterrupt:
            _interrupted(idx)
        if report.found == 0 and not report.failed:
            note(f"No image files under {', '.join(map(str, folders))} (looked for {', '.join(IMAGE_SUFFIXES)})")
        _report(report, idx, as_json)


def _interrupted(idx: ImageIndex) -> NoReturn:
    """Ctrl-C during an update: what the index kept, and how to go on."""
    try:
        kept = f"keeps the {idx.count()} images embedded so far"
    except sqlite3.Error:
        kept = "keeps every batch embedded so far"
    err.print(
        f"Interrupted: the index at {idx.path} {kept}; run the same command again to continue where it stopped",
        style="yellow",
        highlight=False,
    )
    raise typer.Exit(130)


def _index_embeddings(source: Path, index: Path | None, faiss_index: Path | None, budget: int, model, as_json) -> None:
    """``altclip index --from-embeddings``: the one build function, its errors as exit codes."""
    from altclip.index import IndexMismatchError
    from altclip.index.embeddings_index import build
    from altclip.index.image_index import DB_NAME

    require_paths([source] + ([faiss_index] if faiss_index else []))
    target = index or source / "index"
    if (target / DB_NAME).exists():
        fail(f"{target} holds an image index (altclip index FOLDER); give another --index", EXIT_USAGE)
    try:
        with Progress("Indexing embeddings", enabled=not as_json) as progress:
            report = build(source, target, memory_budget=budget, faiss_index=faiss_index, model=model,
                           progress=progress)  # fmt: skip
    except IndexMismatchError as e:  # IndexFileError too: a file named, nothing written over the old index
        fail(str(e), EXIT_INDEX)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    except ImportError as e:
        fail(f"{e}. Indexing embedding files needs: pip install 'altclip[index]'", EXIT_USAGE)
    except OSError as e:
        fail(f"The index at {target} could not be written: {e.strerror or e}", EXIT_INDEX)
    if as_json:
        emit_json({**report, "seconds": round(report["seconds"], 3)})
        return
    err.print(
        f"{report['rows']:,} images from {report['shards']} shards of {source} in {report['index']} "
        f"({report['added_shards']} shards new; approximate index: {report['approximate']}) in "
        f"{report['seconds']:.1f} s",
        highlight=False,
    )


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(metavar="QUERY", help="What to look for, in any language")] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Search with this image instead [default: none, search for QUERY]")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results to show")] = 10,
    index: IndexOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Hub id or checkpoint folder; it must be the index's (ALTCLIP_MODEL is not read here) [default: the "
            "model the index was built with]",
        ),
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search the index by text (any language) or by image."""
    from altclip import ImageError
    from altclip.index import ImageIndex, IndexMismatchError

    if (query is None) == (image is None):
        fail("Give a text QUERY or --image PATH (one of them)", EXIT_USAGE)
    if query is not None and not query.strip():
        fail("The query is empty", EXIT_USAGE)
    with _open_for_search(index) as idx:
        if isinstance(idx, ImageIndex) and idx.model is None:
            fail(f"The index at {idx.path} is empty; run `altclip index DIR` first", EXIT_INDEX)
        embedder = load_embedder(model or idx.model, device, dtype)
        try:
            idx.bind(embedder.name, embedder.dim)
            vector = embedder.embed_texts([query])[0] if query is not None else embedder.embed_images([str(image)])[0]
            hits = idx.search(vector, top_k)
        except IndexMismatchError as e:
            fail(str(e), EXIT_INDEX)
        except ImageError as e:
            fail(str(e), EXIT_INPUT)
    if as_json:
        emit_json([{"score": h.score, "id": h.id, "path": h.path, "duplicates": h.duplicates} for h in hits])
        return
    rows = [[h.path + (f"  (+{len(h.duplicates)} duplicates)" if h.duplicates else ""), f"{h.score:.3f}"] for h in hits]
    print_table(("path", "score"), rows, title=f"{query!r}" if query is not None else str(image), right={"score"})


@app.command()
def embed(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="INPUT",
            help="Image folders, image files, .txt lists of image paths, or WebDataset .tar shards (one output shard "
            "each)",
        ),
    ] = None,
    texts: Annotated[
        list[Path] | None,
        typer.Option(
            "--texts", metavar="FILE", help="A file of texts, one per line (repeat for more files) [default: none]"
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder")] = Path("embeddings"),
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: embed only the i-th of n equal shards (0-based); with .tar inputs, n is the number of tars "
            "[default: all: one shard, or one per tar]"
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo a shard whose files exist")] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Embed every shard on a Ray cluster: local (start one here), auto (the one running here), "
            "HOST:6379 or ray://HOST:10001 [default: none, this process embeds]",
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(min=1, help="With --ray: the number of shards [default: one per 100,000 inputs, or per .tar]"),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 32,
    as_json: JsonOpt = False,
) -> None:
    """Write embeddings in the clip-retrieval layout: img_emb/img_emb_{i}.npy, text_emb/text_emb_{i}.npy and
    metadata/metadata_{i}.parquet, readable by autofaiss and clip-retrieval. Shards are independent and
    idempotent, so Slurm or any scheduler can run them in parallel; --ray runs them all on a Ray cluster."""
    from altclip.index.embed_files import EmbedError, embed_shard, parse_shard, webdataset_inputs

    if ray is not None or shards is not None:
        _embed_on_ray(
            inputs or [], texts or [], output, ray, shard, shards, overwrite, model, device, dtype, batch_size, as_json
        )
        return
    try:
        index, count = parse_shard(shard or "0/1")
        tars = webdataset_inputs(inputs or [])
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    if not inputs and not texts:
        fail("Give image inputs, --texts files, or both", EXIT_USAGE)
    require_paths([*(inputs or []), *(texts or [])])
    everything = bool(tars) and shard is None  # every tar, each into its own shard, as --ray writes them
    work = [(i, len(tars)) for i in range(len(tars))] if everything else [(index, count)]
    embedder = load_embedder(model, device, dtype, batch_size)
    results = []
    try:
        for i, n in work:
            with Progress(f"Embedding shard {i}/{n}", enabled=not as_json) as progress:
                results.append(
                    embed_shard(
                        embedder, inputs or [], texts or [], output, i, n, overwrite=overwrite, progress=progress
                    )
                )
    except EmbedError as e:
        fail(str(e), EXIT_INPUT)
    except ValueError as e:  # --shard i/n where n is not the number of tars
        fail(f"{e}: --shard i/{len(tars)}", EXIT_USAGE)
    except ImportError as e:
        fail(f"{e}. Writing parquet needs pyarrow: pip install 'altclip[index]'", EXIT_USAGE)
    if as_json:
        emit_json(_summary(results, len(work)) if everything else results[0])
        return
    for result in results:
        if result.get("skipped"):
            err.print(f"Shard {result['shard']} is already done in {output} (use --overwrite to redo it)")
            continue
        err.print(
            f"Shard {result['shard']}: {result['images']} image and {result['texts']} text embeddings written to "
            f"{output}",
            highlight=False,
        )
        _skipped(result["failed"])


def _summary(results: list[dict], count: int) -> dict:
    """The results of one process's shards, summed up as ``--ray`` sums up its run."""
    return {
        "shards": count,
        "written": [i for i, r in enumerate(results) if r.get("files")],
        "skipped": [i for i, r in enumerate(results) if r["skipped"]],
        "images": sum(r["images"] for r in results),
        "texts": sum(r["texts"] for r in results),
        "failed": [f for r in results for f in r["failed"]],
        "files": sorted(f for r in results for f in r.get("files", [])),
    }


def _skipped(failures: list[dict]) -> None:
    for failure in failures[:20]:
        err.print(
            Text.assemble(
                "  ", ("skipped", "yellow"), f" {printable(failure['path'])}: {printable(failure['reason'])}"
            ),
            highlight=False,
        )


def _embed_on_ray(inputs, texts, output, address, shard, shards, overwrite, model, device, dtype, batch_size, as_json):
    from altclip import CheckpointError, CheckpointNotFoundError
    from altclip.index.embed_files import EmbedError

    if address is None:
        fail("--shards goes with --ray", EXIT_USAGE)
    if shard is not None:
        fail(
            "--shard picks one shard for this process; with --ray, all shards run on the cluster (see --shards)",
            EXIT_USAGE,
        )
    if not inputs and not texts:
        fail("Give image inputs, --texts files, or both", EXIT_USAGE)
    require_paths([*inputs, *texts])
    from altclip.loading.registry import DEFAULT_MODEL

    name = model or DEFAULT_MODEL
    name = str(Path(name).resolve()) if Path(name).exists() else name
    try:
        from altclip.index.ray_embed import embed_on_ray

        with Progress("Embedding on Ray", enabled=not as_json) as progress:
            result = embed_on_ray(
                name,
                inputs,
                texts,
                output,
                address=address,
                shards=shards,
                overwrite=overwrite,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                progress=progress,
            )
    except EmbedError as e:
        fail(str(e), EXIT_INPUT)
    except (CheckpointError, CheckpointNotFoundError) as e:
        fail(f"Could not load {name}: {e}", EXIT_MODEL)
    except ValueError as e:  # a setting the cluster cannot honour
        fail(str(e), EXIT_USAGE)
    except ImportError as e:
        fail(f"{e}. Embedding on Ray needs: pip install 'altclip[ray]'", EXIT_USAGE)
    if as_json:
        emit_json(result)
        return
    rate = f", images at {result['images'] / result['image_seconds']:.1f}/s" if result["images"] else ""
    err.print(
        f"{len(result['written'])} of {result['shards']} shards written to {output} ({len(result['skipped'])} were "
        f"done already): {result['images']} image and {result['texts']} text embeddings in {result['seconds']:.1f} s"
        + rate,
        highlight=False,
    )
    _skipped(result["failed"])


DEMO_QUERIES = [
    ("zh", "一只猫"),
    ("en", "a rocket launching into the sky"),
    ("es", "una taza de café"),
    ("ja", "宇宙の銀河"),
    ("ru", "старинные монеты"),
    ("fr", "une femme en uniforme"),
]
DEMO_LABELS = ["猫", "dog", "café", "ロケット", "галактика", "coins", "astronaut"]


@app.command()
def demo(
    photos: Annotated[Path, typer.Argument(metavar="FOLDER", help="A folder of photos")] = Path("examples/photos"),
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 16,
) -> None:
    """Index a folder of photos (in a temporary index, or $ALTCLIP_DEMO_INDEX), search it in six languages, and
    classify the first three photos against seven labels in five languages."""
    from altclip.index import ImageIndex, IndexMismatchError
    from altclip.pipelines import ZeroShotImageClassificationPipeline

    if not photos.is_dir():
        fail(f"{photos} is not a folder of photos", EXIT_USAGE)
    embedder = load_embedder(model, device, dtype, batch_size)
    index_dir = Path(os.environ.get("ALTCLIP_DEMO_INDEX") or _tempdir())
    err.print(f"Model: {embedder.name}; index: {index_dir}", highlight=False)
    if is_random(embedder.name):
        note("This checkpoint has random weights: everything runs, but the answers below mean nothing.")
    with ImageIndex(index_dir) as idx:
        try:
            with Progress("Indexing") as progress:
                report = idx.update([photos], embedder, batch_size=batch_size, progress=progress)
        except IndexMismatchError as e:
            fail(str(e), EXIT_INDEX)
        _report(report, idx, as_json=False)
        rows = []
        for language, query in DEMO_QUERIES:
            hits = idx.search(embedder.embed_texts([query])[0], 2)
            names = [Path(h.path).name for h in hits] + ["", ""]
            rows.append([query, language, names[0], f"{hits[0].score:.3f}" if hits else "", names[1]])
        print_table(("query", "language", "best match", "score", "runner-up"), rows, title="Search", right={"score"})
    pipe = ZeroShotImageClassificationPipeline(embedder.model, embedder.processor)
    chosen = sorted(photos.glob("*.jp*g"))[:3]  # a few photos, in a stable order
    rows = [
        [path.name, ranked[0]["label"], f"{ranked[0]['score']:.3f}", ranked[1]["label"], f"{ranked[1]['score']:.3f}"]
        for path, ranked in zip(chosen, pipe([str(p) for p in chosen], candidate_labels=DEMO_LABELS, templates="auto"))
    ]
    columns = ("photo", "top label", "its score", "second", "second's score")
    print_table(columns, rows, title="Zero-shot classification", right={"its score", "second's score"})
    if not os.environ.get("ALTCLIP_DEMO_INDEX"):
        shutil.rmtree(index_dir, ignore_errors=True)


def _tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="altclip-demo-")
