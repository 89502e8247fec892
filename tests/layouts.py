"""Checkpoint fixtures with the real key names and shapes of every public layout.

Each builder returns ``(checkpoint object to save, reference forward)``. The reference forward
is independent of ``simam_viz``: torchvision's ResNet-50 or timm's SE models, with the attention
modules (SimAM, ECA, CBAM) added by forward hooks that compute their equations from the raw
checkpoint tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]
BLOCKS_PER_STAGE = (3, 4, 6, 3)


def _perturb(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine terms, so a dropped buffer changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + 0.2 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def _blocks(model: nn.Module):
    for s, n in enumerate(BLOCKS_PER_STAGE, start=1):
        for b in range(n):
            yield f"layer{s}.{b}", getattr(model, f"layer{s}")[b]


def simam_ref(x: torch.Tensor, lam: float) -> torch.Tensor:
    n = x.shape[2] * x.shape[3] - 1
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum(dim=(2, 3), keepdim=True) / n
    energy = 4 * (var + lam) / ((x - mu) ** 2 + 2 * var + 2 * lam)
    return x * torch.sigmoid(1 / energy)


def torchvision_layout(seed: int = 0, num_classes: int = 1000):
    torch.manual_seed(seed)
    model = _perturb(torchvision.models.resnet50(num_classes=num_classes), seed)
    return model.state_dict(), model


def simam_official(seed: int = 1, *, training_file: bool = True, lam: float = 0.1):
    """SimAM repo: conv2 = Sequential(conv2, simam); DataParallel training dict."""
    _, model = torchvision_layout(seed)
    state = {}
    for k, v in model.state_dict().items():
        state[k.replace(".conv2.weight", ".conv2.0.weight")] = v
    for _, block in _blocks(model):
        block.conv2.register_forward_hook(lambda m, i, o: simam_ref(o, lam))
    if training_file:
        ckpt = {
            "epoch": 100,
            "arch": "resnet50",
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "best_acc": torch.tensor(77.452),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0001, "momentum": 0.9}]},
        }
    else:
        ckpt = {"state_dict": state}
    return ckpt, model


def se_timm(seed: int = 2):
    torch.manual_seed(seed)
    model = _perturb(timm.create_model("seresnet50", pretrained=False), seed)
    return model.state_dict(), model


def se_moskomule(seed: int = 3):
    """moskomule/senet.pytorch: Linear SE without bias at ``se.fc.0/2``."""
    torch.manual_seed(seed)
    model = _perturb(timm.create_model("seresnet50", pretrained=False), seed)
    state = {}
    with torch.no_grad():
        for _name, block in _blocks(model):
            block.se.fc1.bias.zero_()
            block.se.fc2.bias.zero_()
    for k, v in model.state_dict().items():
        if ".se.fc1.bias" in k or ".se.fc2.bias" in k:
            continue
        k = k.replace(".se.fc1.weight", ".se.fc.0.weight")
        k = k.replace(".se.fc2.weight", ".se.fc.2.weight")
        state[k] = v.flatten(1) if ".se.fc." in k else v
    return state, model


def se_legacy(seed: int = 4):
    torch.manual_seed(seed)
    model = _perturb(timm.create_model("legacy_seresnet50", pretrained=False), seed)
    return model.state_dict(), model


def eca_official(seed: int = 5, kernels=(3, 5, 5, 7)):
    _, model = torchvision_layout(seed)
    state = dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    for name, block in _blocks(model):
        k = kernels[int(name[5]) - 1]
        weight = torch.randn(1, 1, k, generator=g)
        state[f"{name}.eca.conv.weight"] = weight

        def hook(m, i, o, weight=weight, k=k):
            y = F.conv1d(o.mean(dim=(2, 3))[:, None, :], weight, padding=(k - 1) // 2)
            return o * torch.sigmoid(y[:, 0])[:, :, None, None]

        block.bn3.register_forward_hook(hook)
    return {"state_dict": {f"module.{k}": v for k, v in state.items()}}, model


def cbam_official(seed: int = 6):
    _, model = torchvision_layout(seed)
    state = dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    for name, block in _blocks(model):
        c = block.bn3.num_features
        p = f"{name}.cbam"
        t = {
            "ChannelGate.mlp.1.weight": torch.randn(c // 16, c, generator=g) / c**0.5,
            "ChannelGate.mlp.1.bias": 0.1 * torch.randn(c // 16, generator=g),
            "ChannelGate.mlp.3.weight": torch.randn(c, c // 16, generator=g) / (c // 16) ** 0.5,
            "ChannelGate.mlp.3.bias": 0.1 * torch.randn(c, generator=g),
            "SpatialGate.spatial.conv.weight": 0.1 * torch.randn(1, 2, 7, 7, generator=g),
            "SpatialGate.spatial.bn.weight": torch.tensor([0.9]),
            "SpatialGate.spatial.bn.bias": torch.tensor([0.1]),
            "SpatialGate.spatial.bn.running_mean": torch.tensor([0.2]),
            "SpatialGate.spatial.bn.running_var": torch.tensor([1.5]),
            "SpatialGate.spatial.bn.num_batches_tracked": torch.tensor(7),
        }
        state.update({f"{p}.{k}": v for k, v in t.items()})

        def hook(m, i, o, t=t):
            def mlp(z, t=t):
                h = F.relu(z @ t["ChannelGate.mlp.1.weight"].T + t["ChannelGate.mlp.1.bias"])
                return h @ t["ChannelGate.mlp.3.weight"].T + t["ChannelGate.mlp.3.bias"]

            att = mlp(o.mean(dim=(2, 3))) + mlp(o.amax(dim=(2, 3)))
            xc = o * torch.sigmoid(att)[:, :, None, None]
            pooled = torch.cat([xc.max(1, keepdim=True)[0], xc.mean(1, keepdim=True)], 1)
            z = F.conv2d(pooled, t["SpatialGate.spatial.conv.weight"], padding=3)
            z = (z - 0.2) / (1.5 + 1e-5) ** 0.5 * 0.9 + 0.1
            return xc * torch.sigmoid(z)

        block.bn3.register_forward_hook(hook)
    return {"state_dict": {f"module.{k}": v for k, v in state.items()}}, model
