"""AltCLIP in plain PyTorch: multilingual CLIP with an XLM-R text tower, compatible with the Hugging Face
checkpoints (BAAI/AltCLIP, BAAI/AltCLIP-m9, BAAI/AltCLIP-m18)."""

from altclip.checkpoint import CheckpointError
from altclip.config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig
from altclip.hub import CheckpointNotFoundError
from altclip.model import AltCLIPModel
from altclip.outputs import AltCLIPOutput, TextModelOutput, VisionModelOutput
from altclip.text import AltCLIPTextModel
from altclip.vision import AltCLIPVisionModel

__version__ = "0.1.0"

__all__ = [
    "AltCLIPConfig",
    "AltCLIPModel",
    "AltCLIPOutput",
    "AltCLIPTextConfig",
    "AltCLIPTextModel",
    "AltCLIPVisionConfig",
    "AltCLIPVisionModel",
    "CheckpointError",
    "CheckpointNotFoundError",
    "TextModelOutput",
    "VisionModelOutput",
]
