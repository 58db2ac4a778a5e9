"""Configurations of the AltCLIP towers and of the whole model.

Dataclasses with the parameter names and defaults of the transformers documentation, reading and writing the Hugging
Face ``config.json`` of the released checkpoints. They take every keyword transformers' configs take: the fields
below, the settings all transformers configs share (``id2label``, ``return_dict``, ...), aliases (``torch_dtype``,
``num_labels``, ``attn_implementation``), and any other key, which is kept as an attribute and written back on save,
so a checkpoint's extra keys (BAAI/AltCLIP carries leftovers such as ``direct_kd``) survive a load and a save.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from typing_extensions import dataclass_transform

from altclip.utils.jsonsafe import read_json

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

# Keys a config never keeps: transformers' bookkeeping, recomputed where it is needed.
_DROPPED_KEYS = {"_commit_hash", "_attn_implementation_internal", "_experts_implementation_internal", "use_return_dict"}


C = TypeVar("C", bound="_Config")


class ConfigError(ValueError):
    """A config holds a value no model can be built with (a count that is not a positive integer, heads that do not
    divide the width, a dropout outside [0, 1], ...), or does not fit the weights beside it."""


@dataclass_transform()
def config_dataclass(cls: type[C]) -> type[C]:
    """``@dataclass``, with an ``__init__`` that also takes keys that are not fields (see ``_Config._set_extra``)."""
    cls = dataclass(cls, eq=False)
    init = cls.__init__
    names = {f.name for f in fields(cls) if f.init}

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        init(self, *args, **kwargs)
        self._set_extra(extra)

    cls.__init__ = __init__  # type: ignore[method-assign]  # the dataclass's __init__, wrapped
    return cls


@dataclass(kw_only=True)
class _Config:
    """What every config shares: the settings of every transformers config, dict/JSON round trips, loading."""

    model_type: ClassVar[str]
    sub_configs: ClassVar[dict[str, type[_Config]]] = {}  # nested configs, by attribute name (transformers' name)
    base_config_key: ClassVar[str] = ""  # where this config sits inside the full AltCLIP config
    # What ``validate`` checks: fields that size the model (positive integers), dropout probabilities, and other
    # floats the forward pass uses (finite, not negative).
    _sizes: ClassVar[tuple[str, ...]] = ()
    _probabilities: ClassVar[tuple[str, ...]] = ()
    _non_negative: ClassVar[tuple[str, ...]] = ()

    output_attentions: bool = False  # default for the forward argument of the same name
    output_hidden_states: bool = False  # default for the forward argument of the same name
    return_dict: bool = True  # False makes forward return plain tuples
    torchscript: bool = False  # True also makes forward return tuples, for torch.jit.trace
    dtype: str | None = None  # dtype the weights were saved in ("float32", ...); read by dtype="auto"
    architectures: list[str] | None = None  # the class that wrote the checkpoint, set by save_pretrained
    # Fine-tuning settings transformers keeps on every config; AltCLIP has no classification head that reads them.
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    chunk_size_feed_forward: int = 0  # transformers' feed-forward chunking; our layers always run whole
    is_encoder_decoder: bool = False

    def __post_init__(self) -> None:
        if self.dtype is not None and not isinstance(self.dtype, str):  # a torch.dtype: keep its name
            self.dtype = str(self.dtype).removeprefix("torch.")
        if self.id2label is None:
            self.num_labels = 2  # transformers' default, which its configs leave out of config.json
        else:  # JSON keys are strings
            self.id2label = {int(k): v for k, v in self.id2label.items()}
        self._attn_implementation = None  # "eager" or "sdpa"; None lets the model pick (sdpa)
        self._name_or_path = ""

    def validate(self) -> None:
        """Raises a ConfigError naming the first value a model cannot be built or run with. Configs check themselves
        when they are made and again when a model is built from them (fields may be set in between); loading also
        checks them against the weights (the layer counts must match)."""
        for name in self._sizes:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {_brief(value)}")
        for name in self._probabilities:
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ConfigError(f"{name} must be a probability between 0 and 1, got {_brief(value)}")
        for name in self._non_negative:
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < math.inf:
                raise ConfigError(f"{name} must be a finite number >= 0, got {_brief(value)}")
        for key in self.sub_configs:
            nested = getattr(self, key, None)
            if isinstance(nested, _Config):
                nested.validate()

    def _set_extra(self, extra: dict[str, Any]) -> None:
        """Keys that are not fields: transformers' aliases, and anything else, kept as an attribute."""
        for key, value in extra.items():
            if key == "model_type":  # a class attribute; from_hf_dict checks it
                continue
            if key == "torch_dtype":  # transformers' former name of dtype
                if self.dtype is None and value is not None:
                    self.dtype = value if isinstance(value, str) else str(value).removeprefix("torch.")
            elif key == "num_labels":
                self.num_labels = value
            elif key == "attn_implementation":
                self._attn_implementation = value
            elif key in ("name_or_path", "_name_or_path"):
                self._name_or_path = str(value)
            elif key not in _DROPPED_KEYS:
                setattr(self, key, copy.deepcopy(value))

    # -----------------------------------------------------------------------------------------------------------
    # The settings transformers derives

    @property
    def num_labels(self) -> int | None:
        return None if self.id2label is None else len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if self.num_labels != num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            self.label2id = {label: i for i, label in self.id2label.items()}

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict and not self.torchscript

    @property
    def torch_dtype(self) -> str | None:
        return self.dtype

    @property
    def _attn_implementation(self) -> str | None:
        return self.__dict__.get("_attn")

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | None) -> None:
        """Set on the nested configs too, as transformers does."""
        self.__dict__["_attn"] = value
        for key in self.sub_configs:
            nested = getattr(self, key, None)
            if isinstance(nested, _Config):
                nested._attn_implementation = value

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = str(value)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> _Config:
        """The config of the text tower: ``text_config`` of a full config, else this config."""
        return getattr(self, "text_config", self)

    # -----------------------------------------------------------------------------------------------------------
    # Dicts and JSON

    def _keys(self) -> list[str]:
        """The fields, then the extra keys, in the order ``to_dict`` writes them (``model_type`` aside)."""
        names = [f.name for f in fields(self)]
        return names + [k for k in self.__dict__ if not k.startswith("_") and k not in names]

    def __iter__(self):
        return iter(self._keys())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Config) and type(other) is type(self) and self.to_dict() == other.to_dict()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": getattr(self, "model_type", "")}
        for key in self._keys():
            value = getattr(self, key)
            out[key] = value.to_dict() if isinstance(value, _Config) else copy.deepcopy(value)
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """``to_dict`` without the shared settings that still hold their defaults (what ``config.json`` holds)."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if key in _SHARED_DEFAULTS and value == _SHARED_DEFAULTS[key]:
                continue
            nested = getattr(self, key, None)
            out[key] = nested.to_diff_dict() if isinstance(nested, _Config) else value
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        Path(json_file_path).write_text(self.to_json_string(use_diff=use_diff), encoding="utf-8")

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        if kwargs.get("push_to_hub"):
            raise NotImplementedError("push_to_hub is not offered; upload the folder with huggingface_hub")
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.to_json_file(path / CONFIG_NAME)
        return path / CONFIG_NAME

    # -----------------------------------------------------------------------------------------------------------
    # Reading

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Self:
        """A config from a dict; ``kwargs`` override its values."""
        return cls(**{k: copy.deepcopy(v) for k, v in {**data, **kwargs}.items()})

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> Self:
        return cls.from_hf_dict(read_config_file(json_file), source=str(json_file))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        subfolder: str = "",
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Reads ``config.json`` from a local folder, a file, or a Hugging Face Hub model id.

        Other keywords override the file's values; a dict for a nested config (``text_config={"vocab_size": 20}``)
        overrides only the keys it names.
        """
        from altclip.loading.hub import HubOptions, resolve_file

        hub = HubOptions(
            revision=revision, subfolder=subfolder, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        path = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, **hub)
        config = cls.from_hf_dict(read_config_file(path), source=str(pretrained_model_name_or_path))
        config._set_overrides(kwargs)
        return config

    def _set_overrides(self, overrides: dict[str, Any]) -> None:
        for key, value in overrides.items():
            nested = getattr(self, key, None)
            if isinstance(nested, _Config) and isinstance(value, dict):
                nested._set_overrides(value)
            elif key in {f.name for f in fields(self)}:
                setattr(self, key, value)
            else:
                self._set_extra({key: value})
        self.validate()

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Self:
        """Builds this config from a Hugging Face config dict, taking its part out of a full AltCLIP config."""
        model_type = data.get("model_type", cls.model_type)
        try:
            if model_type == cls.model_type:
                return cls.from_dict(data)
            if model_type == AltCLIPConfig.model_type and cls.base_config_key:
                return getattr(AltCLIPConfig.from_dict(data), cls.base_config_key)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong shape (a list for a dict, ...)
            raise ConfigError(f"{source} is not a valid {cls.__name__}: {e}") from None
        raise ConfigError(
            f"{source} holds a config of model_type {model_type!r}; {cls.__name__} reads {cls.model_type!r}"
            + (" or 'altclip'" if cls is not AltCLIPConfig else "")
        )


_SHARED_DEFAULTS = _Config().to_dict()


@config_dataclass
class AltCLIPTextConfig(_Config):
    """The XLM-RoBERTa text tower, plus AltCLIP's ``pre_LN`` and ``transformation`` (hidden_size -> project_dim)."""

    model_type: ClassVar[str] = "altclip_text_model"
    base_config_key: ClassVar[str] = "text_config"

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

    _sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "project_dim")  # fmt: skip
    _probabilities = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    _non_negative = ("layer_norm_eps",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        super().validate()
        _check_heads(self)
        if not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"pad_token_id must be a token id below vocab_size ({self.vocab_size}), got {_brief(self.pad_token_id)}"
            )


@config_dataclass
class AltCLIPVisionConfig(_Config):
    """The CLIP ViT image tower. The defaults are ViT-B/32, as documented; BAAI/AltCLIP uses ViT-L/14."""

    model_type: ClassVar[str] = "altclip_vision_model"
    base_config_key: ClassVar[str] = "vision_config"

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

    _sizes = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
              "num_channels", "image_size", "patch_size")  # fmt: skip
    _probabilities = ("attention_dropout",)
    _non_negative = ("layer_norm_eps",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()
        if self.image_size % self.patch_size:
            logger.warning("image_size %d is not a multiple of patch_size %d", self.image_size, self.patch_size)

    def validate(self) -> None:
        super().validate()
        _check_heads(self)
        if self.patch_size > self.image_size:
            raise ConfigError(f"patch_size ({self.patch_size}) is larger than image_size ({self.image_size})")


@config_dataclass
class AltCLIPConfig(_Config):
    """The whole model: both towers and the joint embedding space they are projected into."""

    model_type: ClassVar[str] = "altclip"
    sub_configs: ClassVar[dict[str, type[_Config]]] = {
        "text_config": AltCLIPTextConfig,
        "vision_config": AltCLIPVisionConfig,
    }

    text_config: AltCLIPTextConfig = field(default_factory=AltCLIPTextConfig)
    vision_config: AltCLIPVisionConfig = field(default_factory=AltCLIPVisionConfig)
    projection_dim: int = 768  # width of the joint space of text_embeds and image_embeds
    logit_scale_init_value: float = 2.6592  # log(1 / 0.07), CLIP's initial temperature
    initializer_factor: float = 1.0

    _sizes = ("projection_dim",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_config is None:
            self.text_config = AltCLIPTextConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = AltCLIPTextConfig.from_dict(self.text_config)
        if self.vision_config is None:
            self.vision_config = AltCLIPVisionConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = AltCLIPVisionConfig.from_dict(self.vision_config)
        self.validate()

    @classmethod
    def from_text_vision_configs(
        cls, text_config: AltCLIPTextConfig, vision_config: AltCLIPVisionConfig, **kwargs: Any
    ) -> AltCLIPConfig:
        return cls(text_config=copy.deepcopy(text_config), vision_config=copy.deepcopy(vision_config), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Self:
        data = {**data, **kwargs}
        # Configs written by transformers < 4.27 (BAAI/AltCLIP among them) carry `*_config_dict` entries whose values
        # override those of `*_config`; transformers applies them the same way.
        for name in ("text_config", "vision_config"):
            merged = dict(data.get(name) or {})
            merged.update(data.pop(f"{name}_dict", None) or {})
            data[name] = merged
        return super().from_dict(data)


def _check_heads(config: AltCLIPTextConfig | AltCLIPVisionConfig) -> None:
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"hidden_size ({config.hidden_size}) must be a multiple of num_attention_heads "
            f"({config.num_attention_heads})"
        )


def _brief(value: Any) -> str:
    """A value as an error message quotes it: its repr, at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


CONFIG_CLASSES: dict[str, type[_Config]] = {
    c.model_type: c for c in (AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig)
}
