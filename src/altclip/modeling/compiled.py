"""The image tower through ``torch.compile`` for large half-precision batches on a GPU.

An image batch is matrix products at cuBLAS's rate plus elementwise passes (quick-GELU, bias, residual adds, layer
norms) that eager PyTorch runs as separate kernels, each reading and writing the whole activation. Inductor fuses
them into the products' neighbours: +23% images/s at batch 256 in bfloat16 on an H200 (benchmarks/results/
bench_compile_h200.json; texts, which skip padding, measured slower compiled, so they stay eager).

    fast = CompiledImageFeatures(model)  # a model on CUDA in bfloat16 or float16
    fast.get_image_features(pixel_values=pixels)  # compiled from ``min_batch`` images on, eager below

Batches are padded (with zeros, dropped from the output) to a power of two, so a bulk run compiles a few shapes
once (its full batches and its last, smaller one) instead of one per batch size.

``should_compile(model)`` is the rule the library uses by default (``Embedder``): CUDA, half precision, and a
PyTorch that can compile (Triton present). Float32 is never compiled: it is the exact path, kept as it is. A
compilation that fails (no compiler, an unsupported GPU, a bug) is reported once as a warning and the batch runs
eagerly, as every later one does; out-of-memory errors are not compile failures and propagate, for the caller to
split the batch.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import warnings
from typing import Any

import torch

log = logging.getLogger(__name__)

HALF = (torch.bfloat16, torch.float16)


def should_compile(model: Any) -> bool:
    """Whether compiling the image tower pays on this model: on CUDA in half precision, with Triton installed."""
    return model.device.type == "cuda" and model.dtype in HALF and importlib.util.find_spec("triton") is not None


class CompiledImageFeatures:
    """A model whose ``get_image_features`` runs compiled for batches of at least ``min_batch`` images; every other
    member is the model's own."""

    def __init__(self, model: Any, *, min_batch: int = 32, mode: str | None = None):
        self.model = model
        self.min_batch = min_batch
        self.failed: str | None = None  # why compiling failed, once it has
        self._compiled = torch.compile(self._image_features, mode=mode, dynamic=False)
        self._lock = threading.Lock()  # compiling is not thread-safe: one call at a time

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if (
            self.failed
            or any(v for v in kwargs.values())
            or pixel_values.dim() != 4
            or len(pixel_values) < self.min_batch
        ):
            return self.model.get_image_features(pixel_values=pixel_values, **kwargs)
        B = len(pixel_values)
        rows = 1 << (B - 1).bit_length()
        padded = (
            pixel_values
            if rows == B
            else torch.cat([pixel_values, pixel_values.new_zeros(rows - B, *pixel_values.shape[1:])])
        )
        try:
            with self._lock:
                return self._compiled(padded)[:B]
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # any failure to compile: the eager model gives the same features
            self.failed = f"{type(e).__name__}: {str(e)[:300]}"
            warnings.warn(f"torch.compile of the image tower failed; running it eagerly ({self.failed})", stacklevel=2)
            return self.model.get_image_features(pixel_values=pixel_values)
