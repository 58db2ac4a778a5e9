"""Teacher learning (`altclip train distill`): the multilingual student learns to reproduce CLIP's text states.

The teacher, CLIP's text tower, reads the English sentence; the student, AltCLIP's text tower, reads the English
sentence and its translation. The loss is the mean squared error (and optionally one minus the cosine similarity)
between the student's CLS ``transformation`` output and the teacher's pooled end-of-text state, for both. When the
teacher is a full CLIP checkpoint, the result is a complete AltCLIP model: the student with the teacher's
``text_projection``, image tower and ``visual_projection``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from altclip.data.readers import read_parallel
from altclip.loading.hub import resolve_file
from altclip.modeling.clip_text import CLIPTextTower, CLIPTokenizer, assemble_altclip
from altclip.modeling.config import read_config_file
from altclip.modeling.model import AltCLIPModel
from altclip.modeling.text import AltCLIPTextModel
from altclip.processing.image_processing import CLIPImageProcessor
from altclip.processing.tokenizer import XLMRobertaTokenizer
from altclip.train.loop import Distributed, TrainConfig, TrainData, Trainer, TrainingError, setup_device


class Student(nn.Module):
    """The trained module: the text tower's pooled (CLS ``transformation``) output, through ``forward`` so that
    DDP sees the call."""

    def __init__(self, text: AltCLIPTextModel):
        super().__init__()
        self.text = text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text.pooled(input_ids, attention_mask)

    def encoder_layers(self) -> nn.ModuleList:
        return self.text.encoder_layers()


def load_student(student: str, project_dim: int) -> AltCLIPTextModel:
    """A registered shape (random weights), an AltCLIP checkpoint (its text tower), or an XLM-R checkpoint."""
    from altclip.loading.registry import KNOWN_MODELS, known_model

    if student in KNOWN_MODELS and not Path(student).exists():
        import dataclasses

        config = dataclasses.replace(known_model(student).config().text_config, project_dim=project_dim)
        return AltCLIPTextModel(config)
    model_type = read_config_file(resolve_file(student, "config.json")).get("model_type")
    if model_type in ("xlm-roberta", "roberta"):
        return AltCLIPTextModel.from_xlm_roberta(student, project_dim)
    model = AltCLIPTextModel.from_pretrained(student)
    if model.config.project_dim != project_dim:
        raise TrainingError(
            f"The student {student} maps to {model.config.project_dim} dimensions but the teacher's text states have "
            f"{project_dim}; start from an XLM-R checkpoint or a registered shape instead"
        )
    return model


def load_student_tokenizer(student: str, tokenizer: str | None, vocab_size: int) -> XLMRobertaTokenizer:
    """``tokenizer``, else the student's own. A registered shape that was never released (tiny) has none, and gets
    the small tokenizer random checkpoints of it are written with."""
    from altclip.loading.random_checkpoints import random_tokenizer
    from altclip.loading.registry import KNOWN_MODELS

    if tokenizer is None and student in KNOWN_MODELS and not KNOWN_MODELS[student].released:
        if not Path(student).exists():
            return random_tokenizer(vocab_size)
    return XLMRobertaTokenizer.from_pretrained(tokenizer or student)


def distill(
    teacher: str,
    student: str,
    corpus: list[str],
    config: TrainConfig,
    *,
    tokenizer: str | None = None,
    cosine_weight: float = 0.0,
    max_length: int = 128,
    log=print,
) -> dict[str, Any]:
    device, dist_info = setup_device(config)
    teacher_model = CLIPTextTower.from_pretrained(teacher, device=device).requires_grad_(False)
    teacher_tokenizer = CLIPTokenizer.from_pretrained(teacher)
    torch.manual_seed(config.seed)  # the student's random initialisation, when it has one
    text = load_student(student, teacher_model.config.hidden_size).to(device)
    student_tokenizer = load_student_tokenizer(student, tokenizer, text.config.vocab_size)
    pairs, report = read_parallel(corpus)
    if dist_info.main:
        log(f"Parallel corpus: {report.summary()}")

    def collate(samples: list[tuple[str, str | None]]) -> dict[str, torch.Tensor]:
        english = [en for en, _ in samples]
        other = [xx for _, xx in samples if xx is not None]
        teacher_ids, teacher_mask = teacher_tokenizer(english)
        tokens = student_tokenizer(
            english + other, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {
            "teacher_ids": teacher_ids,
            "teacher_mask": teacher_mask,
            "ids": tokens["input_ids"],
            "mask": tokens["attention_mask"],
            "has_other": torch.tensor([xx is not None for _, xx in samples]),
        }

    def teacher_targets(b: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            target = teacher_model(b["teacher_ids"].to(device), b["teacher_mask"].to(device))[1]
        return target.clone()  # outside inference mode: a tensor the loss can use

    def to_device(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "ids": b["ids"].to(device),
            "mask": b["mask"].to(device),
            "target": teacher_targets(b),
            "has_other": b["has_other"].to(device),
        }

    def loss(model: nn.Module, b: dict[str, torch.Tensor], _: Distributed) -> tuple[torch.Tensor, dict[str, float]]:
        predicted = model(b["ids"], b["mask"]).float()
        n = b["target"].shape[0]
        english, other = predicted[:n], predicted[n:]
        mse_en = F.mse_loss(english, b["target"])
        total, metrics = mse_en, {"mse_en": mse_en.item()}
        if other.shape[0]:
            mse_xx = F.mse_loss(other, b["target"][b["has_other"]])
            total = total + mse_xx
            metrics["mse_xx"] = mse_xx.item()
        if cosine_weight:
            cos = F.cosine_similarity(predicted, torch.cat([b["target"], b["target"][b["has_other"]]]), dim=-1).mean()
            total = total + cosine_weight * (1 - cos)
            metrics["cosine"] = cos.item()
        return total, metrics

    def save(model: Student, directory: Path) -> None:
        trained = model.text
        full = read_config_file(resolve_file(teacher, "config.json")).get("model_type") == "clip"
        result = assemble_altclip(trained, teacher) if full else trained
        result.save_pretrained(directory)
        student_tokenizer.save_pretrained(directory)
        if isinstance(result, AltCLIPModel):  # full: the teacher's image side beside the student
            preprocessor = resolve_file(teacher, "preprocessor_config.json", required=False)
            if preprocessor is not None:
                shutil.copy(preprocessor, directory / "preprocessor_config.json")
            else:  # CLIP's preprocessing at the image tower's resolution
                size = result.config.vision_config.image_size
                CLIPImageProcessor(
                    size={"shortest_edge": size}, crop_size={"height": size, "width": size}
                ).save_pretrained(directory)
        (directory / "data_report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))

    train_data = TrainData(dataset=pairs, collate=collate, to_device=to_device)
    trainer = Trainer(config, Student(text), train_data, loss, save, dist_info, log=log)
    result = trainer.run()
    result["data"] = report.to_dict()
    return result
