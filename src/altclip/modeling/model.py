"""AltCLIPModel: both towers, their projections into one embedding space, and the contrastive head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from altclip.loading import checkpoint as ckpt
from altclip.loading.pretrained import PreTrainedModel
from altclip.modeling.config import AltCLIPConfig
from altclip.modeling.outputs import AltCLIPOutput
from altclip.modeling.text import AltCLIPTextModel
from altclip.modeling.vision import AltCLIPVisionModel


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a (texts, images) logit matrix whose diagonal holds the matching pairs."""
    target = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, target) + F.cross_entropy(logits_per_text.t(), target)) / 2


class AltCLIPModel(PreTrainedModel):
    """Both towers and the contrastive head. ``AltCLIPModel(config)`` is randomly initialised, as transformers
    initialises it (``init_weights``); ``initialize=False`` leaves the weights for a checkpoint to fill, as
    ``from_pretrained`` does."""

    config: AltCLIPConfig
    config_class = AltCLIPConfig
    weight_map = ckpt.MODEL_WEIGHTS
    layer_stacks = {
        "text_model.layers": "text_config.num_hidden_layers",
        "vision_model.layers": "vision_config.num_hidden_layers",
    }
    _no_split_modules = [*AltCLIPTextModel._no_split_modules, *AltCLIPVisionModel._no_split_modules]

    def __init__(self, config: AltCLIPConfig, *, initialize: bool = True):
        super().__init__(config)
        self.text_model = AltCLIPTextModel(config.text_config, initialize=False)
        self.vision_model = AltCLIPVisionModel(config.vision_config, initialize=False)
        self.text_projection = nn.Linear(config.text_config.project_dim, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self._built(initialize)

    def _init_head(self) -> None:
        factor = self.config.initializer_factor
        nn.init.normal_(self.text_projection.weight, std=self.config.text_config.project_dim**-0.5 * factor)
        nn.init.normal_(self.visual_projection.weight, std=self.config.vision_config.hidden_size**-0.5 * factor)
        with torch.no_grad():
            self.logit_scale.fill_(self.config.logit_scale_init_value)

    def init_weights(self) -> None:
        self.text_model.init_weights()
        self.vision_model.init_weights()
        self._init_head()

    def encoder_layers(self) -> list[nn.Module]:
        """The transformer layers of the text tower, then of the image tower."""
        return [*self.text_model.encoder_layers(), *self.vision_model.encoder_layers()]

    def lock_image_tower(self) -> AltCLIPModel:
        """Freezes the image tower and its projection (their parameters take no gradients), as contrastive training
        on a fixed image tower does (open_clip's name). Returns the model."""
        for part in (self.vision_model, self.visual_projection):
            part.requires_grad_(False)
        return self

    def lock_text_tower(self) -> AltCLIPModel:
        """Freezes the text tower and its projection (their parameters take no gradients). Returns the model."""
        for part in (self.text_model, self.text_projection):
            part.requires_grad_(False)
        return self

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's token embeddings (what peft and ``resize_token_embeddings`` work on)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor:
        """(B, projection_dim) text embeddings, not normalised: ``text_projection`` of the pooled CLS state.

        Padded batches skip the work on padding (see ``AltCLIPTextModel.pooled``); the result equals the full
        forward's up to float round-off. The result is a tensor whatever ``return_dict`` says, as in transformers
        4.x, where that argument only shaped the tower's internal output; it is accepted so that callers written
        for that signature run unchanged.
        """
        simple = position_ids is None and token_type_ids is None
        if simple and input_ids is not None and not (output_attentions or output_hidden_states):
            return self.text_projection(self.text_model.pooled(input_ids, attention_mask))
        out = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        return self.text_projection(out.pooler_output)

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> torch.Tensor:
        """(B, projection_dim) image embeddings, not normalised: ``visual_projection`` of the pooled class token (a
        tensor whatever ``return_dict`` says, see ``get_text_features``)."""
        out = self.vision_model(
            pixel_values=pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        return self.visual_projection(out.pooler_output)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> AltCLIPOutput | tuple:
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "AltCLIPModel.forward needs both input_ids and pixel_values; for one modality use "
                "get_text_features or get_image_features"
            )
        vision = self.vision_model(
            pixel_values=pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        text = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        image_embeds = self.visual_projection(vision.pooler_output)
        text_embeds = self.text_projection(text.pooler_output)
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)

        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * self.logit_scale.exp()  # (texts, images)
        loss = None
        if return_loss:
            if logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError(
                    f"return_loss needs matching image-text pairs, got {logits_per_text.shape[0]} texts and "
                    f"{logits_per_text.shape[1]} images"
                )
            loss = contrastive_loss(logits_per_text)
        out = AltCLIPOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=vision,
        )
        return out if (self.config.use_return_dict if return_dict is None else return_dict) else out.to_tuple()
