"""Choosing where models run: the GPU when there is one, the CPU otherwise."""

from __future__ import annotations

import logging

import torch
from torch import nn

from simam_viz.errors import DeviceError

__all__ = ["DeviceError", "prepare_model", "resolve_device"]

LOG = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda``/``cuda:N`` must exist."""
    text = (name or "auto").strip().lower()
    if text == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        LOG.debug("device auto -> %s", device)
        return device
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but no CUDA GPU is available here")
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"no GPU {device.index}: {torch.cuda.device_count()} GPU(s) here")
        return device
    raise DeviceError(f"unknown device {name!r}; expected auto, cpu or cuda[:N]")


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to ``device``; on CUDA also use channels-last memory format.

    Channels-last lets cuDNN pick its fastest convolution kernels; it changes summation order
    only, so logits and maps stay within float32 rounding (the GPU test checks 1e-3 on maps).
    Mixed precision is not used: half-precision gradients visibly change Grad-CAM maps.
    """
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.eval()
