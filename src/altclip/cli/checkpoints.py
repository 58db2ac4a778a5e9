"""``altclip models`` and ``altclip random-checkpoint``: the checkpoints this package knows, and random ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from altclip.cli.common import EXIT_USAGE, JsonOpt, emit_json, err, fail, out

app = typer.Typer()


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
    try:
        torch_dtype = parse_dtype(dtype)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    if torch_dtype == "auto":
        fail("--dtype auto means the dtype a checkpoint was saved in; name one to write", EXIT_USAGE)
    path = write_random_checkpoint(shape, output, seed=seed, dtype=torch_dtype)
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
