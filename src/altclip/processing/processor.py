"""AltCLIPProcessor: the tokenizer and the image processor behind one call, with transformers' ProcessorMixin surface."""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from altclip.loading.hub import HUB_KEYWORDS
from altclip.processing.batch import BatchFeature
from altclip.processing.image_processing import CLIPImageProcessor
from altclip.processing.tokenizer import XLMRobertaTokenizer

logger = logging.getLogger(__name__)


def _text_keywords() -> set[str]:
    return set(inspect.signature(XLMRobertaTokenizer.__call__).parameters) - {"self", "text", "text_pair"}


def _image_keywords() -> set[str]:
    return {f.name for f in fields(CLIPImageProcessor)}


class AltCLIPProcessor:
    """``processor(text=[...], images=[...], return_tensors="pt", padding=True)`` gives ``input_ids``,
    ``attention_mask`` and ``pixel_values`` ready for ``model(**inputs)``.

    Keywords go to the part that takes them: tokenizer settings (``padding``, ``max_length``, ...) to the tokenizer,
    image settings (``size``, ``crop_size``, ...) to the image processor, ``return_tensors`` to both. As in
    transformers, they may also come grouped: ``text_kwargs={...}``, ``images_kwargs={...}``, ``common_kwargs={...}``.
    """

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "CLIPImageProcessor"
    tokenizer_class = ("XLMRobertaTokenizer", "XLMRobertaTokenizerFast")

    def __init__(self, image_processor: CLIPImageProcessor | None = None, tokenizer: XLMRobertaTokenizer | None = None):
        if tokenizer is None:
            raise ValueError("AltCLIPProcessor needs a tokenizer")
        self.image_processor = image_processor or CLIPImageProcessor()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> AltCLIPProcessor:
        """Reads the tokenizer and the image processor settings (``preprocessor_config.json``, or transformers 5's
        ``processor_config.json``). Keywords: where on the Hub (``revision``, ``subfolder``, ``cache_dir``,
        ``local_files_only``, ``token``) and image settings that override the saved ones."""
        name = pretrained_model_name_or_path
        hub = {k: kwargs.pop(k) for k in HUB_KEYWORDS if k in kwargs}
        unknown = set(kwargs) - _image_keywords()
        if unknown:
            raise TypeError(f"AltCLIPProcessor.from_pretrained got unexpected keywords: {', '.join(sorted(unknown))}")
        tokenizer = XLMRobertaTokenizer.from_pretrained(name, **hub)
        if CLIPImageProcessor.has_config(name, **hub):
            image_processor = CLIPImageProcessor.from_pretrained(name, **hub, **kwargs)
        else:
            logger.warning("%s has no image processor config; using CLIP's default preprocessing", name)
            image_processor = CLIPImageProcessor(**kwargs)
        return cls(image_processor, tokenizer)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        if kwargs.get("push_to_hub"):
            raise NotImplementedError("push_to_hub is not offered; upload the folder with huggingface_hub")
        self.image_processor.save_pretrained(save_directory)
        return self.tokenizer.save_pretrained(save_directory)

    @property
    def model_input_names(self) -> list[str]:
        return [*self.image_processor.model_input_names, *self.tokenizer.model_input_names]

    def __call__(
        self,
        images: Any = None,
        text: Any = None,
        videos: None = None,
        audio: None = None,
        *,
        text_kwargs: dict[str, Any] | None = None,
        images_kwargs: dict[str, Any] | None = None,
        common_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("Pass text, images, or both")
        if videos is not None or audio is not None:
            raise ValueError("AltCLIP takes text and images, not videos or audio")
        text_settings, image_settings = self._route(kwargs, text_kwargs, images_kwargs, common_kwargs)
        out = BatchFeature()
        if text is not None:
            out.update(self.tokenizer(text, **text_settings))
        if images is not None:
            out.update(self.image_processor(images, **image_settings))
        return out

    @staticmethod
    def _route(
        kwargs: dict[str, Any],
        text_kwargs: dict[str, Any] | None,
        images_kwargs: dict[str, Any] | None,
        common_kwargs: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Keywords -> (tokenizer settings, image processor settings); a grouped keyword wins over a flat one."""
        text_keys, image_keys = _text_keywords(), _image_keywords()
        text: dict[str, Any] = {"return_tensors": None}
        images: dict[str, Any] = {"return_tensors": None}
        for key, value in {**kwargs, **(common_kwargs or {})}.items():
            if key == "return_tensors":
                text[key] = images[key] = value
            elif key in text_keys:
                text[key] = value
            elif key in image_keys:
                images[key] = value
            else:
                raise TypeError(f"AltCLIPProcessor got an unexpected keyword {key!r}")
        for group, allowed, settings in (("text_kwargs", text_keys, text), ("images_kwargs", image_keys, images)):
            given = (text_kwargs if group == "text_kwargs" else images_kwargs) or {}
            unknown = set(given) - allowed
            if unknown:
                raise TypeError(f"{group} has keys the {group[:-7]} part does not take: {', '.join(sorted(unknown))}")
            settings.update(given)
        return text, images

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)
