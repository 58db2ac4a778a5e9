"""The device a model runs on when nobody says, and whether a device someone named can be used: the rules the
command line, the service, training and the benchmark share."""

from __future__ import annotations

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")


class DeviceError(ValueError):
    """A device that is not one, or that this machine or this PyTorch build does not have."""


def default_device() -> str:
    """ "cuda" where PyTorch sees a GPU, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None) -> str:
    """``device`` as given, checked (``check_device``), or the default device when it is None or empty."""
    if not device:
        return default_device()
    check_device(device)
    return str(device)


def check_device(device: str | torch.device | int) -> None:
    """Raises a DeviceError, saying why, unless ``device`` names a device this machine and this PyTorch have (an int
    is a CUDA device index, as in ``device_map=0``)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"{device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type not in DEVICE_TYPES:
        raise DeviceError(f"Device type {parsed.type!r} is not supported here; use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "PyTorch sees no CUDA GPU"
            raise DeviceError(f"Cannot use {device}: {why}; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f"Cannot use {device}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"Cannot use {device}: PyTorch sees no Apple GPU (MPS); use cpu")
