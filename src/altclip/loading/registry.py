"""The checkpoints we know and their shapes (``random_checkpoints`` writes random-weight checkpoints of them), and
the model every entry point loads when not told which."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from altclip.modeling.config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig

DEFAULT_MODEL = "BAAI/AltCLIP"  # what every entry point loads when not told which model

_XLMR_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_VIT_L14 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=14)
_VIT_H14 = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120, patch_size=14)
# The image tower of the tiny random shapes (the AltCLIP student and the CLIP teacher).
_VIT_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=32)


@dataclass(frozen=True)
class KnownModel:
    name: str  # Hugging Face Hub id, or a shape name for random checkpoints ("tiny")
    description: str
    languages: tuple[str, ...]  # ISO 639-1 codes of the languages it was trained on
    text: dict
    vision: dict
    projection_dim: int
    released: bool = True  # False for shapes that exist only as random checkpoints

    def config(self) -> AltCLIPConfig:
        return AltCLIPConfig(
            text_config=AltCLIPTextConfig(**self.text),
            vision_config=AltCLIPVisionConfig(**self.vision),
            projection_dim=self.projection_dim,
        )


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            "BAAI/AltCLIP",
            "Bilingual (English, Chinese) AltCLIP: XLM-R large text tower, CLIP ViT-L/14 image tower",
            ("en", "zh"),
            text=dict(_XLMR_LARGE, project_dim=768),
            vision=dict(_VIT_L14),
            projection_dim=768,
        ),
        KnownModel(
            "BAAI/AltCLIP-m9",
            "AltCLIP in 9 languages; same shape as BAAI/AltCLIP",
            ("en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it"),
            text=dict(_XLMR_LARGE, project_dim=768),
            vision=dict(_VIT_L14),
            projection_dim=768,
        ),
        KnownModel(
            "BAAI/AltCLIP-m18",
            "AltCLIP in 18 languages, with an OpenCLIP ViT-H/14 image tower",
            (
                "en",
                "zh",
                "ja",
                "th",
                "ko",
                "hi",
                "uk",
                "ar",
                "tr",
                "vi",
                "pl",
                "nl",
                "pt",
                "it",
                "es",
                "de",
                "fr",
                "ru",
            ),
            text=dict(_XLMR_LARGE, project_dim=1024),
            vision=dict(_VIT_H14),
            projection_dim=1024,
        ),
        KnownModel(
            "tiny",
            "A tiny random model of the AltCLIP architecture, for tests and demos without downloads",
            ("en", "zh"),
            text=dict(
                vocab_size=2000,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=514,
                project_dim=24,
            ),
            vision=dict(_VIT_TINY, image_size=224),
            projection_dim=16,
            released=False,
        ),
    )
}


@dataclass(frozen=True)
class TeacherShape:
    """The shape of a CLIP checkpoint (Hugging Face ``CLIPModel``), a teacher for ``altclip train distill``: random
    ones let teacher learning run without downloads."""

    name: str
    description: str
    text: dict  # CLIP text tower: hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size
    vision: dict
    projection_dim: int
    released: bool = True  # False for shapes that exist only as random checkpoints


KNOWN_TEACHERS: dict[str, TeacherShape] = {
    t.name: t
    for t in (
        TeacherShape(
            "openai/clip-vit-large-patch14",
            "CLIP ViT-L/14: the teacher of BAAI/AltCLIP, and its image tower",
            text=dict(
                hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=49408
            ),
            vision=dict(_VIT_L14),
            projection_dim=768,
        ),  # fmt: skip
        TeacherShape(
            "clip-tiny",
            "A tiny random CLIP, to try teacher learning without downloads (with --student tiny)",
            text=dict(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=1000
            ),
            vision=dict(_VIT_TINY, image_size=224),
            projection_dim=16,
            released=False,
        ),  # fmt: skip
    )
}


def known_model(name: str) -> KnownModel:
    if name not in KNOWN_MODELS:
        raise KeyError(f"Unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    return KNOWN_MODELS[name]


RANDOM_MARKER = "RANDOM_WEIGHTS.txt"


def is_random(path: str | os.PathLike) -> bool:
    """Whether a checkpoint folder was written by ``write_random_checkpoint``."""
    return (Path(path) / RANDOM_MARKER).is_file()
