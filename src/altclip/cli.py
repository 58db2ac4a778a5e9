"""The ``altclip`` command: zero-shot classification, similarity, embeddings, and a local image search.

Every command takes ``--model`` (or ``$ALTCLIP_MODEL``), ``--device``, ``--dtype``, ``--batch-size`` and ``--json``.
Exit codes: 0 success, 1 unexpected error, 2 bad usage or input (a missing file, an empty query), 3 the model
could not be loaded, 4 an image or text could not be used, 5 the index does not fit the model.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

EXIT_ERROR, EXIT_USAGE, EXIT_MODEL, EXIT_INPUT, EXIT_INDEX = 1, 2, 3, 4, 5
DEFAULT_MODEL = "BAAI/AltCLIP"

app = typer.Typer(
    help="AltCLIP: multilingual image-text embeddings, zero-shot classification and image search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", envvar="ALTCLIP_MODEL", help="Hub id or checkpoint folder [default: BAAI/AltCLIP]"),
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... [default: cuda if available]")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 (exact, default), bfloat16 or float16")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images or texts per model call")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout")]
IndexOpt = Annotated[
    Path | None, typer.Option("--index", help="Index folder [default: $ALTCLIP_INDEX or the user data dir]")
]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def load_embedder(model: str | None, device: str | None, dtype: str | None, batch_size: int = 32):
    """The model, its processor and an Embedder, or a clear exit when the model cannot be had."""
    import torch

    from altclip import CheckpointError, CheckpointNotFoundError
    from altclip.inference import Embedder
    from altclip.pipeline import load

    name = model or DEFAULT_MODEL
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if Path(name).exists():
        name = str(Path(name).resolve())
    if not Path(name).exists():
        err.print(f"Loading {name} (downloaded into the Hugging Face cache on first use)...", highlight=False)
    try:
        loaded, processor = load(name, device=device, dtype=dtype)
    except CheckpointNotFoundError as e:
        fail(
            f"{e}\nTo try things out without downloads, write a small random checkpoint and point at it:\n"
            "  altclip random-checkpoint ./checkpoints/tiny\n"
            "  ALTCLIP_MODEL=./checkpoints/tiny altclip ...",
            EXIT_MODEL,
        )
    except (CheckpointError, ValueError, OSError) as e:
        fail(f"Could not load {name}: {e}", EXIT_MODEL)
    return Embedder(loaded, processor, name, batch_size=batch_size)


class Progress:
    """A rich progress bar on a terminal, plain progress lines otherwise (logs, CI, pipes)."""

    def __init__(self, description: str, enabled: bool = True):
        self.description = description
        self.enabled = enabled
        self.tty = err.is_terminal
        self._bar = None
        self._last = 0.0

    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
        elif time.monotonic() - self._last > 2 or done == total:
            self._last = time.monotonic()
            err.print(f"{self.description}: {done}/{total}", highlight=False)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


# ---------------------------------------------------------------------------------------------------------------


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    labels: Annotated[list[str], typer.Option("--labels", "-l", help="Candidate labels, in any language")],
    top_k: Annotated[int, typer.Option(min=1, help="Labels to show per image")] = 5,
    templates: Annotated[
        str,
        typer.Option(
            help="Prompts: 'auto' (built-in set per label language), 'none' (the label alone), or a language code"
        ),
    ] = "auto",
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 16,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot classification of images against labels you type."""
    from altclip import ImageError
    from altclip.pipeline import ZeroShotImageClassificationPipeline

    labels = [label for label in labels if label.strip()]
    if not labels:
        fail("Give at least one non-empty label with --labels", EXIT_USAGE)
    embedder = load_embedder(model, device, dtype, batch_size)
    pipe = ZeroShotImageClassificationPipeline(embedder.model, embedder.processor, batch_size=batch_size)
    chosen = {"auto": "auto", "none": ["{}"]}.get(templates, templates)
    try:
        results = pipe([str(p) for p in images], candidate_labels=labels, templates=chosen, top_k=top_k)
    except ImageError as e:
        fail(str(e), EXIT_INPUT)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    if as_json:
        emit_json([{"image": str(p), "labels": r} for p, r in zip(images, results)])
        return
    table = Table()
    for column in ("image", "label", "score"):
        table.add_column(column, justify="right" if column == "score" else "left")
    for path, ranked in zip(images, results):
        for i, r in enumerate(ranked):
            table.add_row(
                str(path) if i == 0 else "", r["label"], f"{r['score']:.4f}", end_section=i == len(ranked) - 1
            )
    out.print(table)


@app.command()
def similarity(
    images: Annotated[list[Path], typer.Option("--images", "-i", help="Image files")],
    texts: Annotated[list[str], typer.Option("--texts", "-t", help="Texts, in any language")],
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 16,
    as_json: JsonOpt = False,
) -> None:
    """The image-text similarity matrix: per image, the probability of each text (softmax of the logits)."""
    if not texts or not any(t.strip() for t in texts):
        fail("Give at least one non-empty text with --texts", EXIT_USAGE)
    embedder = load_embedder(model, device, dtype, batch_size)
    try:
        image_embeds = embedder.embed_images([str(p) for p in images])
        text_embeds = embedder.embed_texts(texts)
    except ValueError as e:  # an unreadable image (ImageError) or text
        fail(str(e), EXIT_INPUT)
    scores = embedder.scores(image_embeds, text_embeds)
    probs = scores["probs"]
    if as_json:
        emit_json({"images": [str(p) for p in images], "texts": texts, **{k: v.tolist() for k, v in scores.items()}})
        return
    table = Table(title="P(text | image)", title_justify="left")
    table.add_column("image")
    for t in texts:
        table.add_column(t, justify="right")
    for path, row in zip(images, probs):
        table.add_row(str(path), *(f"{p:.4f}" for p in row))
    out.print(table)


@app.command("random-checkpoint")
def random_checkpoint(
    output: Annotated[Path, typer.Argument(help="Folder to write")],
    shape: Annotated[
        str, typer.Option(help="A registered shape: tiny, BAAI/AltCLIP, BAAI/AltCLIP-m9, BAAI/AltCLIP-m18")
    ] = "tiny",
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
) -> None:
    """Write a checkpoint with random weights (and a small tokenizer): for tests, benchmarks and demos without
    downloads. It loads like a released checkpoint, but its predictions mean nothing."""
    from altclip.pretrained import parse_dtype
    from altclip.registry import KNOWN_MODELS, write_random_checkpoint

    if shape not in KNOWN_MODELS:
        fail(f"Unknown shape {shape!r}; known: {', '.join(KNOWN_MODELS)}", EXIT_USAGE)
    path = write_random_checkpoint(shape, output, seed=seed, dtype=parse_dtype(dtype))
    err.print(f"Wrote a random {shape} checkpoint to {path}", highlight=False)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """The checkpoints this package knows."""
    from altclip.registry import KNOWN_MODELS

    rows = [
        {"name": m.name, "released": m.released, "languages": list(m.languages), "description": m.description}
        for m in KNOWN_MODELS.values()
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table()
    for column in ("name", "languages", "description"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"] + ("" if r["released"] else " (random only)"), " ".join(r["languages"]), r["description"]
        )
    out.print(table)


@app.command()
def bench(
    engines: Annotated[
        str, typer.Option(help="Comma-separated: exact, int8, bf16, fp16, transformers, transformers-bf16")
    ] = "exact,int8",
    compare: Annotated[
        str | None, typer.Option(help="'transformers': also measure transformers.AltCLIPModel (needs it installed)")
    ] = None,
    shape: Annotated[
        str, typer.Option(help="Shape of the random checkpoint: tiny, BAAI/AltCLIP, BAAI/AltCLIP-m18")
    ] = "tiny",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Measure this checkpoint folder instead of a random one")
    ] = None,
    device: DeviceOpt = None,
    image_batch: Annotated[int, typer.Option(min=1)] = 8,
    text_batch: Annotated[int, typer.Option(min=1)] = 64,
    min_seconds: Annotated[float, typer.Option(help="Measure each throughput at least this long")] = 3.0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the results as JSON here")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Images/s, texts/s, latency at batch 1, peak memory, load time and accuracy of each engine, on the same
    random weights, with ratios against transformers (--compare transformers) or our exact path."""
    import torch

    from altclip.bench import Workload, benchmark

    names = [e.strip() for e in engines.split(",") if e.strip()]
    if compare == "transformers" and "transformers" not in names:
        names.append("transformers")
    elif compare not in (None, "transformers"):
        fail("--compare takes 'transformers'", EXIT_USAGE)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    workload = Workload(image_batch=image_batch, text_batch=text_batch, min_seconds=min_seconds)
    try:
        report = benchmark(
            names,
            shape=shape,
            checkpoint=model,
            device=device,
            workload=workload,
            log=lambda m: err.print(m, highlight=False),
        )
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        emit_json(report)
        return
    table = Table(
        title=f"{report['checkpoint']} on {report['device']} (ratios against {report['reference']})",
        title_justify="left",
    )
    columns = [
        "engine",
        "images/s",
        "texts/s",
        "image ms (B=1)",
        "text ms (B=1)",
        "peak MB",
        "load s",
        "cosine img/txt",
    ]
    for column in columns:
        table.add_column(column, justify="left" if column == "engine" else "right")
    for r in report["results"]:
        if "error" in r:
            table.add_row(r["engine"], f"[red]{r['error']}[/]", *[""] * (len(columns) - 2))
            continue
        peak = r.get("peak_gpu_mb", r["peak_rss_mb"])
        table.add_row(
            r["engine"],
            f"{r['images_per_s']:.2f} ({r.get('images_per_s_ratio', 1):.2f}x)",
            f"{r['texts_per_s']:.1f} ({r.get('texts_per_s_ratio', 1):.2f}x)",
            f"{r['image_latency_ms']:.1f}",
            f"{r['text_latency_ms']:.1f}",
            f"{peak:.0f}",
            f"{r['load_s']:.2f}",
            f"{r.get('cosine_image', 1):.4f} / {r.get('cosine_text', 1):.4f}",
        )
    out.print(table)


def build() -> typer.Typer:
    """The ``altclip`` app with every command registered (the command modules add themselves to ``app``)."""
    from altclip import cli_deploy, cli_index, cli_serve, cli_train  # noqa: F401

    return app


def main() -> None:
    build()
    sys.argv[1:] = expand_multi_value_options(sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130) from None


MULTI_VALUE_OPTIONS = {"--labels", "-l", "--images", "-i", "--texts", "-t"}


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """Lets ``--labels cat dog`` mean ``--labels cat --labels dog`` (click options take one value each)."""
    result: list[str] = []
    current = None
    for arg in argv:
        if arg == "--":
            current = None
            result.append(arg)
        elif arg in MULTI_VALUE_OPTIONS:
            current = arg
        elif current is not None and not (arg.startswith("-") and len(arg) > 1 and not arg[1:2].isdigit()):
            result += [current, arg]
        else:
            current = None
            result.append(arg)
    return result
