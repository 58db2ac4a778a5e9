"""``from_pretrained`` / ``save_pretrained`` shared by the towers and the whole model."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from altclip import checkpoint as ckpt
from altclip.config import CONFIG_NAME, AltCLIPConfig, _Config, read_config_file
from altclip.hub import resolve_file, resolve_first
from altclip.layers import Attention

M = TypeVar("M", bound="PreTrainedModel")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """A torch dtype, "auto", or None, from a dtype or its name ("bfloat16", "torch.float16", "fp32", ...)."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of float32, float16, bfloat16 or 'auto'")
    return _DTYPES[name]


class PreTrainedModel(nn.Module):
    """A model built from a config that loads and saves Hugging Face checkpoint folders.

    Subclasses set ``config_class`` and ``weight_map`` (checkpoint name -> parameter name, see ``checkpoint.py``)
    and, for a tower, ``checkpoint_prefix``: where its tensors live inside a full AltCLIP checkpoint.
    """

    config_class: ClassVar[type[_Config]]
    weight_map: ClassVar[ckpt.WeightMap]
    checkpoint_prefix: ClassVar[str] = ""

    def __init__(self, config: _Config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs an {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.gradient_checkpointing = False

    def init_weights(self) -> None:
        """Random initialisation, as transformers does it for this architecture: the last step of building a model,
        which ``initialize=False`` (loading) skips."""
        raise NotImplementedError

    def set_dropout(self, p: float) -> None:
        """Sets every dropout probability (hidden states and attention probabilities) to ``p``; 0 makes training
        runs reproducible bit for bit."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(module, Attention):
                module.dropout = p

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them (training only)."""
        for module in self.modules():
            if isinstance(module, PreTrainedModel):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, PreTrainedModel):
                module.gradient_checkpointing = False

    # -----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        config: _Config | None = None,
        revision: str | None = None,
        quantization_config: Any = None,
    ) -> M:
        """Loads a checkpoint folder or Hugging Face Hub model id (downloaded into the Hub cache).

        dtype: a torch dtype (or its name) to cast the weights to, "auto" for the dtype they were saved in, or
            None for float32, the exact path.
        device: where the weights go (default CPU).
        config: overrides the checkpoint's config.json.
        quantization_config: quantize after loading: a method name ("int8_dynamic", "int8_weight_only",
            "int4_weight_only"), a dict, or an ``altclip.quantize.QuantizationConfig``.

        Reads model.safetensors, sharded model.safetensors.index.json, or legacy pytorch_model.bin. The model is
        built without initialising its weights and filled from the checkpoint; any missing, unexpected or
        wrong-shaped tensor is an error naming the key. The model is returned in eval mode.
        """
        raw = read_config_file(resolve_file(name_or_path, CONFIG_NAME, revision=revision))
        if config is None:
            config = cls.config_class.from_hf_dict(raw, source=f"{name_or_path}/{CONFIG_NAME}")
        if "quantization_config" in raw:
            return cls._from_quantized(
                name_or_path, config, raw["quantization_config"], device=device, revision=revision
            )
        files = ckpt.TensorFiles(checkpoint_files(name_or_path, revision=revision))

        dtype = parse_dtype(dtype)
        if dtype == "auto":
            saved = raw.get("dtype") or raw.get("torch_dtype")
            dtype = parse_dtype(saved) if saved not in (None, "auto") else (files.float_dtype() or torch.float32)
        with empty_weights():
            model = cls(config, initialize=False)  # type: ignore[call-arg]
        # A tower can be read out of a full AltCLIP checkpoint; a standalone vision tower saved by transformers 4
        # keeps the `vision_model.` prefix, one saved by transformers 5 drops it.
        prefix = ""
        if cls.checkpoint_prefix and (
            raw.get("model_type") == AltCLIPConfig.model_type
            or any(k.startswith(cls.checkpoint_prefix) for k in files.keys())
        ):
            prefix = cls.checkpoint_prefix
        ckpt.load_weights(
            model,
            files,
            cls.weight_map,
            prefix=prefix,
            dtype=dtype or torch.float32,
            device=device,
            source=f"Checkpoint {name_or_path}",
        )
        model.eval()
        if quantization_config is not None:
            from altclip.quantize import quantize

            quantize(model, quantization_config)
        return model

    @classmethod
    def _from_quantized(cls: type[M], name_or_path, config: _Config, settings: dict, *, device, revision) -> M:
        """A checkpoint written by ``save_pretrained`` of a quantized model: loads without re-quantizing."""
        from altclip.quantize import QUANTIZED_WEIGHTS, QuantizationConfig, prepare_for_quantized_state

        qconfig = QuantizationConfig.coerce(settings)
        if qconfig.backend == "torchao":
            import torchao.quantization  # noqa: F401  (registers its tensor types as safe to load)
        with empty_weights():
            model = cls(config, initialize=False)  # type: ignore[call-arg]
        prepare_for_quantized_state(model, qconfig)
        path = resolve_file(name_or_path, QUANTIZED_WEIGHTS, revision=revision)
        with warnings.catch_warnings():  # quantized tensors still go through TypedStorage, which warns
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=device or "cpu", weights_only=True)
        model.load_state_dict(state, strict=True, assign=True)
        model.quantization_config, model.quantization_backend = qconfig, qconfig.backend
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, *, max_shard_size: int | str = "10GB") -> Path:
        """Writes config.json and safetensors weights under the checkpoint names transformers reads (a quantized
        model writes its own format, see ``altclip.quantize.save_quantized``)."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        if getattr(self, "quantization_config", None) is not None:
            from altclip.quantize import save_quantized

            save_quantized(self, path)
            return path
        config = self.config
        if isinstance(config, AltCLIPConfig):
            config = dataclasses.replace(config, dtype=str(self.dtype).removeprefix("torch."))
        config.save_pretrained(path)
        ckpt.save_tensors(ckpt.to_checkpoint(self, self.weight_map), path, max_shard_size=max_shard_size)
        return path


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Models built inside have their parameters on the meta device, and no initialiser runs: the skeleton that
    loading fills. Our towers skip their init step with ``initialize=False``; PyTorch's own modules (``nn.Linear``,
    ``nn.Embedding``, ...) initialise in their constructors, which ``_SkipInitialisers`` turns off here."""
    with torch.device("meta"), _SkipInitialisers():
        yield


class _SkipInitialisers(TorchFunctionMode):
    """Returns the tensor untouched from the ``torch.nn.init`` functions that draw values (``uniform_``,
    ``normal_``, ``kaiming_uniform_``, ...; PyTorch lets a torch function mode intercept them): their values would
    be replaced, and on the meta device ``normal_`` even costs an import of torch._dynamo (about 2 s). The mode holds
    only inside its ``with`` block and on its own thread; ``torch.nn.init`` itself is not changed."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def checkpoint_files(name_or_path: str | os.PathLike, *, revision: str | None = None) -> list[Path]:
    """The weight files of a checkpoint: safetensors first, then legacy pickles; shards through their index."""
    found = resolve_first(name_or_path, ckpt.WEIGHT_FILES, revision=revision, what="model weights")
    if not found.name.endswith(".index.json"):
        return [found]
    return [
        resolve_file(name_or_path, shard.name, revision=revision)  # type: ignore[misc]
        for shard in ckpt.shard_files(found)
    ]
