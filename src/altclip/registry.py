"""The checkpoints we know, their shapes, and a writer of random-weight checkpoints of any of those shapes.

Random checkpoints let benchmarks, tests and demos run where no weights can be downloaded: they have the real
architecture and size, and they load through exactly the same code as the released weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from altclip.config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig

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


def random_model(shape: str | AltCLIPConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """An ``AltCLIPModel`` with random weights of a registered shape (or of a config), initialised as transformers
    initialises it, reproducibly from ``seed``."""
    from altclip.model import AltCLIPModel

    config = shape if isinstance(shape, AltCLIPConfig) else known_model(shape).config()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AltCLIPModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(dtype).eval()


def write_random_checkpoint(
    shape: str | AltCLIPConfig, path: str | os.PathLike, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Writes a complete random-weight checkpoint folder of a registered shape (or a config): config.json,
    model.safetensors, a tokenizer trained on the package's multilingual captions, and preprocessor_config.json.
    It loads with ``altclip.load`` and with transformers like a released checkpoint. A CLIP teacher shape
    (``KNOWN_TEACHERS``) gives a CLIP checkpoint instead, as ``write_random_teacher`` writes it."""
    if isinstance(shape, str) and shape in KNOWN_TEACHERS:
        return write_random_teacher(shape, path, seed=seed, dtype=dtype)
    model = random_model(shape, seed=seed, dtype=dtype)
    path = model.save_pretrained(path)
    random_tokenizer(model.config.text_config.vocab_size).save_pretrained(path)
    _write_image_processor(path, model.config.vision_config.image_size)
    _mark_random(path)
    return path


def write_random_teacher(
    shape: str, path: str | os.PathLike, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Writes a random CLIP checkpoint (transformers' ``CLIPModel`` layout) of a teacher shape: config.json,
    model.safetensors, a byte-level BPE tokenizer (vocab.json, merges.txt) trained on the package's captions, and
    preprocessor_config.json. transformers loads it, and ``altclip train distill --teacher`` reads it."""
    import json

    from altclip.checkpoint import MODEL_WEIGHTS, save_tensors, to_checkpoint
    from altclip.clip_text import CLIP_TEXT_WEIGHTS, CLIPTextConfig, CLIPTextTower, train_clip_tokenizer
    from altclip.config import AltCLIPVisionConfig
    from altclip.tokenizer import caption_corpus

    teacher = KNOWN_TEACHERS[shape]
    path = Path(path)
    tokenizer = train_clip_tokenizer([c for _, c in caption_corpus()], min(teacher.text["vocab_size"], 4000), path)
    specials = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    text_config = CLIPTextConfig(
        **teacher.text, eos_token_id=tokenizer.eos_token_id, projection_dim=teacher.projection_dim
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text = CLIPTextTower(text_config)
        for module in text.modules():  # embeddings as CLIP initialises them, not N(0, 1)
            if isinstance(module, torch.nn.Embedding):
                torch.nn.init.normal_(module.weight, std=0.02)
        # The image side (tower, projection, logit scale) is AltCLIP's, which is CLIP's, under the same names.
        image_side = AltCLIPConfig(
            text_config=known_model("tiny").config().text_config,
            vision_config=AltCLIPVisionConfig(**teacher.vision),
            projection_dim=teacher.projection_dim,
        )
        image_model = random_model(image_side, seed=seed)
    finally:
        torch.random.set_rng_state(generator_state)
    text_weights = {"text_model." + k: v for k, v in CLIP_TEXT_WEIGHTS.items()}
    state = to_checkpoint(text, {**text_weights, "text_projection.weight": "projection.weight"})
    state.update(
        (k, v)
        for k, v in to_checkpoint(image_model, MODEL_WEIGHTS).items()
        if not k.startswith(("text_", "text_model."))
    )
    path.mkdir(parents=True, exist_ok=True)
    save_tensors({k: v.to(dtype) for k, v in state.items()}, path)
    vision = image_side.vision_config
    config = {
        "model_type": "clip",
        "architectures": ["CLIPModel"],
        "projection_dim": teacher.projection_dim,
        "logit_scale_init_value": 2.6592,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "text_config": {"model_type": "clip_text_model", **teacher.text, **specials,
                        "max_position_embeddings": text_config.max_position_embeddings, "hidden_act": "quick_gelu",
                        "layer_norm_eps": text_config.layer_norm_eps, "projection_dim": teacher.projection_dim},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": vision.hidden_size,
                          "num_hidden_layers": vision.num_hidden_layers,
                          "num_attention_heads": vision.num_attention_heads,
                          "intermediate_size": vision.intermediate_size, "image_size": vision.image_size,
                          "patch_size": vision.patch_size, "hidden_act": "quick_gelu",
                          "layer_norm_eps": vision.layer_norm_eps, "projection_dim": teacher.projection_dim},
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _write_image_processor(path, vision.image_size)
    _mark_random(path)
    return path


def _write_image_processor(path: Path, size: int) -> None:
    from altclip.image_processing import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)


def _mark_random(path: Path) -> None:
    (path / RANDOM_MARKER).write_text(
        "This checkpoint has random weights: it runs like a real one, but its answers mean nothing.\n"
    )


def random_tokenizer(vocab_size: int):
    """The tokenizer of random checkpoints: trained on the package's multilingual captions, with at most
    ``vocab_size`` (and at most 4,000) tokens, so that every id fits the model's vocabulary."""
    from altclip.tokenizer import caption_corpus, train_tokenizer

    return train_tokenizer([caption for _, caption in caption_corpus()], min(vocab_size, 4000))


RANDOM_MARKER = "RANDOM_WEIGHTS.txt"


def is_random(path: str | os.PathLike) -> bool:
    """Whether a checkpoint folder was written by ``write_random_checkpoint``."""
    return (Path(path) / RANDOM_MARKER).is_file()
