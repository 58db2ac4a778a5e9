"""``pipeline("zero-shot-image-classification", model=...)`` and ``load()``, the short entry points."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from altclip.inference import _check_labels, classify, embed_images, zero_shot_classifier
from altclip.model import AltCLIPModel
from altclip.processor import AltCLIPProcessor
from altclip.templates import TEMPLATES, guess_language, templates_for

DEFAULT_MODEL = "BAAI/AltCLIP"


def load(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
) -> tuple[AltCLIPModel, AltCLIPProcessor]:
    """``model, processor = altclip.load("BAAI/AltCLIP")``: the model in eval mode and its processor."""
    model = AltCLIPModel.from_pretrained(name_or_path, device=device, dtype=dtype, revision=revision)
    return model, AltCLIPProcessor.from_pretrained(name_or_path, revision=revision)


class ZeroShotImageClassificationPipeline:
    """Scores images against labels in any language.

    ``pipe(image, candidate_labels=["猫", "dog"])`` -> ``[{"label": ..., "score": ...}, ...]``, highest first; a list
    of images gives one such list per image.
    """

    def __init__(self, model: AltCLIPModel, processor: AltCLIPProcessor, batch_size: int = 16):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self._classifiers: dict[tuple, torch.Tensor] = {}

    def classifier(
        self, labels: Sequence[str], templates: Any = None, hypothesis_template: str = "This is a photo of {}."
    ) -> torch.Tensor:
        """The (labels, dim) classifier for ``labels``, cached for repeated calls with the same labels.

        templates: None (``hypothesis_template`` alone, as transformers does), a language code of the built-in
        sets ("en", "zh", ...), "auto" (each label gets the set of its script's language), or a list of templates.
        """
        labels = _check_labels(labels)
        if templates is None:
            per_label: Any = [hypothesis_template]
        elif templates == "auto":
            per_label = [TEMPLATES[guess_language(label)] for label in labels]
        elif isinstance(templates, str):
            per_label = list(templates_for(templates))
        else:
            per_label = list(templates)
        for ts in per_label if isinstance(per_label[0], (list, tuple)) else [per_label]:
            for t in ts:
                if "{}" not in t:
                    raise ValueError(f"Template {t!r} has no '{{}}' for the label")
        key = (tuple(labels), repr(per_label))
        if key not in self._classifiers:
            if len(self._classifiers) > 32:
                self._classifiers.clear()
            self._classifiers[key] = zero_shot_classifier(self.model, self.processor, labels, per_label)
        return self._classifiers[key]

    def __call__(
        self,
        images: Any,
        candidate_labels: Sequence[str] | None = None,
        *,
        hypothesis_template: str = "This is a photo of {}.",
        templates: Any = None,
        top_k: int | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        if candidate_labels is None:
            raise ValueError("candidate_labels is required: the labels to score the image against")
        labels = _check_labels(candidate_labels)
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        weights = self.classifier(labels, templates, hypothesis_template)
        probs = classify(
            self.model, embed_images(self.model, self.processor, batch, batch_size=self.batch_size), weights
        )
        results = []
        for row in probs.tolist():
            ranked = sorted(({"score": p, "label": label} for label, p in zip(labels, row)), key=lambda r: -r["score"])
            results.append(ranked[:top_k] if top_k else ranked)
        return results[0] if single else results


def pipeline(
    task: str = "zero-shot-image-classification",
    model: str | os.PathLike | AltCLIPModel | None = None,
    *,
    processor: AltCLIPProcessor | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> ZeroShotImageClassificationPipeline:
    """transformers' ``pipeline`` for the one task AltCLIP serves: zero-shot image classification."""
    if task != "zero-shot-image-classification":
        raise ValueError(f"Unsupported task {task!r}; AltCLIP pipelines do 'zero-shot-image-classification'")
    model = DEFAULT_MODEL if model is None else model
    if isinstance(model, AltCLIPModel):
        if processor is None:
            raise ValueError("Pass processor= along with a model object")
        return ZeroShotImageClassificationPipeline(model, processor, **kwargs)
    loaded, loaded_processor = load(model, device=device, dtype=dtype, revision=revision)
    return ZeroShotImageClassificationPipeline(loaded, processor or loaded_processor, **kwargs)
