"""``altclip train distill|contrastive``: the two stages AltCLIP was made in."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from altclip.cli.common import EXIT_ERROR, EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, DeviceOpt, err, fail, model_errors

app = typer.Typer()
train_app = typer.Typer(
    help="Train AltCLIP: teacher learning (distill), then contrastive learning.", no_args_is_help=True
)
app.add_typer(train_app, name="train")

Output = Annotated[
    Path, typer.Option("--output", "-o", help="Run folder: checkpoints, metrics.jsonl, metrics.png, final/")
]
Steps = Annotated[int, typer.Option(help="Optimizer steps")]
Batch = Annotated[int, typer.Option("--batch-size", help="Samples per process per micro-step")]


def _config(options: dict[str, Any]):
    """The TrainConfig of a command's options: its parameters named like TrainConfig's fields."""
    from altclip.train.loop import TrainConfig

    values = {f.name: options[f.name] for f in fields(TrainConfig) if f.name in options}
    return TrainConfig(**{**values, "output": str(values["output"])})


GradAccum = Annotated[int, typer.Option(help="Micro-steps per optimizer step")]
Lr = Annotated[float, typer.Option(help="Peak learning rate (AdamW)")]
WeightDecay = Annotated[float, typer.Option(help="AdamW's weight decay")]
Warmup = Annotated[int, typer.Option(help="Linear warmup steps, then cosine decay")]
SaveEvery = Annotated[int, typer.Option(help="Checkpoint every N steps")]
LogEvery = Annotated[int, typer.Option(help="Log metrics every N steps")]
Seed = Annotated[int, typer.Option(help="Seed of the initialisation, data order and dropout")]
Bf16 = Annotated[bool, typer.Option(help="bfloat16 autocast")]
Checkpointing = Annotated[
    bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward [default: off]")
]
Fsdp = Annotated[bool, typer.Option(help="Shard parameters across processes (FSDP)")]
Resume = Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output")]
Dropout = Annotated[
    float | None,
    typer.Option(help="Override dropout (0 makes runs reproducible bit for bit) [default: the model's]"),
]


def _run(fn, *args, **kwargs) -> None:
    from altclip.train.loop import TrainingError
    from altclip.utils.devices import DeviceError

    try:
        result = fn(*args, **kwargs, log=lambda m: err.print(m, highlight=False))
    except TrainingError as e:
        fail(str(e), EXIT_ERROR)
    except DeviceError as e:
        fail(str(e), EXIT_USAGE)
    except model_errors() as e:
        fail(f"Could not load a model: {e}", EXIT_MODEL)
    except (ValueError, FileNotFoundError) as e:  # the training data
        fail(str(e), EXIT_INPUT)
    if result.get("last") and os.environ.get("RANK", "0") == "0":
        err.print(
            f"Done: {result['steps']} steps, last {json.dumps(result['last'])}; model in {result['final']}",
            highlight=False,
        )


@train_app.command("distill")
def distill_command(
    teacher: Annotated[
        str,
        typer.Option(
            help="CLIP checkpoint (CLIPModel for a complete AltCLIP, or CLIPTextModel); offline, a random one from "
            "`altclip random-checkpoint --shape clip-tiny`"
        ),
    ],
    student: Annotated[
        str,
        typer.Option(
            help="XLM-R checkpoint (e.g. FacebookAI/xlm-roberta-large), AltCLIP checkpoint, or a shape with random "
            "weights (tiny, BAAI/AltCLIP, ...; see `altclip models`)"
        ),
    ],
    corpus: Annotated[
        list[str],
        typer.Option(
            metavar="FILE",
            help='Parallel corpus: .tsv (english<TAB>translation), .jsonl ({"en": ..., "translation": ...}), '
            "or en.txt::xx.txt (repeat for more)",
        ),
    ],
    output: Output,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="XLM-R tokenizer folder [default: the student's; for tiny, one trained on sample captions]"),
    ] = None,
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

    config = _config(locals())
    _run(distill, teacher, student, corpus, config, tokenizer=tokenizer, cosine_weight=cosine_weight)


@train_app.command("contrastive")
def contrastive_command(
    model: Annotated[str, typer.Option("--model", "-m", help="AltCLIP checkpoint to train (e.g. the distill output)")],
    data: Annotated[
        list[str],
        typer.Option(
            metavar="FILE",
            help="Image-text pairs: .csv / .jsonl (image, caption) or WebDataset .tar shards (repeat for more)",
        ),
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

    config = _config(locals())
    _run(contrastive, model, data, config, image_root=image_root, train_vision=train_vision)
