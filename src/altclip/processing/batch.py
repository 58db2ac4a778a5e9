"""BatchFeature: the dict of model inputs the tokenizer, image processor and processor return."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class BatchFeature(dict):
    """A dict of model inputs with attribute access (``batch.input_ids``) and ``.to(device)``, usable as
    ``model(**batch)``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BatchFeature:
        """Moves tensors to ``device``; ``dtype`` applies to floating-point tensors only (pixel values, not ids)."""
        out = BatchFeature()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            out[key] = value
        return out


def as_tensors(values: Any, return_tensors: str | None, dtype: Any) -> Any:
    """Converts a (ragged-free) nested list or array to "pt" / "np", or leaves it for None."""
    if return_tensors is None:
        return values
    array = np.asarray(values, dtype=dtype)
    if return_tensors == "np":
        return array
    if return_tensors == "pt":
        return torch.from_numpy(array)
    raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
