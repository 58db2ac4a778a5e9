"""``altclip eval zeroshot|retrieval``: zero-shot classification and image-text retrieval, written as CLIP_benchmark
writes its results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from altclip.cli.common import (
    EXIT_INPUT,
    EXIT_USAGE,
    TEMPLATES_HELP,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    emit_json,
    fail,
    load_embedder,
    print_table,
    read_templates,
    require_paths,
)

app = typer.Typer()
eval_app = typer.Typer(help="Evaluate: zero-shot classification and image-text retrieval.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _report(result: dict, path: Path, as_json: bool) -> None:
    if as_json:
        emit_json(json.loads(path.read_text()))
        return
    rows = [[key, f"{100 * value:.2f}"] for key, value in result["metrics"].items()]
    print_table(
        ("metric", "value"), rows, title=f"{result['task']} ({result['samples']} samples) -> {path}", right={"value"}
    )


def _classnames(path: Path) -> dict:
    require_paths([path])
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        fail(f"{path} could not be read as JSON: {e}", EXIT_USAGE)
    if not isinstance(names, dict):
        fail(f"{path} must hold a JSON object (folder name -> class name)", EXIT_USAGE)
    return names


@eval_app.command("zeroshot")
def eval_zeroshot(
    dataset: Annotated[Path, typer.Argument(metavar="FOLDER", help="Image folder with one sub-folder per class")],
    classnames: Annotated[
        Path | None,
        typer.Option(
            help="JSON object: folder name -> class name (in the evaluated language) [default: the folder names]"
        ),
    ] = None,
    templates: Annotated[str, typer.Option(help=TEMPLATES_HELP)] = "auto",
    language: Annotated[str, typer.Option(help="Language tag of the class names, for the result's name")] = "en",
    name: Annotated[str | None, typer.Option(help="Dataset name in the results [default: the folder name]")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the result files")] = Path("eval-results"),
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot classification: top-1, top-5, mean per-class recall."""
    from altclip.evaluate import write_result, zero_shot_classification

    if not dataset.is_dir():
        fail(f"{dataset} is not a folder", EXIT_USAGE)
    names = _classnames(classnames) if classnames else None
    embedder = load_embedder(model, device, dtype)
    try:
        result = zero_shot_classification(embedder, dataset, classnames=names, templates=read_templates(templates))
    except ValueError as e:
        fail(str(e), EXIT_INPUT)
    _report(result, write_result(output, embedder.name, name or dataset.name, language, result), as_json)


@eval_app.command("retrieval")
def eval_retrieval(
    captions: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="CSV or JSONL of image and caption (several captions per image allowed)"),
    ],
    image_root: Annotated[
        str | None, typer.Option(help="Folder the image paths are relative to [default: the file's folder]")
    ] = None,
    language: Annotated[str, typer.Option(help="Language of the captions, for the result's name")] = "en",
    name: Annotated[str | None, typer.Option(help="Dataset name in the results [default: the file name]")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the result files")] = Path("eval-results"),
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Image-text retrieval: recall@1/5/10 both ways, and their mean."""
    from altclip.evaluate import write_result, zero_shot_retrieval

    if not captions.is_file():
        fail(f"{captions} does not exist", EXIT_USAGE)
    embedder = load_embedder(model, device, dtype)
    try:
        result = zero_shot_retrieval(embedder, captions, image_root)
    except ValueError as e:
        fail(str(e), EXIT_INPUT)
    _report(result, write_result(output, embedder.name, name or captions.stem, language, result), as_json)
