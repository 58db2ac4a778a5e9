"""Auto classes that pick the right class from a checkpoint's ``model_type``, as transformers' do."""

from __future__ import annotations

import os
from typing import Any

from altclip.loading.hub import HUB_KEYWORDS, resolve_file
from altclip.loading.pretrained import PreTrainedModel
from altclip.modeling.config import CONFIG_CLASSES, CONFIG_NAME, _Config, read_config_file


def _model_classes() -> dict[str, type[PreTrainedModel]]:
    from altclip.modeling.model import AltCLIPModel
    from altclip.modeling.text import AltCLIPTextModel
    from altclip.modeling.vision import AltCLIPVisionModel

    return {"altclip": AltCLIPModel, "altclip_text_model": AltCLIPTextModel, "altclip_vision_model": AltCLIPVisionModel}


def _model_type(name_or_path: str | os.PathLike, kwargs: dict[str, Any]) -> str:
    hub = {k: kwargs[k] for k in HUB_KEYWORDS if k in kwargs}
    data = read_config_file(resolve_file(name_or_path, CONFIG_NAME, **hub))
    model_type = data.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(
            f"{name_or_path} is a {model_type!r} checkpoint; this package loads AltCLIP checkpoints only "
            f"(model_type {', '.join(CONFIG_CLASSES)})"
        )
    return model_type


class AutoConfig:
    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> _Config:
        """Same keywords as ``AltCLIPConfig.from_pretrained``; returns the class the checkpoint's config names."""
        name = pretrained_model_name_or_path
        return CONFIG_CLASSES[_model_type(name, kwargs)].from_pretrained(name, **kwargs)


class AutoModel:
    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
        """Same arguments as ``AltCLIPModel.from_pretrained``; returns the class the checkpoint's config names."""
        name = pretrained_model_name_or_path
        return _model_classes()[_model_type(name, kwargs)].from_pretrained(name, **kwargs)

    @staticmethod
    def from_config(config: _Config, **kwargs: Any) -> PreTrainedModel:
        """A randomly initialised model of the class ``config`` is for (``dtype=``, ``attn_implementation=``)."""
        return _model_classes()[config.model_type]._from_config(config, **kwargs)


class AutoProcessor:
    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        from altclip.processing.processor import AltCLIPProcessor

        return AltCLIPProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)


class AutoTokenizer:
    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        from altclip.processing.tokenizer import XLMRobertaTokenizer

        return XLMRobertaTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)


class AutoImageProcessor:
    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        from altclip.processing.image_processing import CLIPImageProcessor

        return CLIPImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
