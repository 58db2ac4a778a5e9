"""What transformers' tools (peft, accelerate, Trainer, pipelines, training scripts) read off a model, beyond loading
and saving: the members of transformers' ``PreTrainedModel`` that make sense for AltCLIP, with transformers' values
and meanings. ``loading.pretrained.PreTrainedModel`` (the base of the towers and the whole model) mixes them in; the
towers themselves hold only modelling code."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from altclip.modeling.config import AltCLIPTextConfig, _Config

ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


class TransformersModelMixin(nn.Module):
    """transformers' model surface over a model that has a ``config`` (with ``_attn_implementation`` and
    ``get_text_config()``), ``gradient_checkpointing`` flags on its blocks, and input embeddings where it has any."""

    base_model_prefix: ClassVar[str] = "altclip"
    main_input_name: ClassVar[str] = "input_ids"  # the first argument of forward
    input_modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    supports_gradient_checkpointing: ClassVar[bool] = True
    _no_split_modules: ClassVar[list[str]] = []  # blocks accelerate's device_map must keep on one device
    _supports_sdpa: ClassVar[bool] = True
    _keep_in_fp32_modules: ClassVar[set[str]] = set()  # no module needs float32 under a lower dtype
    _keep_in_fp32_modules_strict: ClassVar[set[str]] = set()
    is_encoder_decoder: ClassVar[bool] = False

    config: _Config
    gradient_checkpointing: bool

    @property
    def base_model(self) -> nn.Module:
        return self

    @classmethod
    def can_generate(cls) -> bool:
        """AltCLIP encodes; it does not generate text (there is no ``generate``)."""
        return False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel() for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in skip
        )

    # -----------------------------------------------------------------------------------------------------------
    # Embeddings, attention, gradient checkpointing

    def get_input_embeddings(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} has no input embeddings")

    def set_input_embeddings(self, value: nn.Module) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no input embeddings")

    def get_output_embeddings(self) -> None:
        return None  # no language-model head

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resizes the token embeddings (for tokens added to the tokenizer) and ``vocab_size`` in the config.

        Kept rows keep their values; new rows are the mean of the old ones (``mean_resizing``, as transformers
        does), else drawn with the init std. Returns the embedding.
        """
        old = self.get_input_embeddings()
        if not isinstance(old, nn.Embedding):
            raise NotImplementedError(f"{type(self).__name__} has no token embeddings to resize")
        if new_num_tokens is None:
            new_num_tokens = old.num_embeddings
        if pad_to_multiple_of is not None:
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens == old.num_embeddings:
            return old
        new = nn.Embedding(
            new_num_tokens, old.embedding_dim, padding_idx=old.padding_idx, device=old.weight.device,
            dtype=old.weight.dtype,
        )  # fmt: skip
        kept = min(old.num_embeddings, new_num_tokens)
        text_config = cast("AltCLIPTextConfig", self.config.get_text_config())  # token embeddings: a text tower's
        with torch.no_grad():
            if mean_resizing:
                new.weight[:] = old.weight.mean(0)
            else:
                new.weight.normal_(std=text_config.initializer_range)
            new.weight[:kept] = old.weight[:kept]
        new.weight.requires_grad_(old.weight.requires_grad)
        self.set_input_embeddings(new)
        text_config.vocab_size = new_num_tokens
        return new

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """ "eager" or "sdpa", recorded in the config of this model and of its towers. Both compute the same
        attention; ours runs SDPA unless attention maps are asked for, then the explicit softmax (as "eager")."""
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f'Specified `attn_implementation="{attn_implementation}"` is not supported; use one of '
                f"{', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        for module in self.modules():
            if isinstance(module, TransformersModelMixin):
                module.config._attn_implementation = attn_implementation

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them (training only).

        Checkpointing is non-reentrant; ``gradient_checkpointing_kwargs`` may only confirm that
        (``{"use_reentrant": False}``)."""
        if (gradient_checkpointing_kwargs or {}).get("use_reentrant", False):
            raise ValueError("Only non-reentrant gradient checkpointing is offered (use_reentrant=False)")
        for module in self.modules():
            if isinstance(module, TransformersModelMixin):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, TransformersModelMixin):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    # transformers 5's names for the same switches
    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable
    is_activation_checkpointing = is_gradient_checkpointing

    def enable_input_require_grads(self) -> None:
        """Makes the input embeddings' outputs require grad, so gradients reach adapters (LoRA) or checkpointed
        layers of a frozen model."""
        self.disable_input_require_grads()
        seen: set[int] = set()
        for module in self.modules():
            if not isinstance(module, TransformersModelMixin):
                continue
            try:
                embeddings = module.get_input_embeddings()
            except NotImplementedError:
                continue
            if id(embeddings) not in seen:
                seen.add(id(embeddings))
                hook = embeddings.register_forward_hook(lambda _module, _input, output: output.requires_grad_(True))
                self._require_grads_hooks.append(hook)

    def disable_input_require_grads(self) -> None:
        for hook in getattr(self, "_require_grads_hooks", []):
            hook.remove()
        self._require_grads_hooks: list[RemovableHandle] = []
