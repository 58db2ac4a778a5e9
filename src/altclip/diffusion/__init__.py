"""Text to image with AltDiffusion (BAAI/AltDiffusion, -m9, -m18): altclip's text tower as the text encoder of
diffusers' pipelines, which run the UNet, the VAE and the scheduler.

    from altclip.diffusion import load_pipeline
    pipe = load_pipeline("BAAI/AltDiffusion-m18")          # a diffusers StableDiffusionPipeline
    image = pipe("一只戴着帽子的猫", num_inference_steps=25).images[0]

``AltDiffusionTextModel`` (and its config) need neither diffusers nor transformers; ``AltDiffusionTextEncoder``
(the same model as a diffusers component) and the pipeline functions import diffusers. Each name is imported when
first asked for, so that ``altclip.diffusion.shapes`` (what the command line lists) costs nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AltDiffusionTextConfig",
    "AltDiffusionTextEncoder",
    "AltDiffusionTextModel",
    "TransformationModelOutput",
    "load_pipeline",
    "write_random_pipeline",
]

_LAZY = {
    "AltDiffusionTextConfig": "altclip.diffusion.text_encoder",
    "AltDiffusionTextModel": "altclip.diffusion.text_encoder",
    "TransformationModelOutput": "altclip.diffusion.text_encoder",
    "AltDiffusionTextEncoder": "altclip.diffusion.component",
    "load_pipeline": "altclip.diffusion.pipeline",
    "write_random_pipeline": "altclip.diffusion.pipeline",
}


def __getattr__(name: str) -> Any:
    """Each name, imported when first used."""
    if name not in _LAZY:
        raise AttributeError(f"module 'altclip.diffusion' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
