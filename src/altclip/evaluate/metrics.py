"""The metrics of CLIP_benchmark (``clip_benchmark.metrics``), defined as its code defines them, so that a result of
``altclip eval`` means what the same number from CLIP_benchmark means:

- **Top-k** is ``torch.topk`` of each row, as CLIP_benchmark takes it. A tied score is a hit only when ``topk``
  picks it, so a collapsed tower (every score equal) scores about 1/N, not 1.
- **acc5** is NaN when there are fewer than 5 classes (CLIP_benchmark reports NaN there; top-5 of 3 classes would
  always be 1).
- **mean_per_class_recall** is the mean over the classes present of the recall of the arg-max prediction
  (scikit-learn's ``balanced_accuracy_score``, which CLIP_benchmark calls).
- **Retrieval** recall@k is, per query, whether any of its positives is in the top k; text retrieval averages over
  every image, so an image without a caption counts as a miss.

Where CLIP_benchmark fails (k larger than the number of candidates, which ``torch.topk`` refuses), every candidate
is in the top k.
"""

from __future__ import annotations

import numpy as np
import torch


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy and mean per-class recall from (N, C) scores (logits, or anything ordered the same
    way) and the (N,) true classes."""
    logits = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    target = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    classes = logits.shape[1]
    hits = _top_k(logits, 5 if classes >= 5 else 1) == target[:, None]  # (N, k): at most one hit per row
    n = len(target)
    return {
        "acc1": int(hits[:, 0].sum()) / n,
        "acc5": int(hits.sum()) / n if classes >= 5 else float("nan"),
        "mean_per_class_recall": _mean_per_class_recall(logits.argmax(dim=1).numpy(), target.numpy()),
    }


def retrieval_metrics(
    image_embeds: np.ndarray, text_embeds: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways from unit-norm embeddings. ``text_image[t]`` is the image caption ``t`` describes; images
    no caption describes count as misses of text retrieval. ``mean_recall`` is the mean of the recalls (not a
    CLIP_benchmark metric: the one Flickr30k-CN reports)."""
    scores = (
        torch.as_tensor(np.asarray(text_embeds, np.float32)) @ torch.as_tensor(np.asarray(image_embeds, np.float32)).T
    )
    positive = torch.zeros(scores.shape, dtype=torch.bool)  # (texts, images)
    positive[torch.arange(len(text_image)), torch.as_tensor(np.asarray(text_image, np.int64))] = True
    metrics = {}
    for k in ks:
        # A caption finds its image; an image finds any of its captions.
        metrics[f"image_retrieval_recall@{k}"] = _found_at_k(scores, positive, k)
        metrics[f"text_retrieval_recall@{k}"] = _found_at_k(scores.T, positive.T, k)
    metrics["mean_recall"] = float(np.mean(list(metrics.values())))
    return metrics


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of each row's k highest scores, highest first, ties ordered as ``torch.topk`` orders them."""
    return torch.topk(scores, min(k, scores.shape[1]), dim=1, largest=True, sorted=True).indices


def _found_at_k(scores: torch.Tensor, positive: torch.Tensor, k: int) -> float:
    """The fraction of rows (queries) with a positive among their top k candidates."""
    found = positive.gather(1, _top_k(scores, k)).any(dim=1)
    return found.float().mean().item()


def _mean_per_class_recall(predicted: np.ndarray, target: np.ndarray) -> float:
    """Balanced accuracy: per class present in ``target``, the fraction of its items predicted as it; their mean."""
    classes = np.unique(target)
    correct = np.array([np.sum((target == c) & (predicted == c)) for c in classes])
    total = np.array([np.sum(target == c) for c in classes])
    return float(np.mean(correct / total))
