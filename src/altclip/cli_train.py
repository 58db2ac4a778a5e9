"""``altclip train distill|contrastive`` and ``altclip eval zeroshot|retrieval``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from altclip.cli import (
    EXIT_INPUT,
    EXIT_USAGE,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    app,
    emit_json,
    err,
    fail,
    load_embedder,
    out,
)

train_app = typer.Typer(
    help="Train AltCLIP: teacher learning (distill), then contrastive learning.", no_args_is_help=True
)
eval_app = typer.Typer(help="Evaluate: zero-shot classification and image-text retrieval.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")

Output = Annotated[
    Path, typer.Option("--output", "-o", help="Run folder: checkpoints, metrics.jsonl, metrics.png, final/")
]
Steps = Annotated[int, typer.Option(help="Optimizer steps")]
Batch = Annotated[int, typer.Option("--batch-size", help="Samples per process per micro-step")]


def _config(output: Path, steps: int, batch_size: int, **options):
    from altclip.train.loop import TrainConfig

    return TrainConfig(output=str(output), steps=steps, batch_size=batch_size, **options)


def _train_options(
    grad_accum: int, lr: float, weight_decay: float, warmup_steps: int, save_every: int, log_every: int, seed: int,
    bf16: bool, gradient_checkpointing: bool, fsdp: bool, resume: bool, dropout: float | None, device: str | None,
) -> dict:  # fmt: skip
    return dict(
        grad_accum=grad_accum, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, save_every=save_every,
        log_every=log_every, seed=seed, bf16=bf16, gradient_checkpointing=gradient_checkpointing, fsdp=fsdp,
        resume=resume, dropout=dropout, device=device,
    )  # fmt: skip


GradAccum = Annotated[int, typer.Option(help="Micro-steps per optimizer step")]
Lr = Annotated[float, typer.Option(help="Peak learning rate (AdamW)")]
WeightDecay = Annotated[float, typer.Option()]
Warmup = Annotated[int, typer.Option(help="Linear warmup steps, then cosine decay")]
SaveEvery = Annotated[int, typer.Option(help="Checkpoint every N steps")]
LogEvery = Annotated[int, typer.Option(help="Log metrics every N steps")]
Seed = Annotated[int, typer.Option()]
Bf16 = Annotated[bool, typer.Option(help="bfloat16 autocast")]
Checkpointing = Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward")]
Fsdp = Annotated[bool, typer.Option(help="Shard parameters across processes (FSDP)")]
Resume = Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output")]
Dropout = Annotated[float | None, typer.Option(help="Override dropout (0 makes runs reproducible bit for bit)")]


def _run(fn, *args, **kwargs) -> None:
    from altclip.train.loop import TrainingError

    try:
        result = fn(*args, **kwargs, log=lambda m: err.print(m, highlight=False))
    except TrainingError as e:
        fail(str(e), 1)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e), EXIT_INPUT)
    if result.get("last") and os.environ.get("RANK", "0") == "0":
        err.print(
            f"Done: {result['steps']} steps, last {json.dumps(result['last'])}; model in {result['final']}",
            highlight=False,
        )


@train_app.command("distill")
def distill_command(
    teacher: Annotated[str, typer.Option(help="CLIP checkpoint (CLIPModel for a complete AltCLIP, or CLIPTextModel)")],
    student: Annotated[
        str,
        typer.Option(
            help="XLM-R checkpoint (e.g. FacebookAI/xlm-roberta-large), AltCLIP checkpoint, or a shape (tiny)"
        ),
    ],
    corpus: Annotated[
        list[str], typer.Option(help="Parallel corpus: .tsv (english<TAB>translation), .jsonl, or en.txt::xx.txt")
    ],
    output: Output,
    tokenizer: Annotated[str | None, typer.Option(help="XLM-R tokenizer folder [default: the student's]")] = None,
    cosine_weight: Annotated[float, typer.Option(help="Weight of an extra 1 - cosine loss")] = 0.0,
    steps: Steps = 1000,
    batch_size: Batch = 32,
    grad_accum: GradAccum = 1,
    lr: Lr = 1e-4,
    weight_decay: WeightDecay = 0.01,
    warmup_steps: Warmup = 100,
    save_every: SaveEvery = 200,
    log_every: LogEvery = 10,
    seed: Seed = 0,
    bf16: Bf16 = False,
    gradient_checkpointing: Checkpointing = False,
    fsdp: Fsdp = False,
    resume: Resume = True,
    dropout: Dropout = None,
    device: DeviceOpt = None,
) -> None:
    """Teacher learning: the multilingual student learns CLIP's text states from parallel text."""
    from altclip.train.distill import distill

    options = _train_options(
        grad_accum,
        lr,
        weight_decay,
        warmup_steps,
        save_every,
        log_every,
        seed,
        bf16,
        gradient_checkpointing,
        fsdp,
        resume,
        dropout,
        device,
    )
    _run(
        distill,
        teacher,
        student,
        corpus,
        _config(output, steps, batch_size, **options),
        tokenizer=tokenizer,
        cosine_weight=cosine_weight,
    )


@train_app.command("contrastive")
def contrastive_command(
    model: Annotated[str, typer.Option("--model", "-m", help="AltCLIP checkpoint to train (e.g. the distill output)")],
    data: Annotated[
        list[str], typer.Option(help="Image-text pairs: .csv / .jsonl (image, caption) or WebDataset .tar shards")
    ],
    output: Output,
    image_root: Annotated[
        str | None, typer.Option(help="Folder the image paths are relative to [default: the data file's]")
    ] = None,
    train_vision: Annotated[
        bool, typer.Option(help="Also train the image tower (frozen by default, its embeddings cached)")
    ] = False,
    steps: Steps = 1000,
    batch_size: Batch = 64,
    grad_accum: GradAccum = 1,
    lr: Lr = 1e-5,
    weight_decay: WeightDecay = 0.1,
    warmup_steps: Warmup = 100,
    save_every: SaveEvery = 200,
    log_every: LogEvery = 10,
    seed: Seed = 0,
    bf16: Bf16 = False,
    gradient_checkpointing: Checkpointing = False,
    fsdp: Fsdp = False,
    resume: Resume = True,
    dropout: Dropout = None,
    device: DeviceOpt = None,
) -> None:
    """Contrastive learning (or fine-tuning) on image-text pairs, with negatives from every process."""
    from altclip.train.contrastive import contrastive

    options = _train_options(
        grad_accum,
        lr,
        weight_decay,
        warmup_steps,
        save_every,
        log_every,
        seed,
        bf16,
        gradient_checkpointing,
        fsdp,
        resume,
        dropout,
        device,
    )
    _run(
        contrastive,
        model,
        data,
        _config(output, steps, batch_size, **options),
        image_root=image_root,
        train_vision=train_vision,
    )


def _report(result: dict, path: Path, as_json: bool) -> None:
    if as_json:
        emit_json(json.loads(path.read_text()))
        return
    table = Table(title=f"{result['task']} ({result['samples']} samples) -> {path}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result["metrics"].items():
        table.add_row(key, f"{100 * value:.2f}")
    out.print(table)


@eval_app.command("zeroshot")
def eval_zeroshot(
    dataset: Annotated[Path, typer.Argument(help="Image folder with one sub-folder per class")],
    classnames: Annotated[
        Path | None, typer.Option(help="JSON object: folder name -> class name (in the evaluated language)")
    ] = None,
    templates: Annotated[
        str,
        typer.Option(
            help="'auto', 'none' (class names alone), a language code (en, zh, ...), or a file of templates, one per line"
        ),
    ] = "auto",
    language: Annotated[str, typer.Option(help="Language tag of the class names, for the result's name")] = "en",
    name: Annotated[str | None, typer.Option(help="Dataset name in the results [default: the folder name]")] = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("eval-results"),
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot classification: top-1, top-5, mean per-class recall."""
    from altclip.evaluate import write_result, zero_shot_classification

    if not dataset.is_dir():
        fail(f"{dataset} is not a folder", EXIT_USAGE)
    names = json.loads(classnames.read_text(encoding="utf-8")) if classnames else None
    chosen = (
        [t for t in Path(templates).read_text(encoding="utf-8").splitlines() if t.strip()]
        if Path(templates).is_file()
        else templates
    )
    embedder = load_embedder(model, device, dtype)
    try:
        result = zero_shot_classification(embedder, dataset, classnames=names, templates=chosen)
    except ValueError as e:
        fail(str(e), EXIT_INPUT)
    _report(result, write_result(output, embedder.name, name or dataset.name, language, result), as_json)


@eval_app.command("retrieval")
def eval_retrieval(
    captions: Annotated[
        Path, typer.Argument(help="CSV or JSONL of image and caption (several captions per image allowed)")
    ],
    image_root: Annotated[str | None, typer.Option(help="Folder the image paths are relative to")] = None,
    language: Annotated[str, typer.Option(help="Language of the captions, for the result's name")] = "en",
    name: Annotated[str | None, typer.Option(help="Dataset name in the results [default: the file name]")] = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("eval-results"),
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
