"""AltCLIP in plain PyTorch: multilingual CLIP with an XLM-R text tower, compatible with the Hugging Face
checkpoints (BAAI/AltCLIP, BAAI/AltCLIP-m9, BAAI/AltCLIP-m18).

    import altclip
    model, processor = altclip.load("BAAI/AltCLIP")
    inputs = processor(text=["一只猫", "a dog"], images=image, return_tensors="pt", padding=True)
    probs = model(**inputs).logits_per_image.softmax(dim=1)
"""

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
from altclip.pipeline import ZeroShotImageClassificationPipeline, load, pipeline
from altclip.processing.batch import BatchFeature
from altclip.processing.image_processing import CLIPImageProcessor, ImageError, load_image
from altclip.processing.processor import AltCLIPProcessor
from altclip.processing.tokenizer import XLMRobertaTokenizer

__version__ = "0.1.0"

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
