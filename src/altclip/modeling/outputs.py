"""Model outputs: dataclasses that are also ordered mappings, as transformers' ``ModelOutput`` is.

The fields and their order are those of transformers' outputs. As there, a field that is None is not a key: iteration
and ``keys()`` give the names of the fields that are set, ``outputs["pooler_output"]`` reads one, ``outputs[0]`` and
``outputs[1:]`` index the tuple of the values that are set, and ``to_tuple()`` gives that tuple. So
``for k in out: out[k]``, ``model(**inputs)[0]`` and ``logits_per_image, logits_per_text, *rest = out.to_tuple()``
work as transformers' users expect. The classes are registered with ``torch.export``, so exported graphs return them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import Field, dataclass, fields
from typing import Any, ClassVar

import torch


class ModelOutput(OrderedDict):
    """Base of the output dataclasses: the mapping holds the fields that are not None, kept in step with them."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # each subclass is a dataclass

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if value is not None and name in self.__dataclass_fields__:
            super().__setitem__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        """The values that are set, in field order (a nested output becomes a tuple too, as in CLIP's outputs)."""
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())

    def __reduce__(self):  # pickle and copy.deepcopy through the dataclass fields, not the dict
        return type(self), tuple(getattr(self, f.name) for f in fields(self))


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


for _cls in (TextModelOutput, VisionModelOutput, AltCLIPOutput):
    torch.export.register_dataclass(_cls, serialized_type_name=f"altclip.modeling.outputs.{_cls.__name__}")
