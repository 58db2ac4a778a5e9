"""Batched embedding and zero-shot classifiers on top of a model and its processor.

The pipeline, the command line, the index, the service, training and evaluation all embed through these
functions, and ``Embedder`` is the object the applications hold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from altclip import zeroshot
from altclip.modeling.compiled import CompiledImageFeatures, should_compile
from altclip.modeling.model import AltCLIPModel
from altclip.processing import decoding
from altclip.processing.decode_pool import DecodePool, memory_budget
from altclip.processing.decoding import Preparation
from altclip.processing.processor import AltCLIPProcessor

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """The model gave NaN or infinite values: its weights hold some (a damaged checkpoint), or a half-precision
    dtype overflowed. Every embedding and score computed here is checked, so such values never reach a user as
    results."""


def check_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(
            f"The model gave NaN or infinite {what}: its weights hold such values (a damaged checkpoint?), or a "
            "half-precision dtype overflowed (float32 would not)"
        )
    return values


def logit_scale(model: AltCLIPModel) -> float:
    """The model's temperature, ``logit_scale.exp()``, checked to be finite."""
    return check_finite(model.logit_scale.detach().float().exp(), "temperature (logit_scale)").item()


@torch.inference_mode()
def embed_texts(
    model: AltCLIPModel,
    processor: AltCLIPProcessor,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    normalize: bool = True,
) -> torch.Tensor:
    """(N, projection_dim) float32 text embeddings on the model's device. Texts are batched by length, so
    little work goes into padding, and returned in the order given."""
    if not texts:
        raise ValueError("No texts given")
    encoded = processor.tokenizer(list(texts))["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = torch.empty(len(texts), model.config.projection_dim, device=model.device)
    pad = processor.tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
        ids = ids.to(model.device)
        out[chunk] = model.get_text_features(input_ids=ids, attention_mask=ids.ne(pad).long()).float()
    check_finite(out, "text embeddings")
    return F.normalize(out, dim=-1) if normalize else out


@torch.inference_mode()
def embed_images(
    model: AltCLIPModel,
    processor: AltCLIPProcessor,
    images: Sequence[Any],
    *,
    batch_size: int = 32,
    normalize: bool = True,
) -> torch.Tensor:
    """(N, projection_dim) float32 image embeddings on the model's device."""
    if not images:
        raise ValueError("No images given")
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pixels = np.stack([processor.image_processor.preprocess(im, index=start + i) for i, im in enumerate(batch)])
        out.append(embed_pixels(model, torch.from_numpy(pixels)))
    embeds = torch.cat(out)
    return F.normalize(embeds, dim=-1) if normalize else embeds


@torch.inference_mode()
def embed_pixels(model: AltCLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Unnormalised float32 image embeddings of preprocessed pixels."""
    pixel_values = pixel_values.to(model.device, model.dtype)
    return check_finite(model.get_image_features(pixel_values=pixel_values).float(), "image embeddings")


def zero_shot_classifier(
    model: AltCLIPModel,
    processor: AltCLIPProcessor,
    labels: Sequence[str],
    templates: zeroshot.Templates = None,
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """(labels, projection_dim) unit-norm classifier: each label written into its templates, embedded, the
    embeddings averaged and renormalised (a prompt ensemble). ``templates`` as ``altclip.zeroshot`` describes them
    (None, "none", "auto", a language code, a list, or one list per label); the default, None, is the pipeline's
    "This is a photo of {}.", as everywhere else."""
    prompts = zeroshot.label_prompts(labels, templates)
    embeds = embed_texts(model, processor, [p for ps in prompts for p in ps], batch_size=batch_size)
    return zeroshot.classifier_from_prompts(embeds, prompts)


def fast_features(model: AltCLIPModel, *, cuda_graphs: bool | None = None, compile_images: bool | None = None):
    """What computes a model's features (``get_text_features``, ``get_image_features``): the model itself, its image
    tower compiled for large half-precision batches, and CUDA graphs for small batches over either. None leaves the
    choice to the machine: graphs on CUDA, compiling where ``altclip.modeling.compiled.should_compile`` says it
    pays. Float32 on a CPU is always the model itself, the exact path."""
    if compile_images is None:
        compile_images = should_compile(model)
    if cuda_graphs is None:
        cuda_graphs = model.device.type == "cuda"
    features: Any = model
    if compile_images:
        features = CompiledImageFeatures(model)
    if cuda_graphs:
        from altclip.modeling.cuda_graphs import GraphedFeatures

        features = GraphedFeatures(features)
    return features


class Embedder:
    """A model and its processor turned into unit-norm float32 numpy embeddings: what the index, the command
    line and the server use. ``name`` identifies the model in an index (a Hub id or a checkpoint path).

    The engine is chosen by the machine unless told: on CUDA, small batches replay CUDA graphs (``cuda_graphs``, see
    ``altclip.modeling.cuda_graphs``), and in half precision large image batches run through ``torch.compile``
    (``compile_images``, see ``altclip.modeling.compiled``); float32 on any device is the exact, eager path. A batch that
    runs out of GPU memory is split in halves, and later batches stay at the size that fitted (logged), so no
    image or text is lost to it. Image files are decoded in a ``DecodePool`` of threads or processes: ``decode`` is its kind (``"auto"``: see
    ``altclip.processing.decode_pool.choose_kind``).
    """

    def __init__(
        self,
        model: AltCLIPModel,
        processor: AltCLIPProcessor,
        name: str,
        batch_size: int = 32,
        *,
        cuda_graphs: bool | None = None,
        compile_images: bool | None = None,
        decode: str = "auto",
    ):
        self.model = model.eval()
        self.decode = decode
        self.processor = processor
        self.name = name
        self.dim = model.config.projection_dim
        self.batch_size = batch_size
        self.features = fast_features(model, cuda_graphs=cuda_graphs, compile_images=compile_images)

    def prepare(self, image: Any) -> np.ndarray:
        """Decode, resize and crop one image to (H, W, 3) uint8; thread-safe, for decoding workers."""
        return self.processor.image_processor.prepare(image)

    @property
    def preparation(self) -> Preparation:
        """How image files become pixels for this model, as decoding processes take it."""
        return self.processor.image_processor.preparation

    def decode_pool(self, workers: int | None = None, images: int | None = None) -> DecodePool:
        """A pool to decode ``images`` image files in (``decode`` picks threads or processes), each worker process
        within the memory the largest admitted image needs."""
        budget = memory_budget(self.preparation.max_pixels, decoding.MAX_FILE_BYTES)
        return DecodePool(workers, self.decode, images=images, memory_bytes=budget)

    def embed_prepared(self, arrays: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings of (B, H, W, 3) uint8 images from ``prepare``; normalised on the model's device."""

        def embed(part: np.ndarray) -> np.ndarray:
            uint8 = torch.from_numpy(np.ascontiguousarray(part)).to(self.model.device)
            pixels = self.processor.image_processor.normalize_tensor(uint8)
            return F.normalize(embed_pixels(self.features, pixels), dim=-1).cpu().numpy()

        return self._in_memory(embed, arrays)

    def _in_memory(self, embed, items):
        """``embed(items)``, split in halves (recursively) when the GPU runs out of memory; a single item that does
        not fit raises. Later batches are made no larger than the size that fitted."""
        try:
            return embed(items)
        except torch.cuda.OutOfMemoryError:
            if len(items) <= 1:
                raise
            half = (len(items) + 1) // 2
            if self.batch_size > half:
                log.warning("Out of GPU memory at a batch of %d; continuing with batches of %d", len(items), half)
                self.batch_size = half
            torch.cuda.empty_cache()
            return np.concatenate([self._in_memory(embed, items[:half]), self._in_memory(embed, items[half:])])

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        return embed_images(self.features, self.processor, images, batch_size=self.batch_size).cpu().numpy()

    def embed_readable(
        self, sources: Sequence[Any], progress=None, workers: int | None = None
    ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """Embeddings of the images among ``sources`` (paths, URLs, bytes, or objects with ``read()``, which are read
        in this thread) that can be read, decoded in a ``decode_pool`` and embedded in batches; the indices of those
        images; and (index, reason) for the others."""
        out, batch, kept, failed = [], [], [], []
        with self.decode_pool(workers, len(sources)) as pool:
            readable = (decoding.readable(source) for source in sources)
            results = pool.map(decoding.prepare_or_reason, readable, self.preparation, failed=lambda r: (None, r))
            for index, (_, (array, reason), _) in enumerate(results):
                if array is None:
                    failed.append((index, reason))
                else:
                    kept.append(index)
                    batch.append(array)
                    if len(batch) == self.batch_size:
                        out.append(self.embed_prepared(np.stack(batch)))
                        batch = []
                if progress:
                    progress(index + 1, len(sources))
        if batch:
            out.append(self.embed_prepared(np.stack(batch)))
        return (np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)), kept, failed

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        def embed(part: Sequence[str]) -> np.ndarray:
            return embed_texts(self.features, self.processor, part, batch_size=self.batch_size).cpu().numpy()

        return self._in_memory(embed, list(texts))

    @property
    def logit_scale(self) -> float:
        """The model's temperature, ``logit_scale.exp()``."""
        return logit_scale(self.model)

    def zero_shot_classifier(self, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        """(labels, D) unit-norm classifier for the prompts of each label (``zeroshot.label_prompts``)."""
        embeds = torch.from_numpy(self.embed_texts([p for ps in prompts for p in ps]))
        return zeroshot.classifier_from_prompts(embeds, prompts).numpy()

    def scores(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> dict[str, np.ndarray]:
        """For (images, D) and (texts, D) embeddings: cosine similarities, ``logits_per_image`` (scaled by the
        model's temperature) and, per image, the softmax over the texts, as ``AltCLIPModel.forward`` gives them
        (``zeroshot.scores``)."""
        result = zeroshot.scores(torch.from_numpy(image_embeds), torch.from_numpy(text_embeds), self.logit_scale)
        return {"cosine": result.cosine.numpy(), "logits_per_image": result.logits_per_image.numpy(),
                "probs": result.probs.numpy()}  # fmt: skip
