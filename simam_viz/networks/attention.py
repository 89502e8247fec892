"""Attention modules, written the way their official ImageNet code writes them.

Each module keeps the parameter names of its public checkpoints so that weights load without
renaming inside the module, and exposes its attention weights as the output of a child
``nn.Sigmoid``: a forward hook on that child sees the weights, which is what Grad-CAM on the
attention (the paper's Figure 6, fourth map) needs. No module uses in-place operations, so
autograd (and anomaly detection) sees a clean graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CIFAR_LAMBDA",
    "IMAGENET_LAMBDA",
    "SimAM",
    "SE",
    "ECA",
    "CBAM",
    "ChannelGate",
    "SpatialGate",
    "paper_lambda_note",
]

CIFAR_LAMBDA = 1e-4
"""The paper's lambda for its CIFAR networks (section 4.1, searched on ResNet-20), and the
default of the authors' module: ``SimAM()`` is their module as published."""
IMAGENET_LAMBDA = 0.1
"""The paper's lambda for ImageNet (section 4.2, searched on ResNet-18 at half resolution): the
default of :func:`~simam_viz.networks.models.build_model`, whose ResNet-50 is the ImageNet
network, and the lambda the demo models were trained with."""


def paper_lambda_note(lam: float) -> str:
    """Where a lambda comes from in the paper, in a few words ("" if it is neither value)."""
    if lam == IMAGENET_LAMBDA:
        return "the paper's ImageNet value (section 4.2; its CIFAR networks use 1e-4)"
    if lam == CIFAR_LAMBDA:
        return "the paper's CIFAR value (section 4.1; its ImageNet networks use 0.1)"
    return ""


class SimAM(nn.Module):
    """Parameter-free 3-D attention (paper Eqns 5-6, as the authors' code computes them).

    For each channel, ``d = (x - mean)^2`` and ``v = sum(d) / (H*W - 1)``; the inverse energy
    ``d / (4 (v + lambda)) + 0.5`` goes through a sigmoid to give one weight per neuron, and the
    output is ``x * weights``. The sigmoid is the child ``sigmoid`` so its output (the 3-D
    weights) can be hooked; the module's own forward hook sees its input and output.

    Two defaults, on purpose: the module defaults to :data:`CIFAR_LAMBDA` (1e-4) as the
    authors' module does, while :func:`~simam_viz.networks.models.build_model` builds the
    ImageNet ResNet-50 and passes :data:`IMAGENET_LAMBDA` (0.1), the paper's value there.
    """

    def __init__(self, e_lambda: float = CIFAR_LAMBDA) -> None:
        super().__init__()
        self.e_lambda = float(e_lambda)
        self.sigmoid = nn.Sigmoid()

    def extra_repr(self) -> str:
        return f"lambda={self.e_lambda}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self._forward_autograd(x)
        return self._forward_inference(x)

    def _forward_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """The authors' expression, op for op: autograd needs every intermediate intact."""
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        v = d.sum(dim=(2, 3), keepdim=True) / n
        e_inv = d / (4 * (v + self.e_lambda)) + 0.5
        return x * self.sigmoid(e_inv)

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """Same numbers with one full-size allocation instead of six.

        On a CPU the module is memory-bound and fresh large allocations cost page faults, so
        without autograd the intermediates are updated in place. The weights still pass
        through the ``sigmoid`` child whenever something hooks it, so hooks see them intact.
        """
        n = x.shape[2] * x.shape[3] - 1
        d = x - x.mean(dim=(2, 3), keepdim=True)
        d.square_()
        scale = 1.0 / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.e_lambda))
        d.mul_(scale).add_(0.5)
        if _has_hooks(self.sigmoid):
            return x * self.sigmoid(d)
        return d.sigmoid_().mul_(x)


def _has_hooks(module: nn.Module) -> bool:
    """Whether any forward hook (the module's own or a global one) would see its output."""
    from torch.nn.modules import module as module_mod

    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module_mod._global_forward_hooks
        or module_mod._global_forward_pre_hooks
    )


class SE(nn.Module):
    """Squeeze-and-excitation as in the SimAM repository (``fc.0``/``fc.2`` Linear layers).

    ``reduced`` overrides ``channels // reduction`` because public checkpoints round it
    differently (timm uses ``make_divisible``); ``bias`` is off in the SimAM and moskomule
    code and on in timm's and Caffe's. The excitation vector is the output of ``fc.3``.
    """

    def __init__(
        self, channels: int, reduction: int = 16, *, reduced: int | None = None, bias: bool = False
    ) -> None:
        super().__init__()
        hidden = reduced if reduced is not None else max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=bias),
            nn.ReLU(),
            nn.Linear(hidden, channels, bias=bias),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * y


class ECA(nn.Module):
    """Efficient channel attention: a 1-D convolution across pooled channels (no bias)."""

    def __init__(self, channels: int, k_size: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)  # B x C x 1 x 1
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * self.sigmoid(y)


class ChannelGate(nn.Module):
    """CBAM's channel gate: a shared MLP over average- and max-pooled features."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * self.sigmoid(att)[:, :, None, None]


class _BasicConv(nn.Module):
    """Conv + BN without activation; the key names (``conv``, ``bn``) match CBAM's checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=7, stride=1, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    """CBAM's spatial gate: 7x7 conv over [channel max, channel mean]."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = _BasicConv()
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)), dim=1)
        return x * self.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional block attention: channel gate, then spatial gate (names as checkpoint)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)  # noqa: N815 - checkpoint key name
        self.SpatialGate = SpatialGate()  # noqa: N815 - checkpoint key name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))
