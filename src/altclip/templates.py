"""Prompt templates for zero-shot classification, per language, written for this project.

A class name is put into each template of a set; the text embeddings of all of them are averaged into one
classifier row (a prompt ensemble), which is usually more accurate than a single prompt.
"""

from __future__ import annotations

TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "a photo of a {}.",
        "a picture of a {}.",
        "a close-up photo of a {}.",
        "a blurry photo of a {}.",
        "a bright photo of a {}.",
        "a dark photo of a {}.",
        "a cropped photo of a {}.",
        "a low resolution photo of a {}.",
        "a good photo of the {}.",
        "a photo of one {}.",
        "a photo of many {}.",
        "a drawing of a {}.",
        "a painting of the {}.",
        "a sculpture of a {}.",
        "a cartoon {}.",
        "the {} in a video game.",
        "a black and white photo of a {}.",
        "an origami {}.",
    ),
    "zh": (
        "一张{}的照片。",
        "一张{}的图片。",
        "{}的特写照片。",
        "一张模糊的{}的照片。",
        "一张明亮的{}的照片。",
        "一张昏暗的{}的照片。",
        "一张裁剪过的{}的照片。",
        "一张低分辨率的{}的照片。",
        "一张拍得很好的{}的照片。",
        "一张有很多{}的照片。",
        "一幅{}的画。",
        "一幅{}的素描。",
        "一尊{}的雕塑。",
        "一个卡通{}。",
        "电子游戏里的{}。",
        "一张{}的黑白照片。",
        "一个折纸{}。",
        "这是{}。",
    ),
    "ja": (
        "{}の写真。",
        "{}の画像。",
        "{}のクローズアップ写真。",
        "{}のイラスト。",
        "{}の白黒写真。",
        "ぼやけた{}の写真。",
    ),
    "ko": ("{}의 사진.", "{}의 이미지.", "{}의 근접 사진.", "{}의 그림.", "{}의 흑백 사진.", "흐릿한 {}의 사진."),
    "es": (
        "una foto de un {}.",
        "una imagen de un {}.",
        "una foto de cerca de un {}.",
        "un dibujo de un {}.",
        "una foto en blanco y negro de un {}.",
        "una foto borrosa de un {}.",
    ),
    "fr": (
        "une photo d'un {}.",
        "une image d'un {}.",
        "une photo en gros plan d'un {}.",
        "un dessin d'un {}.",
        "une photo en noir et blanc d'un {}.",
        "une photo floue d'un {}.",
    ),
    "de": (
        "ein Foto von einem {}.",
        "ein Bild von einem {}.",
        "eine Nahaufnahme von einem {}.",
        "eine Zeichnung von einem {}.",
        "ein Schwarzweißfoto von einem {}.",
        "ein unscharfes Foto von einem {}.",
    ),
    "it": (
        "una foto di un {}.",
        "un'immagine di un {}.",
        "una foto ravvicinata di un {}.",
        "un disegno di un {}.",
        "una foto in bianco e nero di un {}.",
        "una foto sfocata di un {}.",
    ),
    "pt": (
        "uma foto de um {}.",
        "uma imagem de um {}.",
        "uma foto de perto de um {}.",
        "um desenho de um {}.",
        "uma foto em preto e branco de um {}.",
        "uma foto desfocada de um {}.",
    ),
    "ru": (
        "фотография: {}.",
        "изображение: {}.",
        "крупный план: {}.",
        "рисунок: {}.",
        "чёрно-белая фотография: {}.",
        "размытая фотография: {}.",
    ),
    "ar": (
        "صورة {}.",
        "صورة فوتوغرافية لـ {}.",
        "صورة مقربة لـ {}.",
        "رسم لـ {}.",
        "صورة بالأبيض والأسود لـ {}.",
        "صورة ضبابية لـ {}.",
    ),
}


def templates_for(language: str) -> tuple[str, ...]:
    if language not in TEMPLATES:
        raise ValueError(f"No built-in templates for {language!r}; available: {', '.join(TEMPLATES)}")
    return TEMPLATES[language]


def guess_language(text: str) -> str:
    """'zh', 'ja', 'ko', 'ru', 'ar' by script, else 'en': enough to pick a template set for a label."""
    for ch in text:
        code = ord(ch)
        if 0x3040 <= code <= 0x30FF:
            return "ja"
        if 0xAC00 <= code <= 0xD7AF:
            return "ko"
    for ch in text:
        code = ord(ch)
        if 0x4E00 <= code <= 0x9FFF:
            return "zh"
        if 0x0400 <= code <= 0x04FF:
            return "ru"
        if 0x0600 <= code <= 0x06FF:
            return "ar"
    return "en"
