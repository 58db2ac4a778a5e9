"""The device a model runs on when nobody says: the one rule the command line, the service, training and the
benchmark share."""

from __future__ import annotations

import torch


def default_device() -> str:
    """ "cuda" where PyTorch sees a GPU, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None) -> str:
    """``device`` as given, or the default device when it is None or empty."""
    return str(device) if device else default_device()
