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
    from altclip.utils.jsonsafe import read_json

    require_paths([path])
    try:
        names = read_json(path)
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON, nested too deeply
        fail(f"--classnames {path} could not be read as JSON: {e}", EXIT_USAGE)
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        fail(f"--classnames {path} must hold a JSON object of strings (folder name -> class name)", EXIT_USAGE)
    return names


Split = Annotated[str, typer.Option(help="The split of a WebDataset folder (its sub-folder of .tar shards)")]


@eval_app.command("zeroshot")
def eval_zeroshot(
    dataset: Annotated[
        Path,
        typer.Argument(
            metavar="FOLDER",
            help="Image folder with one sub-folder per class, or a CLIP_benchmark WebDataset folder (SPLIT/*.tar, "
            "classnames.txt)",
        ),
    ],
    classnames: Annotated[
        Path | None,
        typer.Option(
            help="JSON object: class (folder) name -> class name in the evaluated language [default: the folder "
            "names, or classnames.txt]"
        ),
    ] = None,
    templates: Annotated[
        list[str] | None,
        typer.Option(
            "--templates",
            metavar="TEMPLATES",
            help=f"{TEMPLATES_HELP} [default: the dataset's zeroshot_classification_templates.txt, else auto]",
        ),
    ] = None,
    language: Annotated[str, typer.Option(help="Language tag of the class names, for the result's name")] = "en",
    name: Annotated[str | None, typer.Option(help="Dataset name in the results [default: the folder name]")] = None,
    split: Split = "test",
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the result files")] = Path("eval-results"),
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot classification: top-1, top-5, mean per-class recall."""
    from altclip.evaluate import dataset_templates, write_result, zero_shot_classification

    require_paths([dataset])
    if not dataset.is_dir():
        fail(f"{dataset} is not a folder", EXIT_USAGE)
    _check_split(dataset, split)
    names = _classnames(classnames) if classnames else None
    try:
        chosen = read_templates(templates, dataset_templates(dataset, split) or "auto")
    except ValueError as e:  # the dataset's own file of templates
        fail(str(e), EXIT_INPUT)
    if not templates and isinstance(chosen, list):
        _check_dataset_templates(dataset, chosen)
    embedder = load_embedder(model, device, dtype)
    try:
        result = zero_shot_classification(embedder, dataset, classnames=names, templates=chosen, split=split)
    except ValueError as e:
        fail(str(e), EXIT_INPUT)
    _report(result, write_result(output, embedder.name, name or dataset.resolve().name, language, result), as_json)


def _check_split(dataset: Path, split: str) -> None:
    """Exits with EXIT_USAGE when ``dataset`` is a WebDataset folder without ``split``."""
    from altclip.data.readers import WebDatasetFolder

    splits = WebDatasetFolder.splits(dataset) if dataset.is_dir() else []
    if splits and split not in splits:
        fail(f"{dataset} has no split {split!r} (--split): its splits are {', '.join(splits)}", EXIT_USAGE)


def _check_dataset_templates(dataset: Path, templates: list[str]) -> None:
    from altclip.zeroshot import check_template

    for template in templates:
        try:
            check_template(template)
        except ValueError as e:
            fail(f"{dataset}/zeroshot_classification_templates.txt: {e}", EXIT_INPUT)


@eval_app.command("retrieval")
def eval_retrieval(
    captions: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="CSV or JSONL of image and caption (several captions per image allowed), a WebDataset .tar, or a "
            "CLIP_benchmark WebDataset folder (SPLIT/*.tar; each line of a .txt is a caption)",
        ),
    ],
    image_root: Annotated[
        str | None, typer.Option(help="Folder the image paths are relative to [default: the file's folder]")
    ] = None,
    language: Annotated[str, typer.Option(help="Language of the captions, for the result's name")] = "en",
    name: Annotated[str | None, typer.Option(help="Dataset name in the results [default: the file name]")] = None,
    split: Split = "test",
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the result files")] = Path("eval-results"),
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Image-text retrieval: recall@1/5/10 both ways, and their mean."""
    from altclip.data.readers import WebDatasetFolder
    from altclip.evaluate import write_result, zero_shot_retrieval

    require_paths([captions])
    _check_split(captions, split)
    if captions.is_dir() and WebDatasetFolder.find(captions, split) is None:
        fail(
            f"{captions} is a folder without WebDataset shards ({split}/*.tar): eval retrieval takes a CSV or JSONL "
            "file, a .tar shard, or a CLIP_benchmark WebDataset folder",
            EXIT_USAGE,
        )
    embedder = load_embedder(model, device, dtype)
    try:
        result = zero_shot_retrieval(embedder, captions, image_root, split=split)
    except ValueError as e:
        fail(str(e), EXIT_INPUT)
    default_name = captions.resolve().name if captions.is_dir() else captions.stem
    _report(result, write_result(output, embedder.name, name or default_name, language, result), as_json)
