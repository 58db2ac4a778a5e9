"""Evaluation (`altclip eval`): zero-shot classification and image-text retrieval, written as CLIP_benchmark does:
one JSON file per model x dataset x language x task.

Result file ``{model}_{dataset}_{language}_{task}.json``::

    {"model": "BAAI/AltCLIP", "dataset": "imagenet-cn", "language": "zh", "task": "zeroshot_classification",
     "metrics": {"acc1": 0.596, "acc5": 0.87, "mean_per_class_recall": 0.59},
     "samples": 50000, "skipped": {"unreadable image": 0}, "templates": 18, "date": "2026-11-23", "altclip": "0.1.0"}

The metrics are CLIP_benchmark's, as ``metrics.py`` defines them (ties, ``acc5`` NaN under 5 classes, images
without captions as misses). ``task`` is ``zeroshot_classification`` (``acc1``, ``acc5``, ``mean_per_class_recall``) or
``zeroshot_retrieval`` (``image_retrieval_recall@{1,5,10}``: a caption finds its image; ``text_retrieval_recall@
{1,5,10}``: an image finds any of its captions; ``mean_recall``: the mean of the six, as Flickr30k-CN reports it).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altclip import zeroshot
from altclip.evaluate.metrics import classification_metrics, retrieval_metrics
from altclip.inference import Embedder
from altclip.utils.files import is_image_name


def zero_shot_classification(
    embedder: Embedder,
    dataset: str | Path,
    *,
    classnames: dict[str, str] | None = None,
    templates: zeroshot.Templates = "auto",
) -> dict[str, Any]:
    """An image-folder dataset (one folder per class) classified against its class names in prompt templates
    (``templates`` as ``altclip.zeroshot`` describes them)."""
    root = Path(dataset)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class folders")
    names = [(classnames or {}).get(c, c) for c in classes]
    paths, labels = [], []
    for label, c in enumerate(classes):
        for path in sorted((root / c).iterdir()):
            if is_image_name(path.name):
                paths.append(path)
                labels.append(label)
    scores, kept, failed = _zero_shot(embedder, paths, names, templates)
    return {
        "task": "zeroshot_classification",
        # On the logits, as CLIP_benchmark: probabilities can round distinct logits into ties.
        "metrics": classification_metrics(scores["logits_per_image"], np.array(labels)[kept]),
        "samples": len(kept),
        "classes": len(classes),
        "skipped": {"unreadable image": len(failed)},
        "templates": len(zeroshot.label_prompts(names[:1], templates)[0]),
    }


def zero_shot_scores(
    embedder: Embedder, images: Sequence[Any], labels: Sequence[str], templates: zeroshot.Templates = "auto"
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """(readable images, labels) zero-shot probabilities, the same the pipeline and the service give; the indices
    of the readable images; (index, reason) for the others."""
    scores, kept, failed = _zero_shot(embedder, images, labels, templates)
    return scores["probs"], kept, failed


def _zero_shot(
    embedder: Embedder, images: Sequence[Any], labels: Sequence[str], templates: zeroshot.Templates
) -> tuple[dict[str, np.ndarray], list[int], list[tuple[int, str]]]:
    """``Embedder.scores`` of the readable images against the labels' classifier, with ``kept`` and ``failed``."""
    prompts = zeroshot.label_prompts(labels, templates)
    image_embeds, kept, failed = embedder.embed_readable(images)
    return embedder.scores(image_embeds, embedder.zero_shot_classifier(prompts)), kept, failed


def zero_shot_retrieval(embedder, captions: str | Path, image_root: str | None = None) -> dict[str, Any]:
    """Retrieval over a captions file (CSV or JSONL of image and caption; several captions may share an image)."""
    from altclip.data.readers import read_pairs

    pairs, report = read_pairs([str(captions)], image_root)
    images = list(dict.fromkeys(source for source, _ in pairs))  # each image once, in order of appearance
    position = {image: i for i, image in enumerate(images)}
    skipped: Counter = Counter(report.skipped)
    image_embeds, kept, failed = embedder.embed_readable(images)
    skipped["unreadable image"] += len(failed)
    remap = {old: new for new, old in enumerate(kept)}
    texts, text_image = [], []
    for source, caption in pairs:
        index = position[source]
        if index in remap:
            texts.append(caption)
            text_image.append(remap[index])
    text_embeds = embedder.embed_texts(texts)
    metrics = retrieval_metrics(image_embeds, text_embeds, np.array(text_image))
    return {
        "task": "zeroshot_retrieval",
        "metrics": metrics,
        "samples": len(texts),
        "images": len(kept),
        "skipped": dict(skipped),
    }


def write_result(output: str | Path, model: str, dataset: str, language: str, result: dict[str, Any]) -> Path:
    from altclip import __version__

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_") or "unnamed"

    path = Path(output) / f"{slug(model)}_{slug(dataset)}_{slug(language)}_{result['task']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": model,
        "dataset": dataset,
        "language": language,
        **result,
        "date": time.strftime("%Y-%m-%d"),
        "altclip": __version__,
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path
