"""``altclip train distill|contrastive``: the two stages AltCLIP was made in.

The options both stages take are declared once (``TRAINING_OPTIONS``, each named after the ``TrainConfig`` field it
sets); ``training_command`` adds them to each stage's own parameters and hands the stage a ``TrainConfig``.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from altclip.cli.common import EXIT_ERROR, EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, DeviceOpt, err, fail, model_errors
from altclip.train.config import TrainConfig

app = typer.Typer()
train_app = typer.Typer(
    help="Train AltCLIP: teacher learning (distill), then contrastive learning.", no_args_is_help=True
)
app.add_typer(train_app, name="train")

# TrainConfig field -> its option. A default comes from TrainConfig unless a stage gives its own.
TRAINING_OPTIONS: dict[str, Any] = {
    "output": Annotated[
        Path, typer.Option("--output", "-o", help="Run folder: checkpoints, metrics.jsonl, metrics.png, final/")
    ],
    "steps": Annotated[int, typer.Option(min=1, help="Optimizer steps")],
    "batch_size": Annotated[int, typer.Option("--batch-size", min=1, help="Samples per process per micro-step")],
    "grad_accum": Annotated[int, typer.Option(min=1, help="Micro-steps per optimizer step")],
    "lr": Annotated[float, typer.Option(help="Peak learning rate (AdamW)")],
    "weight_decay": Annotated[float, typer.Option(help="AdamW's weight decay")],
    "warmup_steps": Annotated[int, typer.Option(min=0, help="Linear warmup steps, then cosine decay")],
    "save_every": Annotated[int, typer.Option(min=1, help="Checkpoint every N steps")],
    "log_every": Annotated[int, typer.Option(min=1, help="Log metrics every N steps")],
    "seed": Annotated[int, typer.Option(help="Seed of the initialisation, data order and dropout")],
    "bf16": Annotated[bool, typer.Option(help="bfloat16 autocast")],
    "gradient_checkpointing": Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward [default: off]")
    ],
    "fsdp": Annotated[bool, typer.Option(help="Shard parameters across processes (FSDP)")],
    "resume": Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output")],
    "dropout": Annotated[
        float | None,
        typer.Option(help="Override dropout (0 makes runs reproducible bit for bit) [default: the model's]"),
    ],
    "workers": Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Processes decoding batches ahead of each step [default: on a GPU, one per CPU but one, at most 4; "
            "on the CPU none]",
        ),
    ],
    "device": DeviceOpt,
}
DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.name != "output"}  # --output is required


def training_command(name: str, **defaults: Any) -> Callable[[Callable], Callable]:
    """Registers a stage as ``altclip train NAME``: its own parameters, then ``TRAINING_OPTIONS`` (with the stage's
    ``defaults`` where it has its own); it is called with its own parameters and ``config``, the TrainConfig of the
    training options."""

    def register(stage: Callable) -> Callable:
        own = [p for p in inspect.signature(stage, eval_str=True).parameters.values() if p.name != "config"]
        shared = [
            inspect.Parameter(
                option,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=defaults.get(option, DEFAULTS.get(option, inspect.Parameter.empty)),
            )
            for option, annotation in TRAINING_OPTIONS.items()
        ]

        @functools.wraps(stage)
        def command(**values: Any) -> None:
            config = TrainConfig(**{option: values.pop(option) for option in TRAINING_OPTIONS})
            config.output = str(config.output)
            stage(**values, config=config)

        command.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]  # typer reads it
        train_app.command(name)(command)
        return stage

    return register


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


@training_command("distill", batch_size=32, lr=1e-4, weight_decay=0.01)
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
    tokenizer: Annotated[
        str | None,
        typer.Option(help="XLM-R tokenizer folder [default: the student's; for tiny, one trained on sample captions]"),
    ] = None,
    cosine_weight: Annotated[float, typer.Option(help="Weight of an extra 1 - cosine loss")] = 0.0,
    *,
    config: TrainConfig,
) -> None:
    """Teacher learning: the multilingual student learns CLIP's text states from parallel text."""
    from altclip.train.distill import distill

    _run(distill, teacher, student, corpus, config, tokenizer=tokenizer, cosine_weight=cosine_weight)


@training_command("contrastive", batch_size=64, lr=1e-5, weight_decay=0.1)
def contrastive_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            envvar="ALTCLIP_MODEL",
            help="AltCLIP checkpoint to train (e.g. the distill output; or $ALTCLIP_MODEL)",
        ),
    ],
    data: Annotated[
        list[str],
        typer.Option(
            metavar="FILE",
            help="Image-text pairs: .csv / .jsonl (image, caption) or WebDataset .tar shards (repeat for more)",
        ),
    ],
    image_root: Annotated[
        str | None, typer.Option(help="Folder the image paths are relative to [default: the data file's]")
    ] = None,
    train_vision: Annotated[
        bool, typer.Option(help="Also train the image tower (frozen by default, its embeddings cached)")
    ] = False,
    *,
    config: TrainConfig,
) -> None:
    """Contrastive learning (or fine-tuning) on image-text pairs, with negatives from every process."""
    from altclip.train.contrastive import contrastive

    _run(contrastive, model, data, config, image_root=image_root, train_vision=train_vision)
