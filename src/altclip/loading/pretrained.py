"""``from_pretrained`` / ``save_pretrained`` shared by the towers and the whole model."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Unpack, overload

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from altclip.compat.modeling import ATTN_IMPLEMENTATIONS, TransformersModelMixin
from altclip.loading import checkpoint as ckpt
from altclip.loading.hub import HubOptions, resolve_file, resolve_first
from altclip.modeling.config import CONFIG_NAME, AltCLIPConfig, ConfigError, _Config, read_config_file
from altclip.modeling.layers import Attention
from altclip.utils.devices import check_device

if TYPE_CHECKING:
    from altclip.modeling.quantize import QuantizationConfig

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


@overload
def parse_dtype(dtype: None) -> None: ...
@overload
def parse_dtype(dtype: torch.dtype | str) -> torch.dtype | str: ...
def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """A torch dtype, "auto", or None, from a dtype or its name ("bfloat16", "torch.float16", "fp32", ...)."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of float32, float16, bfloat16 or 'auto'")
    return _DTYPES[name]


class PreTrainedModel(TransformersModelMixin):
    """A model built from a config that loads and saves Hugging Face checkpoint folders.

    Subclasses set ``config_class`` and ``weight_map`` (checkpoint name -> parameter name, see ``checkpoint.py``)
    and, for a tower, ``checkpoint_prefix``: where its tensors live inside a full AltCLIP checkpoint. What
    transformers' tools read off a model beyond loading and saving comes from ``compat.modeling``.
    """

    config_class: ClassVar[type[_Config]]
    weight_map: ClassVar[ckpt.WeightMap]
    checkpoint_prefix: ClassVar[str] = ""
    # Each stack of layers (our parameter names before ".{}") -> the config value that counts its layers, which
    # loading checks against the weights before it builds anything.
    layer_stacks: ClassVar[dict[str, str]] = {}
    # Checkpoint keys of tensors this model never uses (a head it does not have), skipped when loading.
    ignored_weights: ClassVar[re.Pattern | None] = None
    # Set on a quantized model (``altclip.modeling.quantize``); a model that was never quantized has neither.
    quantization_config: QuantizationConfig
    quantization_backend: str

    def __init__(self, config: _Config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs an {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.gradient_checkpointing = False
        if config._attn_implementation is None:
            config._attn_implementation = "sdpa"

    def init_weights(self) -> None:
        """Random initialisation, as transformers does it for this architecture: the last step of building a model,
        which ``initialize=False`` (loading) skips."""
        raise NotImplementedError

    def encoder_layers(self) -> Iterable[nn.Module]:
        """The transformer layers, in order: what quantization and FSDP work on one at a time."""
        raise NotImplementedError

    def _built(self, initialize: bool) -> None:
        """The end of a model's ``__init__``: random initialisation unless loading, and transformers 4's
        ``config.gradient_checkpointing = True``, which turns checkpointing on (the key is then dropped from the
        config, as transformers does, so that it is not saved)."""
        if initialize:
            self.init_weights()
        if getattr(self.config, "gradient_checkpointing", False):
            self.gradient_checkpointing_enable()
        if hasattr(self.config, "gradient_checkpointing"):
            del self.config.gradient_checkpointing

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

    # -----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[M],
        pretrained_model_name_or_path: str | os.PathLike | None,
        *,
        config: _Config | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | int | None = None,
        device_map: torch.device | str | int | None = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        subfolder: str = "",
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        output_loading_info: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
        low_cpu_mem_usage: bool | None = None,
        quantization_config: Any = None,
        **config_overrides: Any,
    ) -> M:
        """Loads a checkpoint folder or Hugging Face Hub model id (downloaded into the Hub cache).

        dtype: a torch dtype (or its name) to cast the weights to, "auto" for the dtype they were saved in, or
            None for float32, the exact path. ``torch_dtype`` is the same (transformers' former name).
        device / device_map: where the weights go (default CPU); ``device_map`` takes one device only.
        config: overrides the checkpoint's config.json. Other keywords (``output_hidden_states=True``, ...)
            override single values of it.
        attn_implementation: "sdpa" (default) or "eager", see ``set_attn_implementation``.
        revision, subfolder, cache_dir, local_files_only, token: where on the Hub, as in huggingface_hub.
        output_loading_info: also return transformers' loading report; loading is strict, so its lists are empty.
        state_dict: weights (our parameter names) to use instead of the checkpoint's; then the name may be None.
        low_cpu_mem_usage: accepted for compatibility; loading always builds on the meta device.
        quantization_config: quantize after loading: a method name ("int8_dynamic", "int8_weight_only",
            "int4_weight_only"), a dict, or an ``altclip.modeling.quantize.QuantizationConfig``.

        Reads model.safetensors, sharded model.safetensors.index.json, or legacy pytorch_model.bin. The model is
        built without initialising its weights and filled from the checkpoint; any missing, unexpected or
        wrong-shaped tensor is an error naming the key. The model is returned in eval mode.
        """
        if torch.get_default_device().type == "meta":
            raise RuntimeError(
                "You are using `from_pretrained` with a meta device context manager (`with torch.device('meta')`); "
                "it would load nothing. To build a model without weights, call the class on a config inside that "
                "context instead."
            )
        if torch_dtype is not None:
            if dtype is not None:
                raise TypeError("Pass dtype or torch_dtype, not both")
            dtype = torch_dtype
        if device_map is not None:
            if isinstance(device_map, dict) or device_map in ("auto", "balanced", "sequential"):
                raise NotImplementedError("device_map places the whole model on one device here; pass a device")
            device = device if device is not None else device_map
        if device is not None:
            check_device(device)
        if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f'Specified `attn_implementation="{attn_implementation}"` is not supported; use one of '
                f"{', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        hub = HubOptions(
            revision=revision, subfolder=subfolder, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        name = pretrained_model_name_or_path
        if name is None:
            if config is None or state_dict is None:
                raise ValueError("from_pretrained(None, ...) needs both config= and state_dict=")
            model = cls._from_state_dict(config, state_dict, device=device)
        else:
            raw = read_config_file(resolve_file(name, CONFIG_NAME, **hub))
            if config is None:
                where = f"{name}/{subfolder}" if subfolder else str(name)
                config = cls.config_class.from_hf_dict(raw, source=f"{where}/{CONFIG_NAME}")
            else:
                config = copy.deepcopy(config)
            known = {k: config_overrides.pop(k) for k in list(config_overrides) if hasattr(config, k)}
            config._set_overrides(known)
            if "quantization_config" in raw:
                model = cls._from_quantized(name, config, raw["quantization_config"], device=device, hub=hub)
            elif state_dict is not None:
                model = cls._from_state_dict(config, state_dict, device=device)
            else:
                model = cls._from_checkpoint(name, config, raw, dtype=dtype, device=device, hub=hub)
            model.config.name_or_path = name
        if config_overrides:
            raise TypeError(f"from_pretrained got unexpected keyword arguments: {', '.join(config_overrides)}")
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        model.eval()
        if quantization_config is not None:
            from altclip.modeling.quantize import quantize

            quantize(model, quantization_config)
        if output_loading_info:  # transformers' (model, info): the one return that is not the model
            info: dict[str, Any] = {
                "missing_keys": set(),
                "unexpected_keys": set(),
                "mismatched_keys": set(),
                "error_msgs": [],
            }
            return model, info  # type: ignore[return-value]
        return model

    @classmethod
    def _from_checkpoint(cls: type[M], name, config: _Config, raw: dict, *, dtype, device, hub: HubOptions) -> M:
        files = ckpt.TensorFiles(checkpoint_files(name, **hub))
        dtype = parse_dtype(dtype)
        if dtype == "auto":
            saved = raw.get("dtype") or raw.get("torch_dtype")
            dtype = parse_dtype(saved) if saved not in (None, "auto") else (files.float_dtype() or torch.float32)
        # A tower can be read out of a full AltCLIP checkpoint; a standalone vision tower saved by transformers 4
        # keeps the `vision_model.` prefix, one saved by transformers 5 drops it.
        prefix = ""
        if cls.checkpoint_prefix and (
            raw.get("model_type") == AltCLIPConfig.model_type
            or any(k.startswith(cls.checkpoint_prefix) for k in files.keys())
        ):
            prefix = cls.checkpoint_prefix
        cls._check_depth(config, ckpt.layer_counts(files.keys(), cls.weight_map, prefix), f"Checkpoint {name}")
        model = cls._skeleton(config, f"Checkpoint {name}")
        ckpt.load_weights(
            model,
            files,
            cls.weight_map,
            prefix=prefix,
            dtype=dtype or torch.float32,
            device=device,
            source=f"Checkpoint {name}",
            ignore=cls.ignored_weights,
        )
        return model

    @classmethod
    def _skeleton(cls: type[M], config: _Config, source: str) -> M:
        """The model built without weights (on the meta device) for a checkpoint to fill. A config whose sizes no
        tensor can have (``hidden_size = 2**31``: more bytes than a tensor can address) is a ``ConfigError``."""
        try:
            with empty_weights():
                return cls(config, initialize=False)  # type: ignore[call-arg]  # each model class takes initialize=
        except RuntimeError as e:
            raise ConfigError(
                f"{source}: {CONFIG_NAME} describes a model no tensor can hold ({str(e)[:200]})"
            ) from None

    @classmethod
    def _check_depth(cls, config: _Config, found: dict[str, int], source: str) -> None:
        """The config's layer counts (``layer_stacks``) against the weights', before the model is built."""
        config.validate()
        expected = {}
        for stack, setting in cls.layer_stacks.items():
            owner, _, key = setting.rpartition(".")
            expected[stack] = (setting, getattr(getattr(config, owner) if owner else config, key))
        ckpt.check_depth(found, expected, source)

    @classmethod
    def _from_state_dict(cls: type[M], config: _Config, state_dict: dict[str, torch.Tensor], *, device) -> M:
        model = cls._skeleton(copy.deepcopy(config), "The config")
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model.to(device) if device is not None else model

    @classmethod
    def _from_config(
        cls: type[M], config: _Config, *, dtype: torch.dtype | str | None = None, attn_implementation: str | None = None
    ) -> M:
        """A randomly initialised model from a config (transformers' ``_from_config``, used by auto classes)."""
        model = cls(copy.deepcopy(config))
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        dtype = parse_dtype(dtype)
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model

    @classmethod
    def _from_quantized(cls: type[M], name_or_path, config: _Config, settings: dict, *, device, hub: HubOptions) -> M:
        """A checkpoint written by ``save_pretrained`` of a quantized model: loads without re-quantizing."""
        from altclip.modeling.quantize import QUANTIZED_WEIGHTS, QuantizationConfig, prepare_for_quantized_state

        qconfig = QuantizationConfig.coerce(settings)
        if qconfig.backend == "torchao":
            import torchao.quantization  # noqa: F401  (registers its tensor types as safe to load)
        path = resolve_file(name_or_path, QUANTIZED_WEIGHTS, **hub)
        with warnings.catch_warnings():  # quantized tensors still go through TypedStorage, which warns
            warnings.simplefilter("ignore", UserWarning)
            state = ckpt.load_pickle(path, map_location=device or "cpu", mmap=False, tensors_only=False)
        cls._check_depth(config, ckpt.layer_counts(state, None), f"Checkpoint {name_or_path}")
        model = cls._skeleton(config, f"Checkpoint {name_or_path}")
        prepare_for_quantized_state(model, qconfig)
        model.load_state_dict(state, strict=True, assign=True)
        model.quantization_config, model.quantization_backend = qconfig, qconfig.backend
        return model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "10GB",
        safe_serialization: bool = True,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> Path:
        """Writes config.json and safetensors weights under the checkpoint names transformers reads (a quantized
        model writes its own format, see ``altclip.modeling.quantize.save_quantized``). Other transformers keywords
        (``is_main_process``, ...) are accepted and have no effect; weights are always safetensors."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not offered; upload the folder with huggingface_hub")
        if not safe_serialization:
            raise NotImplementedError("Only safetensors are written (safe_serialization=True)")
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        if getattr(self, "quantization_config", None) is not None:
            from altclip.modeling.quantize import save_quantized

            save_quantized(self, path)
            return path
        config = copy.deepcopy(self.config)
        config.dtype = str(self.dtype).removeprefix("torch.")
        config.architectures = [type(self).__name__]
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


def checkpoint_files(name_or_path: str | os.PathLike, **hub: Unpack[HubOptions]) -> list[Path]:
    """The weight files of a checkpoint: safetensors first, then legacy pickles; shards through their index.
    ``hub``: the keywords of ``resolve_file`` (revision, subfolder, ...)."""
    found = resolve_first(name_or_path, ckpt.WEIGHT_FILES, what="model weights", **hub)
    if not found.name.endswith(".index.json"):
        return [found]
    return [resolve_file(name_or_path, shard.name, **hub) for shard in ckpt.shard_files(found)]
