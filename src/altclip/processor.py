"""AltCLIPProcessor: the tokenizer and the image processor behind one call."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from altclip.batch import BatchFeature
from altclip.image_processing import PREPROCESSOR_FILE, CLIPImageProcessor
from altclip.tokenizer import XLMRobertaTokenizer

logger = logging.getLogger(__name__)


class AltCLIPProcessor:
    """``processor(text=[...], images=[...], return_tensors="pt", padding=True)`` gives ``input_ids``,
    ``attention_mask`` and ``pixel_values`` ready for ``model(**inputs)``."""

    def __init__(self, image_processor: CLIPImageProcessor | None = None, tokenizer: XLMRobertaTokenizer | None = None):
        if tokenizer is None:
            raise ValueError("AltCLIPProcessor needs a tokenizer")
        self.image_processor = image_processor or CLIPImageProcessor()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, revision: str | None = None) -> AltCLIPProcessor:
        from altclip.hub import resolve_file

        tokenizer = XLMRobertaTokenizer.from_pretrained(name_or_path, revision=revision)
        if resolve_file(name_or_path, PREPROCESSOR_FILE, revision=revision, required=False) is None:
            logger.warning("%s has no %s; using CLIP's default preprocessing", name_or_path, PREPROCESSOR_FILE)
            image_processor = CLIPImageProcessor()
        else:
            image_processor = CLIPImageProcessor.from_pretrained(name_or_path, revision=revision)
        return cls(image_processor, tokenizer)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        self.image_processor.save_pretrained(save_directory)
        return self.tokenizer.save_pretrained(save_directory)

    @property
    def model_input_names(self) -> list[str]:
        return [*self.tokenizer.model_input_names, "pixel_values"]

    def __call__(
        self,
        text: Any = None,
        images: Any = None,
        *,
        return_tensors: str | None = None,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("Pass text, images, or both")
        out = BatchFeature()
        if text is not None:
            out.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors))
        return out

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)
