"""``pipeline("zero-shot-image-classification", model=...)`` and ``load()``, the short entry points."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, overload

import torch

from altclip import zeroshot
from altclip.inference import embed_images, embed_texts, logit_scale
from altclip.loading.registry import DEFAULT_MODEL
from altclip.modeling.model import AltCLIPModel
from altclip.processing.processor import AltCLIPProcessor


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

    ``pipe(image, candidate_labels=["猫", "dog"])`` -> ``[{"score": ..., "label": ...}, ...]``, highest first; a list
    of images gives one such list per image. ``templates`` (see ``altclip.zeroshot``): None, the default, uses
    ``hypothesis_template`` ("This is a photo of {}.", as transformers does); "auto" gives each label the prompt
    set of its language; "none" the label alone; a language code or a list of templates those templates.
    """

    def __init__(self, model: AltCLIPModel, processor: AltCLIPProcessor, batch_size: int = 16):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self._classifiers = zeroshot.ClassifierCache()

    def classifier(
        self,
        labels: Sequence[str],
        templates: zeroshot.Templates = None,
        hypothesis_template: str = zeroshot.HYPOTHESIS_TEMPLATE,
    ) -> torch.Tensor:
        """The (labels, dim) classifier for ``labels``, cached for repeated calls with the same prompts."""
        prompts = zeroshot.label_prompts(labels, templates, hypothesis_template=hypothesis_template)
        cached = self._classifiers.get(prompts)
        if cached is not None:
            return cached
        embeds = embed_texts(self.model, self.processor, [p for ps in prompts for p in ps], batch_size=64)
        return self._classifiers.put(prompts, zeroshot.classifier_from_prompts(embeds, prompts))

    @overload
    def __call__(
        self,
        images: list[Any] | tuple[Any, ...],
        candidate_labels: Sequence[str] | None = None,
        *,
        hypothesis_template: str = zeroshot.HYPOTHESIS_TEMPLATE,
        templates: zeroshot.Templates = None,
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]: ...
    @overload
    def __call__(
        self,
        images: Any,
        candidate_labels: Sequence[str] | None = None,
        *,
        hypothesis_template: str = zeroshot.HYPOTHESIS_TEMPLATE,
        templates: zeroshot.Templates = None,
        top_k: int | None = None,
    ) -> list[dict[str, Any]]: ...
    def __call__(
        self,
        images: Any,
        candidate_labels: Sequence[str] | None = None,
        *,
        hypothesis_template: str = zeroshot.HYPOTHESIS_TEMPLATE,
        templates: zeroshot.Templates = None,
        top_k: int | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Ranked labels of an image (``[{"score": ..., "label": ...}, ...]``), or of each image of a list."""
        if candidate_labels is None:
            raise ValueError("candidate_labels is required: the labels to score the image against")
        labels = zeroshot.check_labels(candidate_labels)
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        classifier = self.classifier(labels, templates, hypothesis_template)
        image_embeds = embed_images(self.model, self.processor, batch, batch_size=self.batch_size)
        probs = zeroshot.scores(image_embeds, classifier, logit_scale(self.model)).probs
        results = [zeroshot.ranked(labels, row, top_k) for row in probs.tolist()]
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
