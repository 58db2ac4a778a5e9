"""AltDiffusion pipelines with altclip's text encoder: loading one (BAAI's, or one a pipeline saved), writing a tiny
random one, and making images with their settings in PNG metadata. Importing this imports diffusers.

diffusers 0.42 cannot load an AltDiffusion pipeline by itself: model_index.json names the text encoder's library
as ``alt_diffusion`` (BAAI's) or ``diffusers`` (a save by diffusers itself), and neither resolves since the pipeline
moved to ``diffusers.pipelines.deprecated``. ``load_pipeline`` lets diffusers load every other part and puts
altclip's encoder in the text encoder's place; ``StableDiffusionPipeline`` runs it (AltDiffusionPipeline is the same
pipeline, deprecated), so it keeps working once the deprecated pipeline is removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from altclip.diffusion.component import AltDiffusionTextEncoder
from altclip.diffusion.shapes import DIFFUSION_SHAPES
from altclip.diffusion.text_encoder import DIFFUSERS_CLASS, AltDiffusionTextConfig
from altclip.inference import NonFiniteError
from altclip.loading.checkpoint import CheckpointError
from altclip.loading.hub import CheckpointNotFoundError, resolve_file
from altclip.modeling.config import read_config_file

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

PIPELINE_INDEX = "model_index.json"
TEXT_ENCODER_CLASSES = (DIFFUSERS_CLASS, AltDiffusionTextEncoder.__name__)
PARTS = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")
MAX_SIDE = 2048  # pixels per side: what one image may cost is bounded (SD's UNet grows with the square)
MAX_STEPS = 1000  # the schedules have 1000 training timesteps; no sampler takes more steps than that
MAX_CHARS_PER_TOKEN = 32  # a generous bound on the characters of one token (XLM-R's pieces are far shorter)


class NotAPipelineError(CheckpointError):
    """A folder or Hub model that is not an AltDiffusion pipeline (no model_index.json, another text encoder, a
    part missing)."""


class PromptError(ValueError):
    """A prompt the pipeline cannot read whole (longer than its tokenizer's limit)."""


def read_pipeline_index(name_or_path: str | os.PathLike, **hub: Any) -> dict[str, Any]:
    """model_index.json of an AltDiffusion pipeline, checked: NotAPipelineError names what is not one.
    ``hub``: revision, cache_dir, local_files_only, token (see ``altclip.loading.hub.resolve_file``)."""
    try:
        path = resolve_file(name_or_path, PIPELINE_INDEX, **hub)
    except CheckpointNotFoundError:
        if not Path(name_or_path).is_dir():
            raise
        what = " (an AltCLIP checkpoint: for text to image, name an AltDiffusion pipeline)" if (
            Path(name_or_path) / "config.json"
        ).is_file() else ""  # fmt: skip
        raise NotAPipelineError(
            f"{name_or_path} is not a diffusion pipeline: it has no {PIPELINE_INDEX}{what}"
        ) from None
    try:
        index = read_config_file(path)
    except (ValueError, OSError) as e:
        raise NotAPipelineError(f"{name_or_path} is not a diffusion pipeline: {e}") from None
    missing = [part for part in PARTS if not _component(index, part)[1]]
    if missing:
        raise NotAPipelineError(f"{path} names no {', '.join(missing)}: not a text-to-image pipeline")
    text_encoder = _component(index, "text_encoder")[1]
    if text_encoder not in TEXT_ENCODER_CLASSES:
        raise NotAPipelineError(
            f"{name_or_path} is a {index.get('_class_name', 'pipeline')} whose text encoder is {text_encoder}; "
            f"altclip runs AltDiffusion pipelines, whose text encoder is {DIFFUSERS_CLASS}"
        )
    return index


def _component(index: dict[str, Any], part: str) -> tuple[str | None, str | None]:
    entry = index.get(part)
    if isinstance(entry, list) and len(entry) == 2 and all(v is None or isinstance(v, str) for v in entry):
        return entry[0], entry[1]
    return None, None


def load_pipeline(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    safety_checker: bool = True,
    pipeline_class: type[DiffusionPipeline] | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
):
    """An AltDiffusion pipeline (BAAI/AltDiffusion, -m9, -m18, a folder of one, or one a pipeline saved) with
    ``AltDiffusionTextEncoder`` as its text encoder: a ``StableDiffusionPipeline``, or ``pipeline_class``
    (``AltDiffusionPipeline``, or another of diffusers' Stable Diffusion pipelines).

    dtype: of every part (default float32); device: where they go (default CPU). ``safety_checker=False`` leaves
    out the pipeline's safety checker, if it has one (it blacks out the images it flags). Raises
    NotAPipelineError for what is not an AltDiffusion pipeline, CheckpointNotFoundError when it cannot be found.
    """
    hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    read_pipeline_index(name_or_path, **hub)
    encoder = AltDiffusionTextEncoder.from_pretrained(name_or_path, subfolder="text_encoder", dtype=dtype, **hub)
    options: dict[str, Any] = {}
    if not safety_checker:
        options.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls = pipeline_class or StableDiffusionPipeline
    # The text encoder is passed as None, so that diffusers neither loads it nor resolves the library
    # model_index.json names for it; then ours takes its place.
    pipe = cls.from_pretrained(str(name_or_path), text_encoder=None, dtype=dtype or torch.float32, **options, **hub)
    pipe.register_modules(text_encoder=encoder)
    return pipe.to(device) if device is not None else pipe


def write_random_pipeline(shape: str, path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Writes an AltDiffusion pipeline with random weights of a shape of ``DIFFUSION_SHAPES`` in BAAI's layout
    (model_index.json naming diffusers' text encoder class; its text_encoder folder as that class writes it), with
    the tokenizer of random checkpoints limited to the shape's prompt length. It runs like a released pipeline, and
    its images are noise."""
    import diffusers

    from altclip.loading.random_checkpoints import random_tokenizer
    from altclip.loading.registry import RANDOM_MARKER

    spec = DIFFUSION_SHAPES[shape]
    path = Path(path)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = AltDiffusionTextEncoder(AltDiffusionTextConfig(**spec.text)).eval()
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
    finally:
        torch.random.set_rng_state(generator_state)
    encoder.save_pretrained(path / "text_encoder")
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    PNDMScheduler(**spec.scheduler).save_pretrained(path / "scheduler")
    tokenizer = random_tokenizer(spec.text["vocab_size"])
    tokenizer.model_max_length = spec.max_tokens
    tokenizer.save_pretrained(path / "tokenizer")
    index = {
        "_class_name": "AltDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["alt_diffusion", DIFFUSERS_CLASS],
        "tokenizer": ["transformers", "XLMRobertaTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / PIPELINE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (path / RANDOM_MARKER).write_text(
        "This pipeline has random weights: it runs like a real one, but its images are noise.\n"
    )
    return path


# ---------------------------------------------------------------------------------------------------------------
# Making images


@dataclass(frozen=True)
class ImageSettings:
    """What made one image: with the same pipeline, these settings make it again (to float round-off)."""

    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    model: str
    scheduler: str


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    settings: ImageSettings
    flagged: bool  # the pipeline's safety checker blacked it out


def default_size(pipe) -> tuple[int, int]:
    """(width, height) the pipeline makes by default: its UNet's sample size in pixels."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return side, side


def check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not 8 <= value <= MAX_SIDE or value % 8:
            raise ValueError(f"{name} {value} is not a multiple of 8 between 8 and {MAX_SIDE}")


def check_prompts(tokenizer, prompts: Sequence[str], what: str = "prompt") -> None:
    """PromptError naming the first prompt longer than the tokenizer's limit (with <s> and </s>), which the pipeline
    would cut without a word."""
    limit = tokenizer.model_max_length
    for i, text in enumerate(prompts, 1):
        where = f"{what} {i}" if len(prompts) > 1 else what
        if not isinstance(text, str):
            raise PromptError(f"{where} is not text")
        if len(text) > limit * MAX_CHARS_PER_TOKEN:  # bounded before tokenizing: no token is that long
            raise PromptError(f"{where} is {len(text)} characters long, far over this pipeline's {limit} tokens")
        if not _utf8(text):
            raise PromptError(f"{where} is not text: it must be valid UTF-8")
        count = len(tokenizer(text, truncation=False)["input_ids"])
        if count > limit:
            raise PromptError(
                f"{where} is {count} tokens long; this pipeline reads at most {limit} (with <s> and </s>): shorten it"
            )


def _utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (a command line's undecodable bytes arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def generate(
    pipe,
    prompts: Sequence[str],
    *,
    negative_prompt: str | None = None,
    seed: int = 0,
    steps: int = 25,
    guidance_scale: float = 7.5,
    width: int | None = None,
    height: int | None = None,
    images_per_prompt: int = 1,
    batch_size: int = 1,
    model: str = "",
    on_step: Callable[[int], None] | None = None,
    on_image: Callable[[GeneratedImage], None] | None = None,
) -> list[GeneratedImage]:
    """Images for ``prompts``, ``images_per_prompt`` each, ``batch_size`` per call of the pipeline. Image ``k`` (in
    the order prompt by prompt) starts from the noise of seed ``seed + k``, drawn on the CPU: it does not depend on
    the batch size or the device. ``on_step(n)`` is called after each denoising step with the steps done so far
    over all batches, ``on_image(image)`` for each image as soon as its batch is done (so that a caller can keep
    what was made before an interruption or a failure). Raises PromptError for a prompt over the token limit, ValueError for a size or count that
    cannot be, NonFiniteError when the model makes NaN."""
    default_width, default_height = default_size(pipe)
    width, height = width or default_width, height or default_height
    check_size(width, height)
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must lie in 1..{MAX_STEPS}, got {steps}")
    if not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
    check_prompts(pipe.tokenizer, prompts)
    if negative_prompt is not None:
        check_prompts(pipe.tokenizer, [negative_prompt], "negative prompt")
    jobs = [
        ImageSettings(prompt, negative_prompt, seed + k, steps, float(guidance_scale), width, height, model,
                      type(pipe.scheduler).__name__)
        for k, prompt in enumerate(p for p in prompts for _ in range(images_per_prompt))
    ]  # fmt: skip
    done = 0

    def step_end(_pipe, _step, _timestep, callback_kwargs):
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done)
        return callback_kwargs

    results: list[GeneratedImage] = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        out = pipe(
            prompt=[job.prompt for job in batch],
            negative_prompt=None if negative_prompt is None else [negative_prompt] * len(batch),
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            generator=[torch.Generator("cpu").manual_seed(job.seed) for job in batch],
            output_type="np",
            callback_on_step_end=step_end,
        )
        images = out.images  # (n, H, W, 3) floats in [0, 1]
        if not np.isfinite(images).all():
            raise NonFiniteError(
                "The pipeline made NaN or infinite pixels (a model in float16 on a CPU, or damaged weights); "
                "try --dtype float32"
            )
        flagged = out.nsfw_content_detected or [False] * len(batch)
        made = list(map(GeneratedImage, pipe.numpy_to_pil(images), batch, map(bool, flagged)))
        for image in made:
            if on_image is not None:
                on_image(image)
        results += made
    return results


def png_metadata(settings: ImageSettings, software: str) -> PngInfo:
    """The settings as PNG text: one UTF-8 (iTXt) entry per setting, all of them as JSON under ``altclip``, and a
    ``parameters`` entry in the form image viewers and model sites read (prompt, then a line of settings)."""
    info = PngInfo()
    values = asdict(settings)
    for key, value in values.items():
        if value is not None:
            info.add_itxt(key, str(value))
    info.add_itxt("altclip", json.dumps(values, ensure_ascii=False))
    negative = f"\nNegative prompt: {settings.negative_prompt}" if settings.negative_prompt else ""
    info.add_itxt(
        "parameters",
        f"{settings.prompt}{negative}\nSteps: {settings.steps}, Sampler: {settings.scheduler}, CFG scale: "
        f"{settings.guidance_scale:g}, Seed: {settings.seed}, Size: {settings.width}x{settings.height}, Model: "
        f"{settings.model}",
    )
    info.add_itxt("Software", software)
    return info
