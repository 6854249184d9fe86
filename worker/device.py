"""Pick the torch device from the ``LRTUNE_DEVICE`` setting."""

from __future__ import annotations

import torch


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {setting!r} asked for, but CUDA is not available")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings on a GPU need it; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
