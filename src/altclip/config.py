"""Configurations of the AltCLIP towers and of the whole model.

Plain dataclasses with the parameter names and defaults of the transformers documentation, reading and writing
the Hugging Face ``config.json`` of the released checkpoints. Keys we do not use (BAAI/AltCLIP carries leftovers
such as ``direct_kd``, ``num_layers`` or generation settings) are ignored, never fatal.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"


@dataclass
class _Config:
    """What every config shares: dict/JSON round trips and the output switches of the transformers API."""

    model_type: ClassVar[str]

    output_attentions: bool = False  # default for the forward argument of the same name
    output_hidden_states: bool = False  # default for the forward argument of the same name
    return_dict: bool = True  # False makes forward return plain tuples

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Config:
        known = {f.name for f in fields(cls)}
        unused = sorted(k for k in data if k not in known and k != "model_type")
        if unused:
            logger.debug("%s ignores config keys it does not use: %s", cls.__name__, ", ".join(unused))
        return cls(**{k: copy.deepcopy(v) for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.model_type}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Config) else copy.deepcopy(value)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(self.to_json_string(), encoding="utf-8")
        return path / CONFIG_NAME

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, revision: str | None = None) -> _Config:
        """Reads ``config.json`` from a local folder, a file, or a Hugging Face Hub model id."""
        from altclip.hub import resolve_file

        data = read_config_file(resolve_file(name_or_path, CONFIG_NAME, revision=revision))
        return cls.from_hf_dict(data, source=str(name_or_path))

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "<dict>") -> _Config:
        """Builds this config from a Hugging Face config dict, taking its part out of a full AltCLIP config."""
        model_type = data.get("model_type", cls.model_type)
        if model_type == cls.model_type:
            return cls.from_dict(data)
        if model_type == AltCLIPConfig.model_type and cls in (AltCLIPTextConfig, AltCLIPVisionConfig):
            full = AltCLIPConfig.from_dict(data)
            return full.text_config if cls is AltCLIPTextConfig else full.vision_config
        raise ValueError(
            f"{source} holds a config of model_type {model_type!r}; {cls.__name__} reads {cls.model_type!r}"
            + (" or 'altclip'" if cls is not AltCLIPConfig else "")
        )


@dataclass
class AltCLIPTextConfig(_Config):
    """The XLM-RoBERTa text tower, plus AltCLIP's ``pre_LN`` and ``transformation`` (hidden_size -> project_dim)."""

    model_type: ClassVar[str] = "altclip_text_model"

    vocab_size: int = 250002  # XLM-R: 250,000 sentencepiece pieces, fairseq's <s> <pad> </s> <unk>, and <mask>
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"  # exact (erf) GELU, as in XLM-R
    hidden_dropout_prob: float = 0.1  # after the embeddings and after each attention / MLP output; training only
    attention_probs_dropout_prob: float = 0.1  # on the attention probabilities; training only
    max_position_embeddings: int = 514  # 512 tokens: RoBERTa positions start after the padding index (1)
    type_vocab_size: int = 1  # XLM-R has a single segment embedding
    initializer_range: float = 0.02  # std of the normal init of linear and embedding weights
    initializer_factor: float = 0.02  # kept for config compatibility; the text tower's init uses initializer_range
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1  # also the RoBERTa position-id offset: the first real token sits at position 2
    bos_token_id: int = 0
    eos_token_id: int = 2
    position_embedding_type: str = "absolute"  # only "absolute" is used by released checkpoints
    use_cache: bool = True  # meaningless for an encoder; kept because the released configs carry it
    project_dim: int = 768  # width of the teacher's (CLIP text) state that ``transformation`` maps onto

    def __post_init__(self) -> None:
        _check_heads(self)


@dataclass
class AltCLIPVisionConfig(_Config):
    """The CLIP ViT image tower. The defaults are ViT-B/32, as documented; BAAI/AltCLIP uses ViT-L/14."""

    model_type: ClassVar[str] = "altclip_vision_model"

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512  # unused by the tower; the model's projection_dim decides the joint space
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"  # x * sigmoid(1.702 x), as trained by OpenAI
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0  # scales CLIP's width-dependent init stds

    def __post_init__(self) -> None:
        _check_heads(self)
        if self.image_size % self.patch_size:
            logger.warning("image_size %d is not a multiple of patch_size %d", self.image_size, self.patch_size)


@dataclass
class AltCLIPConfig(_Config):
    """The whole model: both towers and the joint embedding space they are projected into."""

    model_type: ClassVar[str] = "altclip"

    text_config: AltCLIPTextConfig = field(default_factory=AltCLIPTextConfig)
    vision_config: AltCLIPVisionConfig = field(default_factory=AltCLIPVisionConfig)
    projection_dim: int = 768  # width of the joint space of text_embeds and image_embeds
    logit_scale_init_value: float = 2.6592  # log(1 / 0.07), CLIP's initial temperature
    initializer_factor: float = 1.0
    dtype: str | None = None  # dtype the weights were saved in ("float32", ...); used by dtype="auto"

    def __post_init__(self) -> None:
        if self.text_config is None:
            self.text_config = AltCLIPTextConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = AltCLIPTextConfig.from_dict(self.text_config)
        if self.vision_config is None:
            self.vision_config = AltCLIPVisionConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = AltCLIPVisionConfig.from_dict(self.vision_config)

    @classmethod
    def from_text_vision_configs(
        cls, text_config: AltCLIPTextConfig, vision_config: AltCLIPVisionConfig, **kwargs: Any
    ) -> AltCLIPConfig:
        return cls(text_config=copy.deepcopy(text_config), vision_config=copy.deepcopy(vision_config), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AltCLIPConfig:
        data = dict(data)
        # Configs written by transformers < 4.27 (BAAI/AltCLIP among them) carry `*_config_dict` entries whose values
        # override those of `*_config`; transformers applies them the same way.
        for name in ("text_config", "vision_config"):
            merged = dict(data.get(name) or {})
            merged.update(data.pop(f"{name}_dict", None) or {})
            data[name] = merged
        if "dtype" not in data and "torch_dtype" in data:
            data["dtype"] = data["torch_dtype"]
        return super().from_dict(data)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["architectures"] = ["AltCLIPModel"]
        if out["dtype"] is None:
            del out["dtype"]
        return out


def _check_heads(config: AltCLIPTextConfig | AltCLIPVisionConfig) -> None:
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size ({config.hidden_size}) must be a multiple of num_attention_heads "
            f"({config.num_attention_heads})"
        )


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


CONFIG_CLASSES: dict[str, type[_Config]] = {
    c.model_type: c for c in (AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig)
}
