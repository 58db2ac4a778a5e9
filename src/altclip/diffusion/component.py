"""``AltDiffusionTextEncoder``: the AltDiffusion text encoder as a diffusers component. Importing this imports
diffusers.

A diffusers pipeline saves a component only if its class derives from one diffusers or transformers knows
(``ModelMixin`` here), and records it in model_index.json under the module that defines it (this one), which
``from_pretrained`` finds once it is imported. Everything else is ``AltDiffusionTextModel``'s: methods come from it
first, ModelMixin adds only what pipelines ask a component for.
"""

from __future__ import annotations

import os
from typing import Any

from diffusers import ModelMixin  # the name diffusers' loader looks up in this module, as a base of the class below

from altclip.diffusion.text_encoder import AltDiffusionTextModel

__all__ = ["AltDiffusionTextEncoder", "ModelMixin"]

# What diffusers' pipeline loader passes every ModelMixin's from_pretrained, with the values that ask for nothing.
_LOADER_DEFAULTS = {
    "max_memory": None,
    "offload_folder": None,
    "offload_state_dict": None,
    "use_safetensors": None,
    "use_flashpack": False,
    "disable_mmap": False,
    "variant": None,
}


class AltDiffusionTextEncoder(AltDiffusionTextModel, ModelMixin):
    """A drop-in for diffusers' ``RobertaSeriesModelWithTransformation`` in ``AltDiffusionPipeline`` and in
    ``StableDiffusionPipeline``: the same checkpoints, inputs, outputs and config (``use_attention_mask``,
    ``has_pre_transformation``), on altclip's text path. A pipeline holding it saves it with ``save_pretrained``;
    ``from_pretrained`` of the pipeline loads it back while ``altclip.diffusion`` is imported, and diffusers' own
    class reads the saved ``text_encoder`` folder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs: Any):
        """``AltDiffusionTextModel.from_pretrained``, also taking what diffusers' pipeline loader passes each
        component: ``variant`` and ``use_safetensors`` are ignored (the folder's weights are read: safetensors
        first), offloading is refused."""
        for key, default in _LOADER_DEFAULTS.items():
            value = kwargs.pop(key, default)
            if key in ("max_memory", "offload_folder") and value is not None:
                raise NotImplementedError(f"{cls.__name__} loads onto one device; {key} is not offered")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
