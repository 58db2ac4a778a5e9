"""The image tower: CLIP's Vision Transformer (ViT-L/14 in BAAI/AltCLIP, ViT-H/14 in AltCLIP-m18).

Patches plus a class token, learned positions, a layer norm before the first layer, pre-norm layers, and the
class token's final state layer-normed as the pooled output.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from altclip.loading import checkpoint as ckpt
from altclip.loading.pretrained import PreTrainedModel
from altclip.modeling.config import AltCLIPVisionConfig
from altclip.modeling.layers import PreNormLayer, init_layer_norm, init_linear, run_layers
from altclip.modeling.outputs import VisionModelOutput


class VisionEmbeddings(nn.Module):
    def __init__(self, config: AltCLIPVisionConfig):
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.grid = config.image_size // config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.patch = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )
        self.position = nn.Embedding(self.grid**2 + 1, config.hidden_size)

    def positions(self, height: int, width: int) -> torch.Tensor:
        """(1 + patches, C) position embeddings; the patch grid resized bicubically for other image sizes."""
        table = self.position.weight
        rows, cols = height // self.patch_size, width // self.patch_size
        if (rows, cols) == (self.grid, self.grid):
            return table
        C = table.shape[-1]
        grid = table[1:].reshape(1, self.grid, self.grid, C).permute(0, 3, 1, 2)  # (1, C, grid, grid)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, C)])

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        B, _, H, W = pixel_values.shape
        x = self.patch(pixel_values.to(self.patch.weight.dtype))  # (B, C, rows, cols)
        x = x.flatten(2).transpose(1, 2)  # (B, rows * cols, C)
        x = torch.cat([self.class_embedding.expand(B, 1, -1), x], dim=1)  # (B, 1 + rows * cols, C)
        return x + (self.positions(H, W) if interpolate_pos_encoding else self.position.weight)


class AltCLIPVisionModel(PreTrainedModel):
    """The AltCLIP image encoder. ``pooler_output`` is the layer-normed class token.

    ``AltCLIPVisionModel(config)`` is randomly initialised (``init_weights``); ``initialize=False`` leaves the
    weights for a checkpoint to fill, as ``from_pretrained`` does.
    """

    config: AltCLIPVisionConfig
    config_class = AltCLIPVisionConfig
    weight_map = ckpt.VISION_WEIGHTS
    checkpoint_prefix = "vision_model."
    layer_stacks = {"layers": "num_hidden_layers"}
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["VisionEmbeddings", "PreNormLayer"]

    def __init__(self, config: AltCLIPVisionConfig, *, initialize: bool = True):
        super().__init__(config)
        self.embeddings = VisionEmbeddings(config)
        self.pre_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # "pre_layrnorm" in checkpoints
        self.layers = nn.ModuleList(
            PreNormLayer(
                config.hidden_size,
                config.num_attention_heads,
                config.intermediate_size,
                config.hidden_act,
                config.layer_norm_eps,
                config.attention_dropout,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.post_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self._built(initialize)

    def init_weights(self) -> None:
        """CLIP's initialisation: standard deviations scaled by width and depth."""
        c = self.config
        factor, width = c.initializer_factor, c.hidden_size
        attn_std = width**-0.5 * (2 * c.num_hidden_layers) ** -0.5 * factor
        nn.init.normal_(self.embeddings.class_embedding, std=width**-0.5 * factor)
        nn.init.normal_(self.embeddings.patch.weight, std=c.initializer_range * factor)
        nn.init.normal_(self.embeddings.position.weight, std=c.initializer_range * factor)
        for layer in cast(Iterable[PreNormLayer], self.layers):
            init_linear(layer.attn.qkv, attn_std)
            init_linear(layer.attn.out, width**-0.5 * factor)
            init_linear(layer.mlp.fc1, (2 * width) ** -0.5 * factor)
            init_linear(layer.mlp.fc2, attn_std)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                init_layer_norm(module)

    def get_input_embeddings(self) -> nn.Conv2d:
        return self.embeddings.patch

    def set_input_embeddings(self, value: nn.Conv2d) -> None:  # type: ignore[override]  # the patch convolution
        self.embeddings.patch = value

    def encoder_layers(self) -> nn.ModuleList:
        """The transformer layers, in order: what quantization and FSDP work on one at a time."""
        return self.layers

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> VisionModelOutput | tuple:
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        self._check_pixels(pixel_values, interpolate_pos_encoding)
        x = self.pre_norm(self.embeddings(pixel_values, interpolate_pos_encoding))
        x, hidden_states, attentions = run_layers(
            self.layers,
            x,
            None,
            [None] * len(self.layers),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            gradient_checkpointing=self.gradient_checkpointing and self.training,
        )
        out = VisionModelOutput(
            last_hidden_state=x,
            pooler_output=self.post_norm(x[:, 0]),
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return out if (self.config.use_return_dict if return_dict is None else return_dict) else out.to_tuple()

    def _check_pixels(self, pixel_values: torch.Tensor | None, interpolate_pos_encoding: bool) -> None:
        c = self.config
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape (batch, {c.num_channels}, height, width), got {tuple(pixel_values.shape)}"
            )
        B, C, H, W = pixel_values.shape
        if B == 0:
            raise ValueError("Empty batch: pixel_values holds no images")
        if C != c.num_channels:
            raise ValueError(
                f"pixel_values has {C} channels, this model takes {c.num_channels} (shape (batch, channels, height, "
                f"width); was a channels-last array passed?)"
            )
        if interpolate_pos_encoding:
            if H < c.patch_size or W < c.patch_size:
                raise ValueError(f"Images of {H}x{W} are smaller than one {c.patch_size}x{c.patch_size} patch")
        elif (H, W) != (c.image_size, c.image_size):
            raise ValueError(
                f"Input image size ({H}*{W}) doesn't match model ({c.image_size}*{c.image_size}); resize the images "
                "(the image processor does) or pass interpolate_pos_encoding=True"
            )
        if not pixel_values.dtype.is_floating_point:
            raise TypeError(f"pixel_values must be a float tensor, got {pixel_values.dtype}")
