"""Our evaluation metrics against CLIP_benchmark's own code (the clip-benchmark package, ``clip_benchmark.metrics``):
its ``evaluate`` functions run on the same embeddings, fed through a stand-in model whose encoders look the
embeddings up, and every metric must come out identical, on embeddings with ties, with fewer than 5 classes and
with images no caption describes."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_classification as cb_classification
from clip_benchmark.metrics import zeroshot_retrieval as cb_retrieval

from altclip.evaluate import classification_metrics, retrieval_metrics


class LookUp:
    """A CLIP-like model for CLIP_benchmark: "images" and "tokens" are row indices into fixed embeddings."""

    def __init__(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor):
        self.image_embeds, self.text_embeds = image_embeds, text_embeds

    def encode_image(self, indices: torch.Tensor) -> torch.Tensor:
        return self.image_embeds[indices]

    def encode_text(self, indices: torch.Tensor) -> torch.Tensor:
        return self.text_embeds[indices]


def tokenize(texts: list[str]) -> torch.Tensor:
    """Texts are named by their row: "17" is text_embeds[17]."""
    return torch.tensor([int(t) for t in texts], dtype=torch.long)


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows normalised as CLIP_benchmark normalises what the encoders return (row by row, so batching does not
    change a bit): the vectors our metrics get are those CLIP_benchmark scores."""
    return F.normalize(x.float(), dim=-1)


def coarse(rng: np.random.Generator, n: int, dim: int = 4, levels: int = 3) -> torch.Tensor:
    """Random vectors on a coarse grid: many exactly equal scores, hence ties."""
    return torch.tensor(rng.integers(-levels, levels + 1, size=(n, dim)), dtype=torch.float32) + 0.01


def assert_identical(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for key, value in theirs.items():
        assert key in ours, key
        if math.isnan(value):
            assert math.isnan(ours[key]), (key, ours[key])
        else:
            assert ours[key] == value, (key, ours[key], value)


# --- retrieval ----------------------------------------------------------------------------------------------------


def clip_benchmark_retrieval(images: torch.Tensor, texts: torch.Tensor, captions: list[list[int]], batch: int, ks):
    """CLIP_benchmark's zero-shot retrieval: ``captions[i]`` are the text rows describing image ``i`` (possibly
    none); batches of ``batch`` images, each with its list of captions, as its dataloaders give them."""
    loader = [
        (torch.arange(start, min(start + batch, len(images))), [[str(t) for t in captions[i]] for i in
         range(start, min(start + batch, len(images)))])
        for start in range(0, len(images), batch)
    ]  # fmt: skip
    return cb_retrieval.evaluate(LookUp(images, texts), loader, tokenize, "cpu", amp=False, recall_k_list=list(ks))


def ours_retrieval(images: torch.Tensor, texts: torch.Tensor, captions: list[list[int]], ks):
    """Our metrics, with the texts in the order CLIP_benchmark embeds them (image by image)."""
    order = [t for caps in captions for t in caps]
    text_image = np.array([i for i, caps in enumerate(captions) for _ in caps])
    return retrieval_metrics(unit(images).numpy(), unit(texts[order]).numpy(), text_image, ks=ks)


def test_a_collapsed_image_tower_scores_about_one_in_n():
    """Every image embedding equal: CLIP_benchmark finds a caption's image at R@1 only when topk happens to pick
    it (about 1/12 here), where counting ties as hits gave 1.0."""
    rng = np.random.default_rng(0)
    images = torch.ones(12, 8)
    texts = torch.tensor(rng.normal(size=(24, 8)), dtype=torch.float32)
    captions = [[2 * i, 2 * i + 1] for i in range(12)]
    theirs = clip_benchmark_retrieval(images, texts, captions, batch=5, ks=(1, 5, 10))
    ours = ours_retrieval(images, texts, captions, ks=(1, 5, 10))
    assert_identical(ours, theirs)
    assert ours["image_retrieval_recall@1"] < 0.2


def test_images_without_captions_are_misses():
    rng = np.random.default_rng(1)
    images = torch.tensor(rng.normal(size=(14, 8)), dtype=torch.float32)
    texts = images[[0, 0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]] + 0.01  # captions close to their images: all found
    captions = [[0, 1], [2], [3], [4], [], [5], [6], [7], [8], [9], [10], [11], [], []]  # images 4, 12, 13: none
    theirs = clip_benchmark_retrieval(images, texts, captions, batch=4, ks=(1, 5, 10))
    ours = ours_retrieval(images, texts, captions, ks=(1, 5, 10))
    assert_identical(ours, theirs)
    assert ours["text_retrieval_recall@10"] == pytest.approx(11 / 14)  # the 3 uncaptioned images are misses


@pytest.mark.parametrize("seed", range(6))
def test_retrieval_with_ties_matches_clip_benchmark(seed):
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(10, 40))
    images = coarse(rng, n_images)
    captions: list[list[int]] = [[] for _ in range(n_images)]
    texts, t = [], 0
    for i in range(n_images):
        for _ in range(int(rng.integers(0, 4))):  # 0 to 3 captions per image
            captions[i].append(t)
            t += 1
    texts = coarse(rng, t)
    theirs = clip_benchmark_retrieval(images, texts, captions, batch=int(rng.integers(3, 9)), ks=(1, 5, 10))
    assert_identical(ours_retrieval(images, texts, captions, ks=(1, 5, 10)), theirs)


# --- classification -----------------------------------------------------------------------------------------------


def float_of_size_one_arrays(value):
    """``float`` as NumPy < 2.4 let it convert a 1-element array. clip-benchmark 1.6.2's ``accuracy`` calls
    ``float()`` on a shape-(1,) array, which NumPy 2.4 refuses; shadowing the name in that module alone restores
    the conversion it was written against, and leaves its code as it is."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())
    return builtins.float(value)


@pytest.fixture(autouse=True)
def numpy_compat(monkeypatch):
    monkeypatch.setattr(cb_classification, "float", float_of_size_one_arrays, raising=False)


class Dataset:
    def __init__(self, classes: list[str]):
        self.classes = classes


class Loader(list):
    """Batches of (image rows, true classes), with ``dataset.classes`` as CLIP_benchmark reads them."""

    def __init__(self, batches, classes: list[str]):
        super().__init__(batches)
        self.dataset = Dataset(classes)


def compare_classification(images: torch.Tensor, class_embeds: torch.Tensor, target: torch.Tensor, batch: int = 4):
    """CLIP_benchmark's zero-shot classification (one template: the class embedding is the text embedding) against
    ours on the logits CLIP_benchmark computes."""
    classes = [str(c) for c in range(len(class_embeds))]
    loader = Loader(
        [(torch.arange(s, min(s + batch, len(images))), target[s : s + batch]) for s in range(0, len(images), batch)],
        classes,
    )
    model = LookUp(images, class_embeds)
    theirs = cb_classification.evaluate(model, loader, tokenize, classes, ["{c}"], "cpu", amp=False)
    classifier = cb_classification.zero_shot_classifier(model, tokenize, classes, ["{c}"], "cpu", amp=False)
    logits, true = cb_classification.run_classification(model, classifier, loader, "cpu", amp=False)
    ours = classification_metrics(logits.numpy(), true.numpy())
    assert_identical(ours, theirs)
    return ours


def test_acc5_is_nan_with_fewer_than_five_classes():
    rng = np.random.default_rng(2)
    ours = compare_classification(coarse(rng, 9), coarse(rng, 3), torch.tensor(rng.integers(0, 3, 9)))
    assert math.isnan(ours["acc5"])


def test_classification_ties_match_clip_benchmark():
    """Every image scores every class the same (a collapsed image tower), and two classes are the same text."""
    rng = np.random.default_rng(3)
    classes = coarse(rng, 7)
    classes[4] = classes[1]
    ours = compare_classification(torch.ones(10, 4), classes, torch.tensor(rng.integers(0, 7, 10)))
    assert ours["acc1"] < 0.5


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # scikit-learn, on a class never true
@pytest.mark.parametrize("seed", range(6))
def test_classification_matches_clip_benchmark(seed):
    rng = np.random.default_rng(10 + seed)
    n_classes, n = int(rng.integers(2, 12)), int(rng.integers(5, 40))
    target = torch.tensor(rng.integers(0, n_classes, n))
    compare_classification(coarse(rng, n), coarse(rng, n_classes), target, batch=int(rng.integers(2, 9)))
