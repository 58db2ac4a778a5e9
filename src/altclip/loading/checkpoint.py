"""Checkpoint names <-> our parameter names, and reading and writing checkpoint files.

The released checkpoints use transformers' names (``text_model.roberta.encoder.layer.3.attention.self.query.weight``,
``vision_model.pre_layrnorm.weight``). Our towers use short names and a fused q/k/v projection; this module is the
only place that knows both. Loading is strict: every checkpoint tensor is used exactly once or is on the ignore
list, and every parameter of the model is filled, with errors that name the key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from altclip.utils.jsonsafe import read_json

if TYPE_CHECKING:
    from safetensors import safe_open

# Checkpoint name -> our name, relative to each tower. "{}" stands for a layer index. A target (name, i) is the
# i-th of the three row blocks (q, k, v) of a fused projection.
WeightMap = dict[str, "str | tuple[str, int]"]


def _linear(src: str, dst: str | tuple[str, int]) -> WeightMap:
    """The weight and bias entries of one linear or layer-norm module."""
    if isinstance(dst, tuple):
        return {f"{src}.{p}": (f"{dst[0]}.{p}", dst[1]) for p in ("weight", "bias")}
    return {f"{src}.{p}": f"{dst}.{p}" for p in ("weight", "bias")}


TEXT_WEIGHTS: WeightMap = {
    "roberta.embeddings.word_embeddings.weight": "embeddings.token.weight",
    "roberta.embeddings.position_embeddings.weight": "embeddings.position.weight",
    "roberta.embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
    **_linear("roberta.embeddings.LayerNorm", "embeddings.norm"),
    **_linear("roberta.encoder.layer.{}.attention.self.query", ("layers.{}.attn.qkv", 0)),
    **_linear("roberta.encoder.layer.{}.attention.self.key", ("layers.{}.attn.qkv", 1)),
    **_linear("roberta.encoder.layer.{}.attention.self.value", ("layers.{}.attn.qkv", 2)),
    **_linear("roberta.encoder.layer.{}.attention.output.dense", "layers.{}.attn.out"),
    **_linear("roberta.encoder.layer.{}.attention.output.LayerNorm", "layers.{}.attn_norm"),
    **_linear("roberta.encoder.layer.{}.intermediate.dense", "layers.{}.mlp.fc1"),
    **_linear("roberta.encoder.layer.{}.output.dense", "layers.{}.mlp.fc2"),
    **_linear("roberta.encoder.layer.{}.output.LayerNorm", "layers.{}.mlp_norm"),
    **_linear("pre_LN", "final_norm"),
    **_linear("transformation", "transformation"),
}

VISION_WEIGHTS: WeightMap = {
    "embeddings.class_embedding": "embeddings.class_embedding",
    "embeddings.patch_embedding.weight": "embeddings.patch.weight",
    "embeddings.position_embedding.weight": "embeddings.position.weight",
    **_linear("pre_layrnorm", "pre_norm"),
    **_linear("encoder.layers.{}.layer_norm1", "layers.{}.attn_norm"),
    **_linear("encoder.layers.{}.self_attn.q_proj", ("layers.{}.attn.qkv", 0)),
    **_linear("encoder.layers.{}.self_attn.k_proj", ("layers.{}.attn.qkv", 1)),
    **_linear("encoder.layers.{}.self_attn.v_proj", ("layers.{}.attn.qkv", 2)),
    **_linear("encoder.layers.{}.self_attn.out_proj", "layers.{}.attn.out"),
    **_linear("encoder.layers.{}.layer_norm2", "layers.{}.mlp_norm"),
    **_linear("encoder.layers.{}.mlp.fc1", "layers.{}.mlp.fc1"),
    **_linear("encoder.layers.{}.mlp.fc2", "layers.{}.mlp.fc2"),
    **_linear("post_layernorm", "post_norm"),
}


def _prefix(prefix: str, weights: WeightMap) -> WeightMap:
    return {
        prefix + src: (prefix + dst if isinstance(dst, str) else (prefix + dst[0], dst[1]))
        for src, dst in weights.items()
    }


MODEL_WEIGHTS: WeightMap = {
    **_prefix("text_model.", TEXT_WEIGHTS),
    **_prefix("vision_model.", VISION_WEIGHTS),
    "text_projection.weight": "text_projection.weight",
    "visual_projection.weight": "visual_projection.weight",
    "logit_scale": "logit_scale",
}

# Tensors checkpoints may carry that no model here uses: position-id / token-type buffers saved by older
# transformers, and the RoBERTa pooler of the original XLM-R, which AltCLIP replaced by the CLS transformation.
IGNORED = re.compile(r"(^|\.)(position_ids|token_type_ids)$|(^|\.)roberta\.pooler\.")

# Other spellings of the same tensors, rewritten before lookup. transformers 5 writes the vision layers as
# `vision_model.encoder.layer.N` and a standalone text tower's as `roberta.encoder.layers.N`.
ALIASES = (
    (re.compile(r"^(vision_model\.)?encoder\.layer\.(\d+)\."), r"\1encoder.layers.\2."),
    (re.compile(r"(^|\.)roberta\.encoder\.layers\.(\d+)\."), r"\1roberta.encoder.layer.\2."),
)

_INDEX = re.compile(r"\.(\d+)\.")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, unexpected or wrong-shaped tensors."""


def canonical_name(key: str) -> str:
    for pattern, replacement in ALIASES:
        key = pattern.sub(replacement, key)
    return key


def _template(key: str) -> tuple[str, str | None]:
    """`a.3.b` -> (`a.{}.b`, "3")."""
    m = _INDEX.search(key)
    if m is None:
        return key, None
    return key[: m.start()] + ".{}." + key[m.end() :], m.group(1)


# ---------------------------------------------------------------------------------------------------------------
# Reading


class TensorFiles:
    """The tensors of one checkpoint across its shards, in safetensors or legacy PyTorch pickle format.

    safetensors files are opened lazily: a tensor is read only when asked for, so a tower taken out of a full
    checkpoint reads only its own part.
    """

    def __init__(self, paths: Iterable[str | os.PathLike]):
        self._safe: dict[str, safe_open] = {}  # key -> safe_open handle
        self._loaded: dict[str, torch.Tensor] = {}  # key -> tensor of a pickle file
        self._paths: dict[str, Path] = {}  # key -> the file holding it, for error messages
        for path in map(Path, paths):
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                try:  # the header is checked here: its length, its JSON, every tensor's dtype, shape and offsets
                    handle = safe_open(str(path), framework="pt", device="cpu")
                    keys = list(handle.keys())
                except Exception as e:  # safetensors' own error type, or an OSError
                    raise CheckpointError(f"{path} is not a readable safetensors file: {_first_line(e)}") from None
                self._safe.update(dict.fromkeys(keys, handle))
            else:
                tensors = load_pickle(path)
                self._loaded.update(tensors)
                keys = list(tensors)
            self._paths.update(dict.fromkeys(keys, path))

    def keys(self) -> list[str]:
        return [*self._safe, *self._loaded]

    def get(self, key: str) -> torch.Tensor:
        if key in self._loaded:
            return self._loaded[key]
        try:
            return self._safe[key].get_tensor(key)
        except Exception as e:  # the file changed or shrank since its header was read
            raise CheckpointError(f"{self._paths[key]}: tensor {key} could not be read: {_first_line(e)}") from None

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._loaded:
            return tuple(self._loaded[key].shape)
        return tuple(self._safe[key].get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype | None:
        """The tensor's dtype; None for one torch has no name for here (float8 and other exotic safetensors types)."""
        return _SAFETENSORS_DTYPES.get(self.dtype_name(key)) if key in self._safe else self._loaded[key].dtype

    def path(self, key: str) -> Path:
        """The file that holds ``key``."""
        return self._paths[key]

    def dtype_name(self, key: str) -> str:
        if key in self._loaded:
            return str(self._loaded[key].dtype).removeprefix("torch.")
        return self._safe[key].get_slice(key).get_dtype()

    def float_dtype(self) -> torch.dtype | None:
        """The dtype of the first floating-point tensor: what the weights were saved in."""
        for key in self.keys():
            dtype = self.dtype(key)
            if dtype is not None and dtype.is_floating_point:
                return dtype
        return None


class RenamedTensors:
    """A view of ``TensorFiles`` under other key names (``rename(original) -> new``)."""

    def __init__(self, files: TensorFiles, rename):
        self._files = files
        self._original = {rename(k): k for k in files.keys()}

    def keys(self) -> list[str]:
        return list(self._original)

    def get(self, key: str) -> torch.Tensor:
        return self._files.get(self._original[key])

    def shape(self, key: str) -> tuple[int, ...]:
        return self._files.shape(self._original[key])

    def dtype(self, key: str) -> torch.dtype | None:
        return self._files.dtype(self._original[key])

    def dtype_name(self, key: str) -> str:
        return self._files.dtype_name(self._original[key])

    def path(self, key: str) -> Path:
        return self._files.path(self._original[key])


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def load_pickle(
    path: Path, map_location: str | torch.device = "cpu", mmap: bool = True, tensors_only: bool = True
) -> dict[str, Any]:
    """A PyTorch pickle of a state dict (a legacy ``pytorch_model.bin``), loaded with ``weights_only=True`` (no
    arbitrary code: a pickle that asks for anything but tensors and plain values is refused) and memory-mapped where
    the file allows. Any failure is a CheckpointError naming the file. ``tensors_only=False`` lets the values be
    other things ``weights_only`` allows (a quantized model's packed parameters)."""
    try:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError:  # files saved before PyTorch 1.6 (not zip-based) cannot be memory-mapped
            if not mmap:
                raise
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError (refused), EOFError (truncated), RuntimeError, OSError, ...
        raise CheckpointError(f"{path} could not be read as PyTorch weights: {_pickle_failure(e)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path} does not hold a state dict")
    if tensors_only and not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return state


def _pickle_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, without its advice to load untrusted files unsafely."""
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed| \(|\.\s|$)", str(error), re.MULTILINE)
        reason = found.group(1) if found else _first_line(error)
        return f"refused, since reading it would call code or build objects other than tensors ({reason})"
    if isinstance(error, EOFError):
        return "the file is empty or truncated"
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    """The gist of an error from a file reader: its first line, at most 300 characters."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= 300 else text[:297] + "..."


_STACK = re.compile(r"^(.*?)\.(\d+)\.")


def layer_counts(keys: Iterable[str], weight_map: WeightMap | None, prefix: str = "") -> dict[str, int]:
    """How many layers each stack holds in a checkpoint's ``keys``, by our name of the stack (``text_model.layers``):
    the number of distinct layer indices (so a lying key such as ``layer.999999999`` counts once). ``weight_map``
    None: the keys are our own parameter names already."""
    indices: dict[str, set[str]] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        ours = key[len(prefix) :]
        if weight_map is not None:
            template, index = _template(canonical_name(ours))
            target = weight_map.get(template)
            if target is None or index is None:
                continue
            ours = (target if isinstance(target, str) else target[0]).replace("{}", index)
        m = _STACK.match(ours)
        if m:
            indices.setdefault(m.group(1), set()).add(m.group(2))
    return {stack: len(found) for stack, found in indices.items()}


def check_depth(found: dict[str, int], expected: dict[str, tuple[str, int]], source: str) -> None:
    """Each stack's layer count in the weights (``layer_counts``) against the config's, ``{stack: (setting, count)}``:
    checked before a model is built, since a config saying 10**9 layers would otherwise take all memory and time."""
    for stack, (setting, count) in expected.items():
        if found.get(stack, 0) != count:
            raise CheckpointError(
                f"{source}: the config sets {setting} = {count}, but the weights hold {found.get(stack, 0)} layers"
            )


def load_weights(
    model: nn.Module,
    files: TensorFiles | RenamedTensors,
    weight_map: WeightMap,
    *,
    prefix: str = "",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    source: str = "checkpoint",
    ignore: re.Pattern | None = None,
    missing_ok: re.Pattern | None = None,
) -> None:
    """Fills ``model`` (built on the meta device) from ``files`` through ``weight_map``, strictly.

    Only checkpoint keys under ``prefix`` are read (a tower taken out of a full AltCLIP checkpoint); the prefix is
    stripped before lookup. Keys matching ``ignore`` belong to parts of the checkpoint this model does not use;
    parameters matching ``missing_ok`` may be absent and keep their values (the model must then not be on meta).
    """
    state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    parts: dict[str, dict[int, str]] = {}  # our name -> {block index: checkpoint key}
    unexpected: list[str] = []
    wrong_shape: list[str] = []
    for key in files.keys():
        if not key.startswith(prefix):
            continue
        name = canonical_name(key[len(prefix) :])
        if IGNORED.search(name) or (ignore is not None and ignore.search(key)):
            continue
        template, index = _template(name)
        target = weight_map.get(template)
        if target is None:
            unexpected.append(key)
            continue
        ours, block = (target, 0) if isinstance(target, str) else target
        if index is not None:
            ours = ours.replace("{}", index)
        if ours not in expected:  # e.g. a layer index beyond the model's depth
            unexpected.append(key)
            continue
        want = expected[ours]
        if not isinstance(target, str):
            want = (want[0] // 3, *want[1:])
        found = files.shape(key)
        if found != want:
            wrong_shape.append(f"{key}: expected {want}, found {found}")
        found_dtype = files.dtype(key)
        if state[ours].is_floating_point() and (found_dtype is None or not found_dtype.is_floating_point):
            wrong_shape.append(
                f"{key}: expected floating-point values, found {files.dtype_name(key)} ({files.path(key)})"
            )
        if block in parts.setdefault(ours, {}):
            unexpected.append(f"{key} (duplicate of {parts[ours][block]})")
            continue
        parts[ours][block] = key

    names = checkpoint_names(weight_map)
    missing = [
        prefix + src
        for ours in expected
        if not (missing_ok is not None and missing_ok.search(ours))
        for i, src in enumerate(names(ours))
        if i not in parts.get(ours, {})
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_mismatch_message(source, model, missing, unexpected, wrong_shape))

    state = {}
    for ours, blocks in parts.items():
        tensors = [files.get(blocks[i]) for i in sorted(blocks)]
        tensor = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        state[ours] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
    model.load_state_dict(state, strict=missing_ok is None, assign=True)


def _mismatch_message(
    source: str, model: nn.Module, missing: list[str], unexpected: list[str], wrong: list[str]
) -> str:
    def listing(items: list[str]) -> str:  # the first ten, each cut to 300 characters (key names come from the file)
        shown = [item if len(item) <= 300 else item[:297] + "..." for item in items[:10]]
        return "; ".join(shown) + (f" ... ({len(items)} in all)" if len(items) > 10 else "")

    lines = [f"{source} does not fit {type(model).__name__} with this config:"]
    if wrong:
        lines.append("  wrong shape: " + listing(wrong))
    if missing:
        lines.append("  missing: " + listing(missing))
    if unexpected:
        lines.append("  unexpected: " + listing(unexpected))
    return "\n".join(lines)


def checkpoint_names(weight_map: WeightMap):
    """A function mapping one of our parameter names to its checkpoint name(s), q/k/v order for fused ones."""
    inverse: dict[str, list[tuple[int, str]]] = {}
    for src, dst in weight_map.items():
        ours, block = (dst, 0) if isinstance(dst, str) else dst
        inverse.setdefault(ours, []).append((block, src))

    def names(ours: str) -> list[str]:
        template, index = _template(ours)
        return [src.replace("{}", index or "") for _, src in sorted(inverse[template])]

    return names


# ---------------------------------------------------------------------------------------------------------------
# Writing

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = [SAFE_INDEX, SAFE_WEIGHTS, BIN_INDEX, BIN_WEIGHTS]


def to_checkpoint(model: nn.Module, weight_map: WeightMap) -> dict[str, torch.Tensor]:
    """The model's state under checkpoint names, fused projections split back into q, k and v."""
    names = checkpoint_names(weight_map)
    out: dict[str, torch.Tensor] = {}
    for ours, tensor in model.state_dict().items():
        srcs = names(ours)
        blocks = tensor.chunk(len(srcs), dim=0) if len(srcs) > 1 else (tensor,)
        for src, block in zip(srcs, blocks):
            out[src] = block.detach().contiguous().clone() if len(srcs) > 1 else block.detach().contiguous()
    return out


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"Cannot read size {size!r}; use bytes or a string like '2GB'")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * scale)


def save_tensors(state: dict[str, torch.Tensor], directory: Path, max_shard_size: int | str = "10GB") -> list[Path]:
    """Writes ``state`` as ``model.safetensors``, or as shards plus ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for stale in (SAFE_WEIGHTS, SAFE_INDEX, *(p.name for p in directory.glob("model-*-of-*.safetensors"))):
        (directory / stale).unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(directory / SAFE_WEIGHTS), metadata={"format": "pt"})
        return [directory / SAFE_WEIGHTS]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        paths.append(directory / name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return paths


def shard_files(index_path: Path) -> list[Path]:
    """The shard files named by a ``*.index.json``, next to it."""
    try:
        weight_map = read_json(index_path)["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path} is not a valid checkpoint index: {e}") from None
    return [index_path.parent / name for name in dict.fromkeys(weight_map.values())]
