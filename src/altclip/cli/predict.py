"""``altclip classify`` and ``altclip similarity``: a model's answers about images and texts you give it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from altclip.cli.common import (
    EXIT_INPUT,
    EXIT_USAGE,
    BatchOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    TemplatesOpt,
    emit_json,
    fail,
    image_files,
    load_embedder,
    print_table,
    read_templates,
    several_values,
)

app = typer.Typer()


@app.command(cls=several_values("--labels", "-l"))
def classify(
    images: Annotated[
        list[Path], typer.Argument(metavar="IMAGE", help="Image files, or folders of them (searched recursively)")
    ],
    labels: Annotated[
        list[str],
        typer.Option(
            "--labels", "-l", metavar="LABEL", help="A candidate label, in any language (repeat for each label)"
        ),
    ],
    top_k: Annotated[int, typer.Option(min=1, help="Labels to show per image")] = 5,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 16,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot classification of images against labels you type."""
    from altclip import ImageError
    from altclip.pipelines import ZeroShotImageClassificationPipeline

    labels = [label for label in labels if label.strip()]
    if not labels:
        fail("Give at least one non-empty label with --labels", EXIT_USAGE)
    prompts = read_templates(templates)
    images = image_files(images)
    embedder = load_embedder(model, device, dtype, batch_size)
    pipe = ZeroShotImageClassificationPipeline(embedder.model, embedder.processor, batch_size=batch_size)
    try:
        results = pipe([str(p) for p in images], candidate_labels=labels, templates=prompts, top_k=top_k)
    except ImageError as e:
        fail(str(e), EXIT_INPUT)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    if as_json:
        emit_json([{"image": str(p), "labels": r} for p, r in zip(images, results)])
        return
    rows = [
        [str(path) if i == 0 else "", r["label"], f"{r['score']:.4f}"]
        for path, ranked in zip(images, results)
        for i, r in enumerate(ranked)
    ]
    print_table(("image", "label", "score"), rows, right={"score"})


@app.command(cls=several_values("--images", "-i", "--texts", "-t"))
def similarity(
    images: Annotated[
        list[Path],
        typer.Option(
            "--images", "-i", metavar="IMAGE", help="An image file, or a folder of them (repeat for each image)"
        ),
    ],
    texts: Annotated[
        list[str], typer.Option("--texts", "-t", metavar="TEXT", help="A text, in any language (repeat for each text)")
    ],
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 16,
    as_json: JsonOpt = False,
) -> None:
    """The image-text similarity matrix: per image, the probability of each text (softmax of the logits)."""
    if not texts or not any(t.strip() for t in texts):
        fail("Give at least one non-empty text with --texts", EXIT_USAGE)
    images = image_files(images)
    embedder = load_embedder(model, device, dtype, batch_size)
    try:
        image_embeds = embedder.embed_images([str(p) for p in images])
        text_embeds = embedder.embed_texts(texts)
    except ValueError as e:  # an unreadable image (ImageError) or text
        fail(str(e), EXIT_INPUT)
    scores = embedder.scores(image_embeds, text_embeds)
    if as_json:
        emit_json({"images": [str(p) for p in images], "texts": texts, **{k: v.tolist() for k, v in scores.items()}})
        return
    rows = [[str(path), *(f"{p:.4f}" for p in row)] for path, row in zip(images, scores["probs"])]
    print_table(["image", *texts], rows, title="P(text | image)", right=texts)
