"""The text tower: XLM-RoBERTa with AltCLIP's ``pre_LN`` and ``transformation`` on top.

Post-norm transformer layers (as in BERT/RoBERTa), learned absolute positions numbered from the padding index
as fairseq does, and the CLS state mapped to the width of the CLIP text state it was distilled from.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from altclip.loading import checkpoint as ckpt
from altclip.loading.pretrained import PreTrainedModel
from altclip.modeling.config import AltCLIPTextConfig
from altclip.modeling.layers import (
    MLP,
    Attention,
    Packing,
    checks_enabled,
    expand_head_mask,
    graph_mode,
    init_layer_norm,
    init_linear,
    padding_mask,
    run_layers,
)
from altclip.modeling.outputs import TextModelOutput


class TextEmbeddings(nn.Module):
    def __init__(self, config: AltCLIPTextConfig):
        super().__init__()
        self.pad = config.pad_token_id
        # An nn.Embedding; quantization (include_embeddings) puts its int8 embedding module here instead.
        self.token: nn.Module = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_ids(self, input_ids: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
        """RoBERTa positions: real tokens count up from pad + 1, padding tokens stay at the padding index."""
        if input_ids is None:  # embeddings given directly: no way to tell padding, so number every position
            return torch.arange(self.pad + 1, self.pad + 1 + length, device=device)[None]
        real = input_ids.ne(self.pad).int()
        return (torch.cumsum(real, dim=1) * real).long() + self.pad  # (B, T)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        x = self.token(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        if position_ids is None:
            position_ids = self.position_ids(input_ids, x.shape[1], x.device)
        x = x + (self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids))
        x = x + self.position(position_ids)
        return self.dropout(self.norm(x))


class TextLayer(nn.Module):
    """Post-norm: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, config: AltCLIPTextConfig):
        super().__init__()
        self.attn = Attention(config.hidden_size, config.num_attention_heads, config.attention_probs_dropout_prob)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        packing: Packing | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, weights = self.attn(x, mask, head_mask, need_weights, packing)
        x = self.attn_norm(x + self.dropout(y))
        x = self.mlp_norm(x + self.dropout(self.mlp(x)))
        return x, weights


class AltCLIPTextModel(PreTrainedModel):
    """The AltCLIP text encoder. ``pooler_output`` is the CLS token after ``pre_LN`` and ``transformation``.

    ``AltCLIPTextModel(config)`` is randomly initialised (``init_weights``); ``initialize=False`` leaves the weights
    for a checkpoint to fill, as ``from_pretrained`` does.
    """

    config: AltCLIPTextConfig
    config_class = AltCLIPTextConfig
    weight_map = ckpt.TEXT_WEIGHTS
    checkpoint_prefix = "text_model."
    layer_stacks = {"layers": "num_hidden_layers"}
    input_modalities = ("text",)
    _no_split_modules = ["TextEmbeddings", "TextLayer"]

    def __init__(self, config: AltCLIPTextConfig, *, initialize: bool = True):
        super().__init__(config)
        if config.position_embedding_type != "absolute":
            raise NotImplementedError(
                f"position_embedding_type={config.position_embedding_type!r} is not supported: no released AltCLIP "
                "checkpoint uses relative position embeddings (transformers 5 dropped them too); use 'absolute'"
            )
        self.embeddings = TextEmbeddings(config)
        self.layers = nn.ModuleList(TextLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # "pre_LN" in checkpoints
        self.transformation = nn.Linear(config.hidden_size, config.project_dim)
        self._built(initialize)

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear(module, std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                init_layer_norm(module)

    @classmethod
    def from_xlm_roberta(
        cls, name_or_path: str | os.PathLike, project_dim: int, *, revision: str | None = None
    ) -> AltCLIPTextModel:
        """A text tower whose encoder is a pretrained XLM-RoBERTa (``xlm-roberta-large``, as AltCLIP started from),
        with a fresh ``pre_LN`` and ``transformation`` mapping to ``project_dim``: the student of teacher learning.
        The masked-language-model head and the pooler of the checkpoint are not used."""
        from altclip.loading.hub import resolve_file
        from altclip.loading.pretrained import checkpoint_files
        from altclip.modeling.config import ConfigError, read_config_file

        raw = read_config_file(resolve_file(name_or_path, "config.json", revision=revision))
        if raw.get("model_type") not in ("xlm-roberta", "roberta"):
            raise ConfigError(f"{name_or_path} is not an XLM-RoBERTa checkpoint (model_type {raw.get('model_type')!r})")
        config = AltCLIPTextConfig.from_hf_dict({**raw, "model_type": cls.config_class.model_type,
                                                 "project_dim": project_dim}, source=f"{name_or_path}/config.json")  # fmt: skip
        files = ckpt.TensorFiles(checkpoint_files(name_or_path, revision=revision))
        bare = not any(k.startswith("roberta.") for k in files.keys())  # XLMRobertaModel saves without the prefix
        view = ckpt.RenamedTensors(files, (lambda k: "roberta." + k) if bare else (lambda k: k))
        cls._check_depth(config, ckpt.layer_counts(view.keys(), ckpt.TEXT_WEIGHTS), f"XLM-R checkpoint {name_or_path}")
        model = cls(config)  # randomly initialised: pre_LN and transformation keep these values
        ckpt.load_weights(
            model, view, ckpt.TEXT_WEIGHTS, dtype=torch.float32, source=f"XLM-R checkpoint {name_or_path}",
            ignore=re.compile(r"(^|\.)(lm_head|pooler)\."), missing_ok=re.compile(r"^(final_norm|transformation)\."),
        )  # fmt: skip
        return model.eval()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.token

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replaces the word-embedding table (quantization stores it in int8)."""
        self.embeddings.token = value

    def encoder_layers(self) -> nn.ModuleList:
        """The transformer layers, in order: what quantization and FSDP work on one at a time."""
        return self.layers

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        packing: Packing | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """The XLM-R encoder alone: last layer output (B, T, hidden), hidden states, attentions. With ``packing``,
        the layers see only the real tokens, and the output is (real tokens, hidden)."""
        self.check_inputs(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (B, T, C)
        mask = padding_mask(attention_mask, x.dtype)
        if packing is not None:
            x = packing.pack(x)  # (N, C)
        head_masks = expand_head_mask(
            None if head_mask is None else head_mask.to(x.dtype), len(self.layers), self.config.num_attention_heads
        )
        return run_layers(
            self.layers,
            x,
            mask,
            head_masks,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            gradient_checkpointing=self.gradient_checkpointing and self.training,
            packing=packing,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> TextModelOutput | tuple:
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        h, hidden_states, attentions = self.encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        projected = self.transformation(self.final_norm(h))  # (B, T, project_dim)
        cls = projected[:, 0]
        out = TextModelOutput(
            last_hidden_state=projected,
            pooler_output=cls,
            hidden_states=hidden_states,
            attentions=attentions,
            projection_state=cls,
        )
        return out if (self.config.use_return_dict if return_dict is None else return_dict) else out.to_tuple()

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, project_dim) ``pooler_output`` without computing on padding.

        The real tokens of a right-padded batch are packed into one (tokens, C) matrix, so the linear layers (nearly
        all of the work) run on them alone, in full-size matrix products; attention re-pads around itself. ``pre_LN``
        and ``transformation`` run on the CLS tokens only. Padding is masked out of attention anyway, so this
        equals ``forward(...).pooler_output`` up to float round-off. A graph being recorded (CUDA graphs, export)
        takes the padded path, whose shapes do not depend on the mask's values.
        """
        packing = None
        if attention_mask is not None and attention_mask.shape == input_ids.shape and not graph_mode():
            lengths = attention_mask.sum(1)  # else encode says what is wrong
            if int(lengths.min()) < input_ids.shape[1] and _right_padded(attention_mask, lengths):
                packing = Packing(attention_mask)
        h, _, _ = self.encode(input_ids, attention_mask, packing=packing)
        cls = h[packing.first] if packing is not None else h[:, 0]
        return self.transformation(self.final_norm(cls))

    def conditioning_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, project_dim) ``transformation`` of every token's last hidden state, *without* ``pre_LN``: the
        per-token states AltDiffusion's UNet cross-attends to (padding positions included: the UNet reads all
        of them). Computed on packed tokens, see ``encode_all_positions``."""
        h, _ = self.encode_all_positions(input_ids, attention_mask)
        return self.transformation(h)

    def encode_all_positions(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """``encode`` for every position of a right-padded batch, padding included, computing each sequence's
        padding once: the last layer's output (B, T, hidden) and, if asked, the hidden states (each (B, T, hidden)).

        Under the attention mask a padding position attends to its sequence's real tokens and no position attends
        to it, and every padding position of a sequence holds the same token at the same position (RoBERTa numbers
        padding with the padding index), so all of them compute the same state. The real tokens and the first
        padding position of each sequence are packed into one matrix (``Packing`` with ``rows``), and that
        position's state is copied to the padding after it: a prompt of 12 tokens padded to 77 costs 13 rows, not
        77. Without a mask, with padding elsewhere than on the right or that is not the padding token, or while a
        graph is recorded, this is ``encode`` on the padded batch, which gives the same values.
        """
        if (
            input_ids is not None
            and attention_mask is not None
            and input_ids.dim() == 2
            and attention_mask.shape == input_ids.shape
            and not graph_mode()
        ):  # else encode says what is wrong, or computes what was asked on the padded batch
            lengths = attention_mask.sum(1)
            padding = attention_mask == 0
            if (
                0 < int(lengths.min()) < input_ids.shape[1]
                and _right_padded(attention_mask, lengths)
                and bool((input_ids[padding] == self.config.pad_token_id).all())
            ):
                return self._encode_all_positions_packed(input_ids, attention_mask, lengths, output_hidden_states)
        h, hidden_states, _ = self.encode(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        return h, hidden_states

    def _encode_all_positions_packed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """``encode_all_positions`` of a right-padded batch whose padding is the padding token."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device)
        rows = positions[None] <= lengths[:, None]  # (B, T) the real tokens and the first padding position
        packing = Packing(attention_mask, rows=rows)
        h, hidden_states, _ = self.encode(
            input_ids, attention_mask, output_hidden_states=output_hidden_states, packing=packing
        )
        # (B * T,) each position's packed row; a padding position after the first takes the first one's row
        spread = torch.cumsum(rows.flatten(), 0) - 1

        def unpack(x: torch.Tensor) -> torch.Tensor:
            return x[spread].view(B, T, -1)  # (N, C) -> (B, T, C)

        return unpack(h), None if hidden_states is None else tuple(map(unpack, hidden_states))

    def check_inputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> None:
        """Clear errors for inputs that would otherwise fail deep inside (an index error in an embedding, which
        on a GPU is a device-side assertion that ends the process's use of the GPU)."""
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, sequence), got {tuple(input_ids.shape)}")
            if input_ids.dtype.is_floating_point:
                raise TypeError(f"input_ids must be integer token ids, got {input_ids.dtype}")
            shape = tuple(input_ids.shape)
        else:
            assert inputs_embeds is not None  # exactly one of the two, checked above
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, sequence, {config.hidden_size}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            shape = tuple(inputs_embeds.shape[:2])
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"Empty batch: input of shape {shape}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, input_ids {shape}")
        if not checks_enabled():
            return
        if input_ids is not None:
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= config.vocab_size:
                raise ValueError(
                    f"input_ids hold token id {high if high >= config.vocab_size else low}, outside this model's "
                    f"vocabulary of {config.vocab_size} tokens (ids 0..{config.vocab_size - 1}); was the text "
                    "tokenized with another model's tokenizer?"
                )
        limit = config.max_position_embeddings - config.pad_token_id - 1
        if position_ids is None and shape[1] > limit:
            raise ValueError(
                f"Sequence of {shape[1]} tokens is longer than this model's limit of {limit} tokens (including <s> "
                "and </s>); truncate it, as the tokenizer does by default (truncation=True, max_length="
                f"{limit})"
            )
        if position_ids is not None and (
            int(position_ids.min()) < 0 or int(position_ids.max()) >= config.max_position_embeddings
        ):
            raise ValueError(f"position_ids must lie in 0..{config.max_position_embeddings - 1}")
        if token_type_ids is not None and (
            int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= config.type_vocab_size
        ):
            raise ValueError(f"token_type_ids must lie in 0..{config.type_vocab_size - 1}")


def _right_padded(attention_mask: torch.Tensor, lengths: torch.Tensor) -> bool:
    """Whether every row is ones up to its length and zeros after (padding on the right only)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return torch.equal(attention_mask.bool(), positions[None] < lengths[:, None])
