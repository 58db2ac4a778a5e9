"""Writers of random-weight checkpoints of any registered shape (``registry``).

Random checkpoints let benchmarks, tests and demos run where no weights can be downloaded: they have the real
architecture and size, and they load through exactly the same code as the released weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from altclip.loading.registry import KNOWN_TEACHERS, RANDOM_MARKER, known_model
from altclip.modeling.config import AltCLIPConfig

if TYPE_CHECKING:
    from altclip.modeling.model import AltCLIPModel
    from altclip.processing.tokenizer import XLMRobertaTokenizer


def random_model(shape: str | AltCLIPConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> AltCLIPModel:
    """An ``AltCLIPModel`` with random weights of a registered shape (or of a config), initialised as transformers
    initialises it, reproducibly from ``seed``."""
    from altclip.modeling.model import AltCLIPModel

    config = shape if isinstance(shape, AltCLIPConfig) else known_model(shape).config()
    with torch.random.fork_rng(devices=[]):  # seeded here, the caller's generator untouched
        torch.manual_seed(seed)
        model = AltCLIPModel(config)
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

    from altclip.loading.checkpoint import MODEL_WEIGHTS, save_tensors, to_checkpoint
    from altclip.modeling.clip_text import CLIP_TEXT_WEIGHTS, CLIPTextConfig, CLIPTextTower, train_clip_tokenizer
    from altclip.modeling.config import AltCLIPVisionConfig
    from altclip.processing.tokenizer import caption_corpus

    teacher = KNOWN_TEACHERS[shape]
    path = Path(path)
    tokenizer = train_clip_tokenizer([c for _, c in caption_corpus()], min(teacher.text["vocab_size"], 4000), path)
    specials = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    text_config = CLIPTextConfig(
        **teacher.text, eos_token_id=tokenizer.eos_token_id, projection_dim=teacher.projection_dim
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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
    from altclip.processing.image_processing import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)


def _mark_random(path: Path) -> None:
    (path / RANDOM_MARKER).write_text(
        "This checkpoint has random weights: it runs like a real one, but its answers mean nothing.\n"
    )


def random_tokenizer(vocab_size: int) -> XLMRobertaTokenizer:
    """The tokenizer of random checkpoints: trained on the package's multilingual captions, with at most
    ``vocab_size`` (and at most 4,000) tokens, so that every id fits the model's vocabulary."""
    from altclip.processing.tokenizer import caption_corpus, train_tokenizer

    return train_tokenizer([caption for _, caption in caption_corpus()], min(vocab_size, 4000))
