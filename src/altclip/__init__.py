"""AltCLIP in plain PyTorch: multilingual CLIP with an XLM-R text tower, compatible with the Hugging Face
checkpoints (BAAI/AltCLIP, BAAI/AltCLIP-m9, BAAI/AltCLIP-m18).

    import altclip
    model, processor = altclip.load("BAAI/AltCLIP")
    inputs = processor(text=["一只猫", "a dog"], images=image, return_tensors="pt", padding=True)
    probs = model(**inputs).logits_per_image.softmax(dim=1)

The names below are imported on first use (PEP 562), so that ``import altclip``, and the ``altclip`` command's
``--help``, do not wait for PyTorch; ``from altclip import AltCLIPModel`` imports what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public API: each name and the module that defines it (the same as __all__ and the imports for type checkers
# below; tests/test_startup.py checks that the three agree).
_EXPORTS = {
    "AutoConfig": "altclip.compat.auto",
    "AutoImageProcessor": "altclip.compat.auto",
    "AutoModel": "altclip.compat.auto",
    "AutoProcessor": "altclip.compat.auto",
    "AutoTokenizer": "altclip.compat.auto",
    "NonFiniteError": "altclip.inference",
    "embed_images": "altclip.inference",
    "embed_texts": "altclip.inference",
    "zero_shot_classifier": "altclip.inference",
    "CheckpointError": "altclip.loading.checkpoint",
    "CheckpointNotFoundError": "altclip.loading.hub",
    "write_random_checkpoint": "altclip.loading.random_checkpoints",
    "KNOWN_MODELS": "altclip.loading.registry",
    "AltCLIPConfig": "altclip.modeling.config",
    "AltCLIPTextConfig": "altclip.modeling.config",
    "AltCLIPVisionConfig": "altclip.modeling.config",
    "AltCLIPModel": "altclip.modeling.model",
    "AltCLIPOutput": "altclip.modeling.outputs",
    "TextModelOutput": "altclip.modeling.outputs",
    "VisionModelOutput": "altclip.modeling.outputs",
    "QuantizationConfig": "altclip.modeling.quantize",
    "AltCLIPTextModel": "altclip.modeling.text",
    "AltCLIPVisionModel": "altclip.modeling.vision",
    "ZeroShotImageClassificationPipeline": "altclip.pipelines",
    "load": "altclip.pipelines",
    "pipeline": "altclip.pipelines",
    "BatchFeature": "altclip.processing.batch",
    "CLIPImageProcessor": "altclip.processing.image_processing",
    "ImageError": "altclip.processing.image_processing",
    "load_image": "altclip.processing.image_processing",
    "AltCLIPProcessor": "altclip.processing.processor",
    "XLMRobertaTokenizer": "altclip.processing.tokenizer",
}

__all__ = [
    "AltCLIPConfig",
    "AltCLIPModel",
    "AltCLIPOutput",
    "AltCLIPProcessor",
    "AltCLIPTextConfig",
    "AltCLIPTextModel",
    "AltCLIPVisionConfig",
    "AltCLIPVisionModel",
    "AutoConfig",
    "AutoImageProcessor",
    "AutoModel",
    "AutoProcessor",
    "AutoTokenizer",
    "BatchFeature",
    "CLIPImageProcessor",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ImageError",
    "KNOWN_MODELS",
    "NonFiniteError",
    "QuantizationConfig",
    "TextModelOutput",
    "VisionModelOutput",
    "XLMRobertaTokenizer",
    "ZeroShotImageClassificationPipeline",
    "embed_images",
    "embed_texts",
    "load",
    "load_image",
    "pipeline",
    "write_random_checkpoint",
    "zero_shot_classifier",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'altclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and editors see: the same names, from the same modules
    from altclip.compat.auto import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer
    from altclip.inference import NonFiniteError, embed_images, embed_texts, zero_shot_classifier
    from altclip.loading.checkpoint import CheckpointError
    from altclip.loading.hub import CheckpointNotFoundError
    from altclip.loading.random_checkpoints import write_random_checkpoint
    from altclip.loading.registry import KNOWN_MODELS
    from altclip.modeling.config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig
    from altclip.modeling.model import AltCLIPModel
    from altclip.modeling.outputs import AltCLIPOutput, TextModelOutput, VisionModelOutput
    from altclip.modeling.quantize import QuantizationConfig
    from altclip.modeling.text import AltCLIPTextModel
    from altclip.modeling.vision import AltCLIPVisionModel
    from altclip.pipelines import ZeroShotImageClassificationPipeline, load, pipeline
    from altclip.processing.batch import BatchFeature
    from altclip.processing.image_processing import CLIPImageProcessor, ImageError, load_image
    from altclip.processing.processor import AltCLIPProcessor
    from altclip.processing.tokenizer import XLMRobertaTokenizer
