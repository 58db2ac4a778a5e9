"""Quantized models: smaller weights, and on CPU faster matrix products.

    model = AltCLIPModel.from_pretrained("BAAI/AltCLIP", quantization_config="int8_dynamic")              # CPU
    model = AltCLIPModel.from_pretrained("BAAI/AltCLIP", dtype=torch.bfloat16, device="cuda",
                                         quantization_config={"method": "int4_weight_only", "group_size": 128})

Methods (the linear layers of both towers; the projections and the patch embedding stay as they are):

- ``int8_dynamic``: int8 weights, activations quantized per batch at run time. On CPU this uses PyTorch's own
  dynamic quantization (its x86/fbgemm kernels run about twice as fast as float32 here; torchao's version of this
  method is unoptimised on CPU, measured 25x slower than float32), on CUDA torchao's
  ``Int8DynamicActivationInt8WeightConfig``.
- ``int8_weight_only``: int8 weights, float activations (torchao): a quarter of the memory, float speed.
- ``int4_weight_only``: 4-bit weights in groups of ``group_size`` (torchao, CUDA only, bfloat16).

``include_embeddings`` also stores the 250,002 x 1024 word-embedding table (about 30% of the parameters) in int8.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

METHODS = ("int8_dynamic", "int8_weight_only", "int4_weight_only")
_TORCHAO_CONFIGS = {
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int4_weight_only": "Int4WeightOnlyConfig",
}


class QuantizationError(ValueError):
    """A quantization method that cannot run here (device, dtype, or a missing or too old torchao)."""


@dataclass
class QuantizationConfig:
    method: str = "int8_dynamic"
    group_size: int = 128  # int4 only: weights per scale
    include_embeddings: bool = False  # also quantize the word-embedding table (int8, per row)
    backend: str = "auto"  # "torch" (PyTorch's dynamic quantization, CPU), "torchao", or "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizationError(f"Unknown quantization method {self.method!r}; supported: {', '.join(METHODS)}")
        if self.backend not in ("auto", "torch", "torchao"):
            raise QuantizationError(f"backend must be 'auto', 'torch' or 'torchao', not {self.backend!r}")
        if self.method != "int8_dynamic" and self.backend == "torch":
            raise QuantizationError(f"{self.method} runs through torchao only")

    @classmethod
    def coerce(cls, value: Any) -> QuantizationConfig:
        """From a config, a method name, a dict ({"method": ...} or transformers' {"quant_type": ...}), or an
        object with ``quant_type`` (like transformers' ``TorchAoConfig``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(method=value)
        if isinstance(value, dict):
            data = dict(value)
        else:
            data = {k: getattr(value, k) for k in ("quant_type", "group_size") if getattr(value, k, None) is not None}
            data.update(getattr(value, "quant_type_kwargs", None) or {})
        if "quant_type" in data:
            data["method"] = data.pop("quant_type")
        known = {"method", "group_size", "include_embeddings", "backend"}
        unknown = set(data) - known
        if unknown:
            raise QuantizationError(f"Unknown quantization settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Quantizable(Protocol):
    """What quantization uses of a model beyond its layers' modules: ``loading.pretrained.PreTrainedModel`` (the
    towers and the whole model) has all of it."""

    config: Any
    quantization_config: QuantizationConfig  # set by quantize, read by save_quantized
    quantization_backend: str

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def encoder_layers(self) -> Iterable[nn.Module]: ...
    def get_input_embeddings(self) -> nn.Module: ...
    def set_input_embeddings(self, value: nn.Module) -> None: ...


Q = TypeVar("Q", bound=Quantizable)


def quantize(model: Q, config: QuantizationConfig | Any) -> Q:
    """Quantizes ``model``'s linear layers in place, as ``config`` says; returns the model."""
    config = QuantizationConfig.coerce(config)
    device = next(model.parameters()).device
    backend = resolve_backend(config, device)
    if config.method == "int4_weight_only" and device.type != "cuda":
        raise QuantizationError(
            "int4_weight_only needs a CUDA GPU (torchao's int4 kernels); on CPU use int8_dynamic (fastest here) or "
            "int8_weight_only (smallest float-speed model)"
        )
    if config.method == "int4_weight_only" and next(model.parameters()).dtype != torch.bfloat16:
        raise QuantizationError("int4_weight_only needs the model in bfloat16: load it with dtype=torch.bfloat16")
    layers = model.encoder_layers()
    if backend == "torch":
        if device.type != "cpu":
            raise QuantizationError("PyTorch's dynamic quantization runs on CPU only; use backend='torchao' on GPU")
        _torch_dynamic(layers)
    else:
        torchao_config = _torchao_config(config)
        from torchao.quantization import quantize_

        for layer in layers:
            quantize_(layer, torchao_config, filter_fn=_is_linear)
    if config.include_embeddings:
        _quantize_embeddings(model)
    model.quantization_config = config
    model.quantization_backend = backend
    return model


def resolve_backend(config: QuantizationConfig, device: torch.device) -> str:
    if config.backend != "auto":
        return config.backend
    return "torch" if config.method == "int8_dynamic" and device.type == "cpu" else "torchao"


QUANTIZED_WEIGHTS = "quantized_model.pt"


def save_quantized(model: Quantizable, directory: Path) -> None:
    """A quantized model's own format: config.json with ``quantization_config``, and its state dict (packed int8
    weights and scales, or torchao tensors) in ``quantized_model.pt``, loaded again without re-quantizing."""
    config = model.config.to_dict()
    config["quantization_config"] = {**model.quantization_config.to_dict(), "backend": model.quantization_backend}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    torch.save(model.state_dict(), directory / QUANTIZED_WEIGHTS)


def prepare_for_quantized_state(model: Quantizable, config: QuantizationConfig) -> None:
    """Gives a freshly built model the module structure of a quantized one (empty quantized layers), so that a
    saved quantized state dict loads into it. torchao's quantized tensors need no structure: they are assigned."""
    if config.backend == "torch":
        import torch.ao.nn.quantized.dynamic as nnqd

        with _quiet_deprecation():
            for layer in model.encoder_layers():
                for name, module in list(layer.named_modules()):
                    if isinstance(module, nn.Linear):
                        parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
                        with torch.device("cpu"):
                            empty = nnqd.Linear(module.in_features, module.out_features, dtype=torch.qint8)
                        setattr(parent, name.rpartition(".")[2], empty)
    if config.include_embeddings:
        import torch.ao.nn.quantized as nnq

        text = _text_tower(model)
        token = text.get_input_embeddings()
        assert isinstance(token, nn.Embedding)  # a model just built: the float table, replaced here
        with _quiet_deprecation(), torch.device("cpu"):
            text.set_input_embeddings(
                nnq.Embedding(token.num_embeddings, token.embedding_dim, padding_idx=token.padding_idx)
            )


def _text_tower(model: Quantizable) -> Quantizable:
    return getattr(model, "text_model", model)


def _is_linear(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear)


def _torch_dynamic(layers: Iterable[nn.Module]) -> None:
    from torch.ao.quantization import quantize_dynamic

    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    with _quiet_deprecation():  # torch.ao.quantization is deprecated in favour of torchao, which is slow here
        for layer in layers:
            quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8, inplace=True)


@contextlib.contextmanager
def _quiet_deprecation():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        yield


def _torchao_config(config: QuantizationConfig):
    try:
        import torchao
        import torchao.quantization as ao
    except ImportError:
        raise QuantizationError(f"{config.method} needs torchao: pip install 'altclip[quantize]'") from None
    name = _TORCHAO_CONFIGS[config.method]
    if not hasattr(ao, name):
        supported = [m for m, n in _TORCHAO_CONFIGS.items() if hasattr(ao, n)]
        raise QuantizationError(
            f"torchao {torchao.__version__} has no {name} (needed for {config.method}); this torchao supports "
            f"{', '.join(supported) or 'none of our methods'}. Install torchao >= 0.10"
        )
    if config.method == "int4_weight_only":
        kwargs: dict[str, Any] = {"group_size": config.group_size}
        if "int4_packing_format" in getattr(getattr(ao, name), "__dataclass_fields__", {}):
            # The tile-packed layout runs on PyTorch's own int4 kernels (tinygemm); torchao's default layout since
            # 0.14 needs a separate kernel package (fbgemm-gpu-genai or mslk).
            kwargs["int4_packing_format"] = "tile_packed_to_4d"
        return getattr(ao, name)(**kwargs)
    return getattr(ao, name)()


def _quantize_embeddings(model: Quantizable) -> None:
    """The word-embedding table in int8 with a scale per row (PyTorch's weight-only embedding quantization)."""
    from torch.ao.quantization import float_qparams_weight_only_qconfig, quantize_dynamic

    text = _text_tower(model)
    holder = nn.Module()
    holder.token = text.get_input_embeddings()
    with _quiet_deprecation():
        quantize_dynamic(holder, {nn.Embedding: float_qparams_weight_only_qconfig}, inplace=True)
    text.set_input_embeddings(holder.get_submodule("token"))
