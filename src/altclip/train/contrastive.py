"""Contrastive learning and fine-tuning (`altclip train contrastive`) on image-text pairs.

Symmetric InfoNCE with the model's ``logit_scale``. Negatives are gathered from every process with an
all-gather that keeps gradients, so each text is contrasted with every image of the global batch, and each
process's loss covers its own rows: the mean over processes is the full-batch loss. The image tower is frozen by
default, and then each image is embedded once, before training, and served from that cache.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from altclip.data.readers import TarMember, read_pairs
from altclip.modeling.model import AltCLIPModel
from altclip.processing import decoding
from altclip.processing.decode_pool import DecodePool, memory_budget
from altclip.processing.decoding import Preparation
from altclip.processing.image_processing import CLIPImageProcessor
from altclip.processing.processor import AltCLIPProcessor
from altclip.processing.tokenizer import XLMRobertaTokenizer
from altclip.train.loop import Distributed, TrainConfig, TrainData, Trainer, TrainingError, setup_device

MAX_LOGIT_SCALE = 4.6052  # ln(100), CLIP's cap on the temperature


class ContrastiveModel(nn.Module):
    """What is trained: the text tower and its projection, the logit scale, and the image tower if not frozen."""

    def __init__(self, model: AltCLIPModel, train_vision: bool):
        super().__init__()
        self.model = model.requires_grad_(True)
        if not train_vision:
            model.lock_image_tower()
        self.train_vision = train_vision

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text embeddings, image embeddings, logit scale); ``images`` are pixels, or cached embeddings when the
        image tower is frozen."""
        text = F.normalize(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask), dim=-1)
        if self.train_vision:
            images = F.normalize(self.model.get_image_features(pixel_values=images), dim=-1)
        return text, images, self.model.logit_scale.clamp(max=MAX_LOGIT_SCALE)

    def encoder_layers(self) -> list[nn.Module]:
        return self.model.encoder_layers()


def gather(x: torch.Tensor, d: Distributed) -> torch.Tensor:
    """All processes' rows, in rank order, keeping gradients (they flow back to the process that made them)."""
    if d.world == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def infonce(text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor, d: Distributed) -> torch.Tensor:
    """This process's share of the symmetric InfoNCE loss over the global batch."""
    all_text, all_image = gather(text, d), gather(image, d)
    labels = torch.arange(text.shape[0], device=text.device) + d.rank * text.shape[0]
    scale = logit_scale.exp()
    return (
        F.cross_entropy(scale * text @ all_image.t(), labels) + F.cross_entropy(scale * image @ all_text.t(), labels)
    ) / 2


def _prepare(preparation: Preparation, source: Path | TarMember) -> tuple[np.ndarray | None, str]:
    """The image's (H, W, 3) uint8 pixels, or None and why it cannot be used."""
    return decoding.prepare_or_reason(decoding.readable(source), preparation)


class Pairs(Dataset):
    """Sample ``i``: the caption of pair ``i`` and its image's pixels, decoded (trained image tower), or its index in
    the cache of image embeddings (frozen image tower: ``prepare`` is None)."""

    def __init__(self, pairs: list[tuple[Path | TarMember, str]], prepare=None):
        self.pairs, self.prepare = pairs, prepare

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray | int]:
        source, caption = self.pairs[i]
        if self.prepare is None:
            return caption, i
        array, reason = self.prepare(source)
        if array is None:  # it was readable before training started
            raise TrainingError(f"The image {source} can no longer be read ({reason}); training stopped")
        return caption, array


class PairBatch:
    """Collates samples of ``Pairs`` into CPU tensors: token ids and mask of the captions, and normalised pixels
    (or cache indices)."""

    def __init__(self, tokenizer: XLMRobertaTokenizer, max_length: int, image_processor: CLIPImageProcessor | None):
        self.tokenizer, self.max_length, self.image_processor = tokenizer, max_length, image_processor

    def __call__(self, samples: list[tuple[str, np.ndarray | int]]) -> dict[str, torch.Tensor]:
        captions, images = zip(*samples)
        tokens = self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        if self.image_processor is None:
            image_input = torch.tensor(images)
        else:
            image_input = torch.from_numpy(self.image_processor.normalize(np.stack(images)))
        return {"ids": tokens["input_ids"], "mask": tokens["attention_mask"], "images": image_input}


def contrastive(
    model_path: str,
    data: list[str],
    config: TrainConfig,
    *,
    image_root: str | None = None,
    train_vision: bool = False,
    max_length: int = 77,
    log=print,
) -> dict[str, Any]:
    device, dist_info = setup_device(config)
    model = AltCLIPModel.from_pretrained(model_path, device=device)
    processor = AltCLIPProcessor.from_pretrained(model_path)
    pairs, report = read_pairs(data, image_root)
    preparation = processor.image_processor.preparation

    # Decode every image once, before training: unreadable ones are dropped (and counted), so that every process
    # sees the same usable dataset and no batch fails later. With the image tower frozen, its embeddings are kept
    # (the image tower never runs again); otherwise images are decoded again when their batch comes.
    kept: list[tuple[Path | TarMember, str]] = []
    cache: list[torch.Tensor] = []
    pending: list[np.ndarray] = []
    budget = memory_budget(preparation.max_pixels, decoding.MAX_FILE_BYTES)
    with DecodePool(images=len(pairs), memory_bytes=budget) as pool:
        sources = (decoding.readable(source) for source, _ in pairs)
        prepared = pool.map(decoding.prepare_or_reason, sources, preparation, failed=lambda r: (None, r))
        for (source, caption), (_, (array, reason), _) in zip(pairs, prepared):
            if array is None:
                report.skip("unreadable image", f"{source} ({reason})")
                continue
            kept.append((source, caption))
            if not train_vision:
                pending.append(array)
                if len(pending) == 64:
                    cache.append(_embed(model, processor, pending))
                    pending = []
    if pending:
        cache.append(_embed(model, processor, pending))
    images = torch.cat(cache) if cache else None
    if dist_info.main:
        log(f"Image-text pairs: {report.summary()}")

    def to_device(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not train_vision:
            assert images is not None  # the cache of a dataset with images (Trainer refuses an empty one)
            b = {**b, "images": images[b["images"]]}
        return {k: v.to(device, non_blocking=True) for k, v in b.items()}

    train_data = TrainData(
        dataset=Pairs(kept, functools.partial(_prepare, preparation) if train_vision else None),
        collate=PairBatch(processor.tokenizer, max_length, processor.image_processor if train_vision else None),
        to_device=to_device,
        decodes=train_vision,
    )

    def loss(module: nn.Module, b: dict[str, torch.Tensor], d: Distributed) -> tuple[torch.Tensor, dict[str, float]]:
        text, image, logit_scale = module(b["ids"], b["mask"], b["images"])
        value = infonce(text.float(), image.float(), logit_scale.float(), d)
        return value, {"logit_scale": logit_scale.exp().item()}

    def save(module: ContrastiveModel, directory: Path) -> None:
        module.model.save_pretrained(directory)
        processor.save_pretrained(directory)
        (directory / "data_report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))

    trainer = Trainer(config, ContrastiveModel(model, train_vision), train_data, loss, save, dist_info, log=log)
    result = trainer.run()
    result["data"] = report.to_dict()
    return result


@torch.inference_mode()
def _embed(model: AltCLIPModel, processor: AltCLIPProcessor, arrays: list[np.ndarray]) -> torch.Tensor:
    pixels = torch.from_numpy(processor.image_processor.normalize(np.stack(arrays))).to(model.device, model.dtype)
    return F.normalize(model.get_image_features(pixel_values=pixels).float(), dim=-1).clone()
