"""``altclip generate``: text to image with an AltDiffusion pipeline (diffusers, with altclip's text encoder)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated

import typer

from altclip.cli.common import (
    EXIT_INPUT,
    EXIT_MODEL,
    EXIT_USAGE,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    emit_json,
    err,
    fail,
    model_errors,
    out,
    warn,
)

app = typer.Typer()

DEFAULT_PIPELINE = "BAAI/AltDiffusion-m18"
INSTALL_HINT = "Text to image needs diffusers: pip install 'altclip[diffusion]'"
_NUMBERED = re.compile(r"^(\d{5})\.png$")


@app.command()
def generate(
    prompts: Annotated[
        list[str], typer.Argument(metavar="PROMPT", help="What to draw, in any of the model's languages")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the PNG images to")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            envvar="ALTCLIP_DIFFUSION_MODEL",
            help=f"AltDiffusion pipeline: Hub id (BAAI/AltDiffusion, -m9, -m18) or folder [default: {DEFAULT_PIPELINE}]",
        ),
    ] = None,  # fmt: skip
    negative_prompt: Annotated[str | None, typer.Option(help="What the images should not show [default: none]")] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, max=2**32 - 1, help="Seed of the first image; image k gets seed + k [default: random]"),
    ] = None,
    steps: Annotated[int, typer.Option(min=1, max=1000, help="Denoising steps")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 or less: none)")] = 7.5,
    width: Annotated[int | None, typer.Option(help="A multiple of 8 [default: the model's]")] = None,
    height: Annotated[int | None, typer.Option(help="A multiple of 8 [default: the model's]")] = None,
    images_per_prompt: Annotated[
        int, typer.Option("--images-per-prompt", "-n", min=1, max=64, help="Images of each prompt")
    ] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=64, help="Images per pipeline call")] = 1,
    safety_checker: Annotated[
        bool, typer.Option(help="Run the pipeline's safety checker, if it has one (it blacks out what it flags)")
    ] = True,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw images from text prompts with AltDiffusion (multilingual Stable Diffusion whose text encoder is
    AltCLIP's). Each image is a PNG in --output, with its prompt and settings in the file's metadata; the same
    seed and settings make the same image again."""
    prompts = list(prompts)
    model = model or DEFAULT_PIPELINE
    if not prompts or not all(p.strip() for p in prompts):
        fail("Give at least one prompt, and no empty ones", EXIT_USAGE)
    if negative_prompt is not None and not negative_prompt.strip():
        negative_prompt = None
    for name, value in (("--width", width), ("--height", height)):
        if value is not None and (value % 8 or not 8 <= value <= 2048):
            fail(f"{name} {value} must be a multiple of 8 between 8 and 2048", EXIT_USAGE)
    if not math.isfinite(guidance) or guidance < 0:
        fail(f"--guidance must be a finite number >= 0, got {guidance}", EXIT_USAGE)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"Cannot write images to {output}: {e.strerror or e}", EXIT_USAGE)
    try:
        import diffusers

        import altclip.diffusion.pipeline as diffusion
    except ImportError as e:
        fail(f"{e}. {INSTALL_HINT}", EXIT_USAGE)
    if not os.environ.get("ALTCLIP_DEBUG"):  # diffusers' loading bars and advice (install accelerate, ...)
        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()

    from altclip import __version__
    from altclip.inference import NonFiniteError
    from altclip.loading.pretrained import parse_dtype
    from altclip.utils.devices import DeviceError, resolve_device
    from altclip.utils.progress import Progress

    try:
        device, parsed_dtype = resolve_device(device), parse_dtype(dtype)
    except (DeviceError, ValueError) as e:
        fail(str(e), EXIT_USAGE)
    if isinstance(parsed_dtype, str):  # "auto"
        fail("--dtype auto is not offered here; name float32, bfloat16 or float16", EXIT_USAGE)
    name = str(Path(model).resolve()) if Path(model).exists() else model
    if not Path(model).exists():
        err.print(f"Loading {model} (downloaded into the Hugging Face cache on first use)...", highlight=False)
    try:
        pipe = diffusion.load_pipeline(name, dtype=parsed_dtype, device=device, safety_checker=safety_checker)
    except ImportError as e:
        fail(f"{e}. {INSTALL_HINT}", EXIT_USAGE)
    except model_errors() + (OSError, ValueError) as e:
        fail(f"Could not load the pipeline {model}: {e}", EXIT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    if seed is None:
        import secrets

        seed = secrets.randbelow(2**31)
    total = len(prompts) * images_per_prompt * steps
    software = f"altclip {__version__} (diffusers {diffusers.__version__})"
    written = []

    def write(made) -> None:  # each image as soon as its batch is done: an interruption keeps what was made
        path = _write_png(output, made.image, diffusion.png_metadata(made.settings, software))
        written.append({"file": str(path), "flagged": made.flagged, **vars(made.settings)})
        if made.flagged:
            warn(f"{path}: the safety checker flagged this image and blacked it out")

    try:
        with Progress("Generating", total=total) as progress:
            diffusion.generate(
                pipe, prompts, negative_prompt=negative_prompt, seed=seed, steps=steps, guidance_scale=guidance,
                width=width, height=height, images_per_prompt=images_per_prompt, batch_size=batch_size, model=model,
                on_step=lambda done: progress(done, total), on_image=write,
            )  # fmt: skip
    except diffusion.PromptError as e:
        fail(str(e), EXIT_INPUT)
    except NonFiniteError as e:
        fail(_kept(str(e), written), EXIT_MODEL)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        err.print(_kept("Interrupted", written), highlight=False)
        raise typer.Exit(130) from None
    if as_json:
        emit_json(written)
        return
    for row in written:
        out.print(f"{row['file']}  seed {row['seed']}  {row['prompt']}", highlight=False, soft_wrap=True)


def _kept(message: str, written: list[dict]) -> str:
    if not written:
        return message
    return f"{message} ({len(written)} images written before: {written[0]['file']} to {written[-1]['file']})"


def _write_png(folder: Path, image, pnginfo) -> Path:
    """``image`` as the next free ``NNNNN.png`` of ``folder`` (after the highest number there), written whole under a
    temporary name and then linked to a name no other file holds: two runs writing to one folder at once never
    overwrite each other's images, and a killed run leaves no half-written PNG under a number."""
    tmp = folder / f".altclip-{os.getpid()}.png.tmp"
    image.save(tmp, format="PNG", pnginfo=pnginfo)
    try:
        number = 1 + max((int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))), default=-1)
        while True:
            path = folder / f"{number:05d}.png"
            try:
                try:
                    os.link(tmp, path)  # fails, rather than replaces, where another run took the name
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links: the name claimed by exclusive creation
                    with open(path, "xb") as f:
                        f.write(tmp.read_bytes())
                return path
            except FileExistsError:
                number += 1
    finally:
        tmp.unlink(missing_ok=True)
