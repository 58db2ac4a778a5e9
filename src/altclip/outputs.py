"""Model outputs: dataclasses with attribute access that also index and unpack like tuples.

The fields and their order are those of transformers' outputs, so ``outputs[0]``, ``outputs["pooler_output"]``
and ``logits_per_image, logits_per_text, *rest = outputs`` behave as users of the seed documents expect. As in
transformers, fields that are None are left out of the tuple view.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch


class ModelOutput:
    """Mixin for output dataclasses: tuple-style indexing and unpacking over the fields that are set."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]  # type: ignore[arg-type]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.values()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


@dataclass
class TextModelOutput(ModelOutput):
    """Output of ``AltCLIPTextModel`` (transformers' ``BaseModelOutputWithPoolingAndProjection``).

    last_hidden_state: (B, T, project_dim) ``transformation(pre_LN(h))`` for every token.
    pooler_output: (B, project_dim) the CLS token's row of ``last_hidden_state``.
    hidden_states: embeddings output and each layer's output, (B, T, hidden_size) each.
    attentions: each layer's attention probabilities, (B, heads, T, T) each.
    projection_state: (B, project_dim) the CLS state before ``text_projection``: the state teacher learning matches
        to the CLIP teacher's pooled text state (transformers documents this field but leaves it empty).
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    projection_state: torch.Tensor | None = None


@dataclass
class VisionModelOutput(ModelOutput):
    """Output of ``AltCLIPVisionModel`` (transformers' ``BaseModelOutputWithPooling``).

    last_hidden_state: (B, 1 + patches, hidden_size) the last layer's output.
    pooler_output: (B, hidden_size) ``post_layernorm`` of the class token.
    hidden_states: the input to the first layer (after ``pre_layrnorm``) and each layer's output.
    attentions: each layer's attention probabilities, (B, heads, N, N) each.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class AltCLIPOutput(ModelOutput):
    """Output of ``AltCLIPModel.forward``.

    loss: symmetric contrastive (InfoNCE) loss, when ``return_loss`` is set.
    logits_per_image: (images, texts) scaled cosine similarities; ``logits_per_text`` is its transpose.
    text_embeds / image_embeds: L2-normalised projected embeddings.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: TextModelOutput | None = None
    vision_model_output: VisionModelOutput | None = None
