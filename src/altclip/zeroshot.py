"""Zero-shot classification: the one path from labels to scores. The pipeline, ``altclip classify``,
``POST /v1/classify`` and ``altclip eval zeroshot`` all take it, so they all give the same scores:

1. ``label_prompts(labels, templates)``: each label written into its templates;
2. the prompts embedded (by the caller: directly, or through the service's batcher);
3. ``classifier_from_prompts(prompt_embeds, prompts)``: per label, the mean of its unit-norm prompt embeddings,
   renormalised (a prompt ensemble), kept in a ``ClassifierCache``;
4. ``scores(image_embeds, classifier, logit_scale).probs``: per image, the softmax over the labels of the cosine
   similarities scaled by the model's temperature, as ``AltCLIPModel.forward`` computes ``logits_per_image``.

``templates`` means the same everywhere:

- ``None``: transformers' hypothesis template, ``"This is a photo of {}."`` (what its zero-shot pipeline does,
  and what users of the transformers AltCLIP page expect);
- ``"none"``: no template, the label alone;
- ``"auto"``: each label gets the built-in set of its script's language (``templates.guess_language``);
- a language code (``"en"``, ``"zh"``, ...): that built-in set (``templates.TEMPLATES``) for every label;
- a list of templates: those for every label (or, from Python, one list per label).

In a template only ``{}`` (or ``{c}``, as CLIP_benchmark's templates mark the class) is special: the label
replaces it as it is (labels may hold any character, and ``str.format`` is never applied), and any other brace is an
error, so a typo such as ``"a photo of {label}"`` does not silently become a different prompt.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from altclip.templates import TEMPLATES, guess_language, templates_for

HYPOTHESIS_TEMPLATE = "This is a photo of {}."
PLACEHOLDER = re.compile(r"\{c?\}")  # where a template puts the label: {} (ours), or {c} (CLIP_benchmark's)
TEMPLATE_MODES = ("none", "auto", *TEMPLATES)  # the names ``templates`` may be, besides None and a list

Templates = str | Sequence[str] | Sequence[Sequence[str]] | None


def check_labels(labels: Sequence[str] | str) -> list[str]:
    """The labels as a list; an error naming the first empty or non-string one."""
    if isinstance(labels, str):
        labels = [labels]
    labels = list(labels)
    if not labels:
        raise ValueError("candidate_labels is empty: give at least one label")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"Label {i} is empty or not a string: {label!r}")
    return labels


def check_template(template: Any) -> str:
    """``template`` if it says where the label goes with ``{}`` (or ``{c}``) and has no other brace."""
    if not isinstance(template, str):
        raise ValueError(f"Template {template!r} is not a string: templates must be strings with '{{}}'")
    if placeholders(template) == 0:
        raise ValueError(f"Template {template!r} has no '{{}}': templates must say where the label goes with '{{}}'")
    rest = PLACEHOLDER.sub("", template)
    if "{" in rest or "}" in rest:
        raise ValueError(
            f"Template {template!r} has braces other than '{{}}': templates must mark the label with '{{}}' (or "
            "CLIP_benchmark's '{c}') only, and the label is put in as it is"
        )
    return template


def placeholders(template: str) -> int:
    """How many times ``template`` names the label."""
    return len(PLACEHOLDER.findall(template))


def fill(template: str, label: str) -> str:
    """The prompt for ``label``: every ``{}`` (or ``{c}``) of ``template`` replaced by the label, literally (in one
    pass, so a label holding "{}" is not filled in again)."""
    return PLACEHOLDER.sub(lambda _: label, check_template(template))


def label_prompts(
    labels: Sequence[str] | str, templates: Templates = None, *, hypothesis_template: str = HYPOTHESIS_TEMPLATE
) -> list[list[str]]:
    """The prompts of each label (one list per label), for ``templates`` as the module docstring describes."""
    labels = check_labels(labels)
    per_label = templates_per_label(labels, templates, hypothesis_template)
    return [[fill(template, label) for template in ts] for label, ts in zip(labels, per_label)]


def templates_per_label(
    labels: list[str], templates: Templates, hypothesis_template: str = HYPOTHESIS_TEMPLATE
) -> list[Sequence[str]]:
    """The templates of each label, without filling them in: what a caller needs to know what the prompts will cost
    (their number and characters) before making them."""
    if templates is None:
        return [[hypothesis_template]] * len(labels)
    if isinstance(templates, str):
        if templates == "none":
            return [["{}"]] * len(labels)
        if templates == "auto":
            return [TEMPLATES[guess_language(label)] for label in labels]
        if placeholders(templates):
            raise ValueError(
                f"templates={templates!r} names no template set; give templates as a list: [{templates!r}]"
            )
        return [templates_for(templates)] * len(labels)
    templates = list(templates)
    if templates and all(isinstance(t, str) for t in templates):
        return [cast(list[str], templates)] * len(labels)  # all strings, as just checked
    if templates and all(isinstance(t, (list, tuple)) and t for t in templates) and len(templates) == len(labels):
        return templates
    raise ValueError(
        "templates must be None, 'none', 'auto', a language code, a non-empty list of templates, or one non-empty "
        "list per label"
    )


def classifier_from_prompts(prompt_embeds: torch.Tensor, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """(labels, dim) unit-norm classifier from the embeddings of the prompts, flattened in the order of
    ``prompts``: each label's row is the mean of its unit-norm prompt embeddings, renormalised."""
    counts = [len(p) for p in prompts]
    if prompt_embeds.shape[0] != sum(counts):
        raise ValueError(f"{prompt_embeds.shape[0]} prompt embeddings for {sum(counts)} prompts")
    rows = torch.split(F.normalize(prompt_embeds.float(), dim=-1), counts)
    return F.normalize(torch.stack([r.mean(0) for r in rows]), dim=-1)


class ClassifierCache:
    """Classifiers by their prompts, the least recently used dropped beyond ``size``."""

    def __init__(self, size: int = 64):
        self.size = size
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @staticmethod
    def _key(prompts: Sequence[Sequence[str]]) -> tuple:
        return tuple(tuple(p) for p in prompts)

    def get(self, prompts: Sequence[Sequence[str]]) -> torch.Tensor | None:
        key = self._key(prompts)
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, prompts: Sequence[Sequence[str]], classifier: torch.Tensor) -> torch.Tensor:
        self._items[self._key(prompts)] = classifier
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return classifier


@dataclass
class Scores:
    cosine: torch.Tensor  # (images, texts) cosine similarities
    logits_per_image: torch.Tensor  # cosine x the model's logit scale (its temperature), as AltCLIPModel gives
    probs: torch.Tensor  # per image, the softmax of the logits over the texts (or labels)


def scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: float) -> Scores:
    """Image-text scores from (images, D) and (texts, D) embeddings; ``logit_scale`` is the model's
    ``logit_scale.exp()``. With a zero-shot classifier as ``text_embeds``, ``probs`` are the label scores."""
    cosine = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T
    logits = cosine * logit_scale
    return Scores(cosine=cosine, logits_per_image=logits, probs=logits.softmax(dim=-1))


def ranked(labels: Sequence[str], probs: Sequence[float], top_k: int | None = None) -> list[dict[str, Any]]:
    """``[{"score": ..., "label": ...}, ...]``, highest score first (ties keep the labels' order)."""
    rows: list[dict[str, Any]] = [{"score": float(p), "label": label} for label, p in zip(labels, probs)]
    rows.sort(key=lambda r: -r["score"])
    return rows[:top_k] if top_k else rows
