"""``altclip models`` and ``altclip random-checkpoint``: the checkpoints this package knows, and random ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from altclip.cli.common import EXIT_USAGE, JsonOpt, emit_json, err, fail, print_table
from altclip.diffusion.shapes import DIFFUSION_SHAPES
from altclip.loading.registry import KNOWN_MODELS, KNOWN_TEACHERS

RANDOM_PIPELINES = [name for name, shape in DIFFUSION_SHAPES.items() if not shape.released]

app = typer.Typer()


@app.command("random-checkpoint")
def random_checkpoint(
    output: Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder to write")],
    shape: Annotated[
        str,
        typer.Option(
            help=f"An AltCLIP shape ({', '.join(KNOWN_MODELS)}), a CLIP teacher shape for `altclip train distill` "
            f"({', '.join(KNOWN_TEACHERS)}), or an AltDiffusion pipeline for `altclip generate` "
            f"({', '.join(RANDOM_PIPELINES)})"
        ),
    ] = "tiny",
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
) -> None:
    """Write a checkpoint with random weights (and a small tokenizer): for tests, benchmarks and demos without
    downloads. It loads like a released checkpoint, but its predictions mean nothing."""
    from altclip.loading.pretrained import parse_dtype
    from altclip.loading.random_checkpoints import write_random_checkpoint

    if shape in RANDOM_PIPELINES:
        try:
            from altclip.diffusion.pipeline import write_random_pipeline
        except ImportError as e:
            fail(f"{e}. An AltDiffusion pipeline needs diffusers: pip install 'altclip[diffusion]'", EXIT_USAGE)
        if dtype not in ("float32", "fp32", "float"):
            fail("An AltDiffusion pipeline is written in float32 (load it with --dtype to run in another)", EXIT_USAGE)
        path = write_random_pipeline(shape, output, seed=seed)
        err.print(f"Wrote a random {shape} pipeline to {path}", highlight=False)
        return
    if shape not in KNOWN_MODELS and shape not in KNOWN_TEACHERS:
        known = [*KNOWN_MODELS, *KNOWN_TEACHERS, *RANDOM_PIPELINES]
        fail(f"Unknown shape {shape!r}; known: {', '.join(known)}", EXIT_USAGE)
    try:
        torch_dtype = parse_dtype(dtype)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    if isinstance(torch_dtype, str):  # "auto"
        fail("--dtype auto means the dtype a checkpoint was saved in; name one to write", EXIT_USAGE)
    path = write_random_checkpoint(shape, output, seed=seed, dtype=torch_dtype)
    kind = "CLIP teacher" if shape in KNOWN_TEACHERS else "AltCLIP"
    err.print(f"Wrote a random {shape} {kind} checkpoint to {path}", highlight=False)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """The checkpoints this package knows: AltCLIP models and shapes, the CLIP teacher shapes of teacher learning,
    and AltDiffusion pipelines for text to image (all of them can be written with random weights by `altclip
    random-checkpoint --shape`, the pipelines in their tiny shape)."""
    from altclip.loading import registry

    rows: list[dict[str, Any]] = [
        {"name": m.name, "released": m.released, "languages": list(m.languages), "description": m.description}
        for m in registry.KNOWN_MODELS.values()
    ] + [
        {"name": t.name, "released": t.released, "languages": ["en"], "description": f"CLIP teacher: {t.description}"}
        for t in registry.KNOWN_TEACHERS.values()
    ] + [
        {"name": d.name, "released": d.released, "languages": list(_pipeline_languages(d.name)),
         "description": f"AltDiffusion: {d.description}"}
        for d in DIFFUSION_SHAPES.values()
    ]  # fmt: skip
    if as_json:
        emit_json(rows)
        return
    print_table(
        ("name", "languages", "description"),
        [[r["name"] + ("" if r["released"] else " (random only)"), " ".join(r["languages"]), r["description"]]
         for r in rows],
    )  # fmt: skip


def _pipeline_languages(name: str) -> tuple[str, ...]:
    """An AltDiffusion pipeline's languages: those of the AltCLIP its text encoder comes from."""
    suffix = name.rpartition("-")[2] if name.startswith("BAAI/AltDiffusion-") else ""
    return KNOWN_MODELS.get(f"BAAI/AltCLIP-{suffix}" if suffix else "BAAI/AltCLIP", KNOWN_MODELS["tiny"]).languages
