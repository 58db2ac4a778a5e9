"""Evaluation (`altclip eval`): zero-shot classification and image-text retrieval, written as CLIP_benchmark does:
one JSON file per model x dataset x language x task.

Result file ``{model}_{dataset}_{language}_{task}.json``::

    {"model": "BAAI/AltCLIP", "dataset": "imagenet-cn", "language": "zh", "task": "zeroshot_classification",
     "metrics": {"acc1": 0.596, "acc5": 0.87, "mean_per_class_recall": 0.59},
     "samples": 50000, "skipped": {"unreadable image": 0}, "templates": 18, "date": "2026-11-23", "altclip": "0.1.0"}

``task`` is ``zeroshot_classification`` (metrics ``acc1``, ``acc5``, ``mean_per_class_recall``) or
``zeroshot_retrieval`` (``image_retrieval_recall@{1,5,10}``: a caption finds its image; ``text_retrieval_recall@
{1,5,10}``: an image finds any of its captions; ``mean_recall``: the mean of the six, as Flickr30k-CN reports it).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from altclip.files import IMAGE_SUFFIXES


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy and the mean over classes of per-class recall, from (N, C) scores."""
    order = np.argsort(-scores, axis=1)
    top1 = order[:, 0] == labels
    top5 = (order[:, : min(5, scores.shape[1])] == labels[:, None]).any(axis=1)
    recalls = [top1[labels == c].mean() for c in np.unique(labels)]
    return {"acc1": float(top1.mean()), "acc5": float(top5.mean()), "mean_per_class_recall": float(np.mean(recalls))}


def retrieval_metrics(
    image_embeds: np.ndarray, text_embeds: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways (the CLIP paper's definition). ``text_image[t]`` is the image caption ``t`` describes."""
    similarity = text_embeds @ image_embeds.T  # (texts, images)
    # A caption finds its image: the image's rank among all images for that caption.
    target = similarity[np.arange(len(text_image)), text_image][:, None]
    image_rank = (similarity > target).sum(axis=1)
    # An image finds a caption: the best rank among its captions.
    by_image = similarity.T  # (images, texts)
    text_rank = np.full(len(image_embeds), len(text_embeds))
    for t, i in enumerate(text_image):
        text_rank[i] = min(text_rank[i], int((by_image[i] > by_image[i, t]).sum()))
    described = np.unique(text_image)
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float((image_rank < k).mean())
        metrics[f"text_retrieval_recall@{k}"] = float((text_rank[described] < k).mean())
    metrics["mean_recall"] = float(np.mean(list(metrics.values())))
    return metrics


def zero_shot_classification(
    embedder, dataset: str | Path, *, classnames: dict[str, str] | None = None, templates: Any = "auto"
) -> dict[str, Any]:
    """An image-folder dataset (one folder per class) classified against its class names in prompt templates."""
    from altclip.inference import zero_shot_classifier
    from altclip.templates import TEMPLATES, guess_language, templates_for

    root = Path(dataset)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class folders")
    names = [(classnames or {}).get(c, c) for c in classes]
    paths, labels = [], []
    for label, c in enumerate(classes):
        for path in sorted((root / c).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    if templates == "auto":
        chosen = [list(TEMPLATES[guess_language(n)]) for n in names]
    elif templates in (None, "none"):
        chosen = ["{}"]  # the class names alone
    elif isinstance(templates, str):
        chosen = list(templates_for(templates))
    else:
        chosen = list(templates)
    skipped: Counter = Counter()
    image_embeds, kept, failed = embedder.embed_readable(paths)
    skipped["unreadable image"] += len(failed)
    classifier = zero_shot_classifier(embedder.model, embedder.processor, names, chosen).cpu().numpy()
    metrics = classification_metrics(image_embeds @ classifier.T, np.array(labels)[kept])
    count = len(chosen[0]) if chosen and isinstance(chosen[0], list) else len(chosen)
    return {
        "task": "zeroshot_classification",
        "metrics": metrics,
        "samples": len(kept),
        "classes": len(classes),
        "skipped": dict(skipped),
        "templates": count,
    }


def zero_shot_retrieval(embedder, captions: str | Path, image_root: str | None = None) -> dict[str, Any]:
    """Retrieval over a captions file (CSV or JSONL of image and caption; several captions may share an image)."""
    from altclip.train.data import read_pairs

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
