"""The metrics of CLIP_benchmark: top-k accuracy and mean per-class recall, and retrieval recall@k both ways."""

from __future__ import annotations

import numpy as np


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
