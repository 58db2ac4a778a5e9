"""A synthetic multilingual image-text task: coloured shapes, captioned in English and Chinese."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from altclip import AltCLIPConfig, CLIPImageProcessor
from altclip.loading.random_checkpoints import random_model
from altclip.modeling.clip_text import train_clip_tokenizer
from altclip.processing.tokenizer import caption_corpus, train_tokenizer

COLOURS = {
    "red": ((215, 35, 35), "红色"),
    "green": ((40, 170, 50), "绿色"),
    "blue": ((35, 70, 215), "蓝色"),
    "yellow": ((235, 210, 40), "黄色"),
}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
CLASSES = [(c, s) for c in COLOURS for s in SHAPES]
EN_TEMPLATES = [
    "a photo of a {c} {s}",
    "a {c} {s}",
    "a picture of a {c} {s} on a grey background",
    "there is a {c} {s}",
]
ZH_TEMPLATES = ["一张{c}{s}的照片", "一个{c}的{s}", "灰色背景上的{c}{s}", "这是一个{c}{s}"]


def english(colour: str, shape: str, template: int = 0) -> str:
    return EN_TEMPLATES[template].format(c=colour, s=shape)


def chinese(colour: str, shape: str, template: int = 0) -> str:
    return ZH_TEMPLATES[template].format(c=COLOURS[colour][1], s=SHAPES[shape])


def draw(colour: str, shape: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    background = rng.integers(90, 150, (size, size, 3)).astype(np.uint8)
    image = Image.fromarray(background)
    d = ImageDraw.Draw(image)
    r = int(rng.integers(size // 4, size // 3 + 1))
    x, y = (int(v) for v in rng.integers(r, size - r, 2))
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[colour][0])
    if shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        d.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    else:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return image


def make_images(root: Path, per_class: int, seed: int) -> list[tuple[Path, str, str]]:
    """(path, colour, shape) for ``per_class`` images of each class, in class folders ``{colour}_{shape}``."""
    rng = np.random.default_rng(seed)
    out = []
    for colour, shape in CLASSES:
        folder = root / f"{colour}_{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i:03d}.png"
            draw(colour, shape, rng).save(path)
            out.append((path, colour, shape))
    return out


def write_captions(path: Path, images: list[tuple[Path, str, str]], seed: int = 0) -> Path:
    """A CSV of (image, caption): each image with an English and a Chinese caption."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for image, colour, shape in images:
            writer.writerow([str(image), english(colour, shape, int(rng.integers(len(EN_TEMPLATES))))])
            writer.writerow([str(image), chinese(colour, shape, int(rng.integers(len(ZH_TEMPLATES))))])
    return path


def write_parallel(path: Path) -> Path:
    lines = [f"{english(c, s, t)}\t{chinese(c, s, t)}" for c, s in CLASSES for t in range(len(EN_TEMPLATES))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def all_texts() -> list[str]:
    return [f(c, s, t) for c, s in CLASSES for t in range(4) for f in (english, chinese)]


TOY = AltCLIPConfig(
    text_config=dict(
        vocab_size=1200,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        project_dim=48,
    ),
    vision_config=dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=64, patch_size=8
    ),
    projection_dim=32,
)


def write_toy_checkpoint(path: Path, seed: int = 0, config: AltCLIPConfig = TOY) -> Path:
    """A small random AltCLIP checkpoint for 64-pixel images, with a tokenizer that knows the task's words."""
    torch.manual_seed(seed)
    random_model(config, seed=seed).save_pretrained(path)
    texts = [c for _, c in caption_corpus()] + all_texts() * 3
    train_tokenizer(texts, config.text_config.vocab_size).save_pretrained(path)
    size = config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    return path


def write_clip_teacher(
    path: Path, texts: list[str], vocab_size: int, text_width: int, vision: dict, projection_dim: int
) -> Path:
    """A tiny random transformers CLIPModel (perturbed away from its init) with a CLIP-style BPE tokenizer."""
    import transformers

    from conftest import perturb_

    train_clip_tokenizer(texts, vocab_size, path)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(path))
    text = dict(vocab_size=len(tokenizer), hidden_size=text_width, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * text_width,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    perturb_(model)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
