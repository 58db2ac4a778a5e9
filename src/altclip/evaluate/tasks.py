"""Evaluation (`altclip eval`): zero-shot classification and image-text retrieval, written as CLIP_benchmark does:
one JSON file per model x dataset x language x task.

Result file ``{dataset}_{pretrained}_{model}_{language}_{task}.json``, in CLIP_benchmark's layout (its ``build``
command tabulates these files beside its own)::

    {"dataset": "imagenet-cn", "model": "AltCLIP", "pretrained": "BAAI/AltCLIP", "task": "zeroshot_classification",
     "metrics": {"acc1": 0.596, "acc5": 0.87, "mean_per_class_recall": 0.59}, "language": "zh",
     "samples": 50000, "skipped": {"unreadable image": 0}, "templates": 18, "date": "2026-11-23", "altclip": "0.1.0"}

The metrics are CLIP_benchmark's, as ``metrics.py`` defines them (ties, ``acc5`` NaN under 5 classes, images
without captions as misses). ``task`` is ``zeroshot_classification`` (``acc1``, ``acc5``, ``mean_per_class_recall``) or
``zeroshot_retrieval`` (``image_retrieval_recall@{1,5,10}``: a caption finds its image; ``text_retrieval_recall@
{1,5,10}``: an image finds any of its captions; ``mean_recall``: the mean of the six, as Flickr30k-CN reports it).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altclip import zeroshot
from altclip.data.readers import TarMember, WebDatasetFolder, read_labeled_images, read_pairs
from altclip.evaluate.metrics import classification_metrics, retrieval_metrics
from altclip.inference import Embedder
from altclip.utils.files import is_image_name


def zero_shot_classification(
    embedder: Embedder,
    dataset: str | Path,
    *,
    classnames: dict[str, str] | None = None,
    templates: zeroshot.Templates = "auto",
    split: str = "test",
) -> dict[str, Any]:
    """A classification dataset classified against its class names in prompt templates (``templates`` as
    ``altclip.zeroshot`` describes them): an image folder with one sub-folder per class (the folder names are the
    class names), or a CLIP_benchmark WebDataset folder (``data.readers.WebDatasetFolder``, its ``split``).
    ``classnames`` renames classes. Raises ``ValueError`` for a dataset without classes or usable images."""
    webdataset = WebDatasetFolder.find(dataset, split)
    images: Sequence[Path | TarMember]
    if webdataset is not None:
        images, labels, classes, skipped = _webdataset_classes(webdataset)
    else:
        images, labels, classes, skipped = _folder_classes(Path(dataset))
    names = [(classnames or {}).get(c, c) for c in classes]
    scores, kept, failed = _zero_shot(embedder, images, names, templates)
    skipped["unreadable image"] = len(failed)
    if not kept:
        raise ValueError(f"{dataset}: none of its {len(images)} images could be used ({_reasons(skipped)})")
    return {
        "task": "zeroshot_classification",
        # On the logits, as CLIP_benchmark: probabilities can round distinct logits into ties.
        "metrics": classification_metrics(scores["logits_per_image"], np.array(labels)[kept]),
        "samples": len(kept),
        "classes": len(classes),
        "skipped": dict(skipped),
        "templates": len(zeroshot.label_prompts(names[:1], templates)[0]),
    }


def dataset_templates(dataset: str | Path, split: str = "test") -> list[str] | None:
    """The prompt templates a dataset brings (a CLIP_benchmark WebDataset folder's), or None."""
    webdataset = WebDatasetFolder.find(dataset, split)
    return webdataset.templates if webdataset is not None else None


def _folder_classes(root: Path) -> tuple[list[Path], list[int], list[str], Counter]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(
            f"{root} has no class folders (one sub-folder of images per class), nor WebDataset shards (test/*.tar)"
        )
    paths, labels = [], []
    for label, c in enumerate(classes):
        for path in sorted((root / c).iterdir()):
            if is_image_name(path.name):
                paths.append(path)
                labels.append(label)
    return paths, labels, classes, Counter()


def _webdataset_classes(dataset: WebDatasetFolder) -> tuple[list[TarMember], list[int], list[str], Counter]:
    if dataset.kind != "classification":
        raise ValueError(f"{dataset.root} is a {dataset.kind} dataset (dataset_type.txt), not a classification one")
    classes = dataset.classnames
    if not classes:
        raise ValueError(f"{dataset.root} has no classnames.txt (one class name per line, in label order)")
    items, report = read_labeled_images(dataset.shards, len(classes))
    return [image for image, _ in items], [label for _, label in items], classes, Counter(report.skipped)


def _reasons(skipped: Counter | dict) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in skipped.items() if count) or "none found"


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


def zero_shot_retrieval(
    embedder, captions: str | Path, image_root: str | None = None, *, split: str = "test"
) -> dict[str, Any]:
    """Retrieval over image-caption pairs: a CSV or JSONL of image and caption (several captions may share an
    image), a WebDataset ``.tar``, or a CLIP_benchmark WebDataset folder (its ``split``; each line of a sample's
    ``.txt`` is a caption). Raises ``ValueError`` when no pair can be used."""
    webdataset = WebDatasetFolder.find(captions, split) if Path(captions).is_dir() else None
    if Path(captions).is_dir() and webdataset is None:
        raise ValueError(f"{captions} is a folder without WebDataset shards ({split}/*.tar)")
    sources = [str(p) for p in webdataset.shards] if webdataset else [str(captions)]
    pairs, report = read_pairs(sources, image_root)
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
    if not texts:
        raise ValueError(f"{captions}: no image-caption pair could be used ({_reasons(skipped)})")
    text_embeds = embedder.embed_texts(texts)
    metrics = retrieval_metrics(image_embeds, text_embeds, np.array(text_image))
    return {
        "task": "zeroshot_retrieval",
        "metrics": metrics,
        "samples": len(texts),
        "images": len(kept),
        "skipped": dict(skipped),
    }


ARCHITECTURE = "AltCLIP"  # the result's "model"; which weights is "pretrained", as in CLIP_benchmark's results


def pretrained_name(checkpoint: str) -> str:
    """How a result names a checkpoint: a Hub id as it is; a local folder by its path from the current folder when
    it lies under it, else by its own name, so that no absolute path of the user's is written into results."""
    path = Path(checkpoint)
    if not path.exists():
        return checkpoint
    path, here = path.resolve(), Path.cwd().resolve()
    return path.relative_to(here).as_posix() if path != here and path.is_relative_to(here) else path.name


def write_result(output: str | Path, model: str, dataset: str, language: str, result: dict[str, Any]) -> Path:
    """Writes ``result`` (of a task above) for checkpoint ``model`` as CLIP_benchmark writes its results, so that
    ``clip_benchmark build`` tabulates it: ``dataset``, ``model``, ``pretrained``, ``task``, ``metrics`` and
    ``language``, then what altclip adds; the file is named as CLIP_benchmark names it,
    ``{dataset}_{pretrained}_{model}_{language}_{task}.json``. Returns the file's path."""
    from altclip import __version__

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_") or "unnamed"

    # Names from the file system or the command line may hold bytes that are not UTF-8 (surrogate escapes): the
    # file holds U+FFFD for them, as the JSON it is must be UTF-8.
    dataset, pretrained, language = (_utf8(text) for text in (dataset, pretrained_name(model), language))
    name = "_".join(slug(part) for part in (dataset, pretrained, ARCHITECTURE, language)) + f"_{result['task']}"
    path = Path(output) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "dataset": dataset,
        "model": ARCHITECTURE,
        "pretrained": pretrained,
        "task": result["task"],
        "metrics": result["metrics"],
        "language": language,
        **{key: value for key, value in result.items() if key not in ("task", "metrics")},
        "date": time.strftime("%Y-%m-%d"),
        "altclip": __version__,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # whole or not at all: a killed run, or two at once
    try:
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _utf8(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
