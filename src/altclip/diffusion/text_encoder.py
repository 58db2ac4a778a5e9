"""AltDiffusion's text encoder: AltCLIP's XLM-R tower as diffusers' ``RobertaSeriesModelWithTransformation`` runs
it, reading and writing that class's checkpoints (the ``text_encoder/`` folder of BAAI/AltDiffusion, -m9, -m18).

Two heads exist, chosen by the config's ``has_pre_transformation``:

- AltDiffusion and -m9 (False): ``projection_state = transformation(h)``, the last layer's state of every token
  mapped to the UNet's cross-attention width, without ``pre_LN`` (``AltCLIPTextModel.conditioning_states``).
- AltDiffusion-m18 (True): ``projection_state = transformation_pre(pre_LN(h'))``, from the output of the layer
  before the last, as Stable Diffusion 2 reads OpenCLIP. ``transformation`` is then in the weights but unused.

Nothing here imports diffusers or transformers: ``altclip.diffusion.AltDiffusionTextEncoder`` is this model as a
diffusers component (so that a pipeline's ``save_pretrained`` saves it).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from altclip.loading import checkpoint as ckpt
from altclip.modeling.config import AltCLIPTextConfig, ConfigError, config_dataclass
from altclip.modeling.outputs import ModelOutput
from altclip.modeling.text import AltCLIPTextModel

# The class diffusers saves AltDiffusion's text encoder as; written into config.json so that diffusers' class (and
# scripts that pick the class by ``architectures``) read what we save.
DIFFUSERS_CLASS = "RobertaSeriesModelWithTransformation"

# Checkpoint names as diffusers' class writes them: AltCLIP's text tower (``roberta.*``, ``pre_LN``,
# ``transformation``) and -m18's second head.
WEIGHTS: ckpt.WeightMap = {
    **ckpt.TEXT_WEIGHTS,
    "transformation_pre.weight": "transformation_pre.weight",
    "transformation_pre.bias": "transformation_pre.bias",
}


@config_dataclass
class AltDiffusionTextConfig(AltCLIPTextConfig):
    """diffusers' ``RobertaSeriesConfig``. A key that config.json leaves out takes the value that class gives it,
    which is transformers' ``XLMRobertaConfig`` default (XLM-R base, ``layer_norm_eps=1e-12``), not AltCLIP's: a
    config is read into the same model diffusers builds from it."""

    model_type: ClassVar[str] = "xlm-roberta"  # what RobertaSeriesConfig writes; "roberta" is read too
    base_config_key: ClassVar[str] = ""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    project_dim: int = 512  # the UNet's cross-attention width
    use_attention_mask: bool = True  # the pipelines pass the tokenizer's attention mask only when this is true
    has_pre_transformation: bool = False  # -m18's head: transformation_pre(pre_LN(output of the layer before last))
    pooler_fn: str = "cls"  # kept for the config's sake; no output reads it
    learn_encoder: bool = False  # a training setting of BAAI's; no effect here

    def validate(self) -> None:
        super().validate()
        for name in ("use_attention_mask", "has_pre_transformation"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.has_pre_transformation and self.num_hidden_layers < 2:
            raise ConfigError("has_pre_transformation reads the layer before the last: it needs 2 layers or more")
        for name in ("is_decoder", "add_cross_attention"):  # XLM-R as a decoder: not an AltDiffusion text encoder
            if getattr(self, name, False):
                raise ConfigError(f"{name} is set: AltDiffusion's text encoder is an encoder")

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "<dict>") -> AltDiffusionTextConfig:
        model_type = data.get("model_type", cls.model_type)
        if model_type not in ("xlm-roberta", "roberta"):
            raise ConfigError(
                f"{source} holds a config of model_type {model_type!r}; an AltDiffusion text encoder "
                f"({DIFFUSERS_CLASS}) is 'xlm-roberta'"
            )
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong shape
            raise ConfigError(f"{source} is not a valid {cls.__name__}: {e}") from None


@dataclass
class TransformationModelOutput(ModelOutput):
    """What diffusers' class returns, field for field; ``out[0]`` is ``projection_state``, what pipelines read.

    projection_state: (B, T, project_dim) the states the UNet cross-attends to, one per position (padding too).
    last_hidden_state: (B, T, hidden_size) the last layer's output.
    hidden_states: the embeddings' output and each layer's, (B, T, hidden_size) each; always set with
        ``has_pre_transformation``, as diffusers does.
    attentions: each layer's attention probabilities, (B, heads, T, T) each.
    """

    projection_state: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class AltDiffusionTextModel(AltCLIPTextModel):
    """AltDiffusion's text encoder: AltCLIP's text tower with the head diffusers' ``RobertaSeriesModelWithTransformation``
    has, taking the same inputs and returning the same output.

    ``from_pretrained`` reads that class's checkpoints unchanged (a pipeline's ``text_encoder`` folder, or the
    pipeline with ``subfolder="text_encoder"``), ``save_pretrained`` writes them. Prompts padded to the tokenizer's
    77 tokens run on packed tokens (``encode_all_positions``): each prompt costs its own tokens plus one.
    """

    config: AltDiffusionTextConfig
    config_class = AltDiffusionTextConfig
    weight_map = WEIGHTS
    checkpoint_prefix = ""
    # What diffusers' class skips when loading (its _keys_to_ignore_on_load_unexpected): the XLM-R pooler and a
    # CLIP logit scale some checkpoints carry.
    ignored_weights = re.compile(r"pooler|logit_scale")

    def __init__(self, config: AltDiffusionTextConfig, *, initialize: bool = True):
        super().__init__(config, initialize=False)
        if config.has_pre_transformation:
            self.transformation_pre = nn.Linear(config.hidden_size, config.project_dim)
        else:
            self.final_norm = None  # type: ignore[assignment]  # diffusers' class has pre_LN only beside transformation_pre
        self._built(initialize)

    def forward(  # type: ignore[override]  # diffusers' class's arguments, in its order
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> TransformationModelOutput | tuple:
        if encoder_hidden_states is not None or encoder_attention_mask is not None:
            raise ValueError("AltDiffusion's text encoder is an encoder: it takes no encoder_hidden_states")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        keep_hidden = output_hidden_states or config.has_pre_transformation
        if all(x is None for x in (token_type_ids, position_ids, head_mask, inputs_embeds)) and not output_attentions:
            h, hidden_states = self.encode_all_positions(input_ids, attention_mask, output_hidden_states=keep_hidden)
            attentions = None
        else:  # what the packed path does not take: the padded batch, as given
            h, hidden_states, attentions = self.encode(
                input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=keep_hidden,
            )  # fmt: skip
        if config.has_pre_transformation:
            assert hidden_states is not None  # keep_hidden asked for them
            projection = self.project(hidden_states[-2])
        else:
            projection = self.project(h)
        out = TransformationModelOutput(
            projection_state=projection, last_hidden_state=h, hidden_states=hidden_states, attentions=attentions
        )
        return out if (config.use_return_dict if return_dict is None else return_dict) else out.to_tuple()

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head: hidden states (..., hidden_size) -> the UNet's conditioning (..., project_dim)."""
        if self.config.has_pre_transformation:
            return self.transformation_pre(self.final_norm(hidden))
        return self.transformation(hidden)

    def conditioning_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, project_dim) the states the UNet cross-attends to: ``projection_state``."""
        out = self.forward(input_ids, attention_mask, return_dict=True)
        assert isinstance(out, TransformationModelOutput) and out.projection_state is not None  # forward sets it
        return out.projection_state

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(
            "AltDiffusion's text encoder has no pooled embedding: the UNet reads every token (conditioning_states)"
        )

    @property
    def text_model(self) -> _ClipSkipHead:
        """What diffusers' pipelines reach for when given ``clip_skip``: they take the hidden state ``clip_skip``
        layers before the last and apply ``text_encoder.text_model.final_layer_norm`` to it, CLIP's last step.
        Here that step is this encoder's head (``project``), so ``clip_skip=0`` conditions as no clip skip does
        (with ``has_pre_transformation``, ``clip_skip=1`` does), and ``clip_skip=k`` on the head applied to the
        output of layer L - k. diffusers' own class has no ``text_model`` and fails there."""
        return _ClipSkipHead(self.project)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "10GB",
        safe_serialization: bool = True,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> Path:
        """Writes config.json and safetensors weights as diffusers' class writes them (its class name in
        ``architectures``, transformers' tensor names), so that it and this class read them. Other keywords
        (``variant``, ``is_main_process``, ...) are accepted and have no effect."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not offered; upload the folder with huggingface_hub")
        if not safe_serialization:
            raise NotImplementedError("Only safetensors are written (safe_serialization=True)")
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.dtype = str(self.dtype).removeprefix("torch.")
        config.architectures = [DIFFUSERS_CLASS]
        config.save_pretrained(path)
        ckpt.save_tensors(ckpt.to_checkpoint(self, self.weight_map), path, max_shard_size=max_shard_size)
        return path


class _ClipSkipHead:
    """``text_model`` of a CLIP text encoder as far as diffusers' clip skip reads it: ``final_layer_norm``."""

    def __init__(self, head):
        self.final_layer_norm = head
