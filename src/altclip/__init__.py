"""AltCLIP in plain PyTorch: multilingual CLIP with an XLM-R text tower, compatible with the Hugging Face
checkpoints (BAAI/AltCLIP, BAAI/AltCLIP-m9, BAAI/AltCLIP-m18).

    import altclip
    model, processor = altclip.load("BAAI/AltCLIP")
    inputs = processor(text=["一只猫", "a dog"], images=image, return_tensors="pt", padding=True)
    probs = model(**inputs).logits_per_image.softmax(dim=1)
"""

from altclip.auto import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer
from altclip.batch import BatchFeature
from altclip.checkpoint import CheckpointError
from altclip.config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig
from altclip.hub import CheckpointNotFoundError
from altclip.image_processing import CLIPImageProcessor, ImageError, load_image
from altclip.inference import NonFiniteError, embed_images, embed_texts, zero_shot_classifier
from altclip.model import AltCLIPModel
from altclip.outputs import AltCLIPOutput, TextModelOutput, VisionModelOutput
from altclip.pipeline import ZeroShotImageClassificationPipeline, load, pipeline
from altclip.processor import AltCLIPProcessor
from altclip.registry import KNOWN_MODELS, write_random_checkpoint
from altclip.text import AltCLIPTextModel
from altclip.tokenizer import XLMRobertaTokenizer
from altclip.vision import AltCLIPVisionModel

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
