"""The ``altclip`` command. Each module owns its commands (a Typer app); ``build`` adds them to one app.

common.py       exit codes and the table from errors to them, shared options, output, loading the model
                (imports no command module)
predict.py      classify, similarity              checkpoints.py   models, random-checkpoint
index.py        index, search, embed, demo        serve.py         serve
train.py        train distill|contrastive          evaluate.py      eval zeroshot|retrieval
deploy.py       quantize, export onnx              bench.py         bench
generate.py     generate (text to image)
"""

from __future__ import annotations

from typing import Annotated

import typer

from altclip.cli import bench, checkpoints, deploy, evaluate, generate, index, predict, serve, train
from altclip.cli.common import TranslatedErrors, err, out

COMMANDS = (predict, index, serve, train, evaluate, deploy, bench, generate, checkpoints)


def build() -> typer.Typer:
    """The ``altclip`` app with every command."""
    app = typer.Typer(
        help="AltCLIP: multilingual image-text embeddings, zero-shot classification and image search.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Help as click writes it: paragraphs re-wrapped to the terminal (80 columns when piped), every option's
        # help in full, and brackets shown as written (rich markup would take "[default: ...]" for a tag).
        rich_markup_mode=None,
        cls=TranslatedErrors,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_options)
    for module in COMMANDS:
        app.add_typer(module.app)
    return app


def _version(value: bool) -> None:
    if value:
        from altclip import __version__

        out.print(f"altclip {__version__}", highlight=False)
        raise typer.Exit()


def _options(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit"),
    ] = None,
) -> None:
    """The options of ``altclip`` itself, before the command."""


def main() -> None:
    try:
        build()(prog_name="altclip")  # also under `python -m altclip`
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130) from None
