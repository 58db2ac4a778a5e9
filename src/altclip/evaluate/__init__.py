"""Evaluation (``altclip eval``): zero-shot classification and image-text retrieval, each result written as one
JSON file per model x dataset x language x task, as CLIP_benchmark writes them.

    tasks.py     the two tasks over an Embedder, and writing their results
    metrics.py   accuracy, per-class recall and retrieval recall@k
"""

from altclip.evaluate.metrics import classification_metrics, retrieval_metrics
from altclip.evaluate.tasks import (
    dataset_templates,
    write_result,
    zero_shot_classification,
    zero_shot_retrieval,
    zero_shot_scores,
)

__all__ = [
    "classification_metrics",
    "dataset_templates",
    "retrieval_metrics",
    "write_result",
    "zero_shot_classification",
    "zero_shot_retrieval",
    "zero_shot_scores",
]
