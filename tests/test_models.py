"""The builder places modules where the official code does and matches torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from simam_viz import ARCHS, BLOCKS, SimAM, build_model
from simam_viz.networks.attention import CBAM, ECA, SE
from simam_viz.networks.models import attention_module, count_parameters


def test_plain_resnet50_is_torchvision() -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet50().eval()
    ours = build_model("resnet50")
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("arch", "site", "kind", "params"),
    [
        ("resnet50", None, None, 25_557_032),  # Table 3: 25.56 M
        ("simam_resnet50", "conv2", SimAM, 25_557_032),  # parameter-free
        ("se_resnet50", "bn3", SE, 28_071_976),  # Table 3: 28.07 M
        ("eca_resnet50", "bn3", ECA, 25_557_032 + 80),  # k = 3,5,5,7 over 3,4,6,3 blocks
        ("cbam_resnet50", "bn3", CBAM, 28_089_624),  # Table 3: 28.09 M
    ],
)
def test_placement_and_parameter_count(arch, site, kind, params) -> None:
    model = build_model(arch)
    assert count_parameters(model) == params
    assert len(BLOCKS) == 16
    for name in BLOCKS:
        block = model.get_submodule(name)
        module = attention_module(model, name)
        if kind is None:
            assert module is None and isinstance(block.conv2, nn.Conv2d)
            continue
        assert isinstance(module, kind)
        wrapped = getattr(block, site)
        assert isinstance(wrapped, nn.Sequential) and wrapped[1] is module
        first = nn.Conv2d if site == "conv2" else nn.BatchNorm2d
        assert isinstance(wrapped[0], first)
    if arch == "simam_resnet50":
        assert model.layer1[0].conv2[1].e_lambda == 0.1
        assert "layer1.0.conv2.0.weight" in model.state_dict()


def test_width_and_dilation() -> None:
    model = build_model("simam_resnet50", width=0.25, num_classes=7, dilate_last=True)
    assert model.conv1.out_channels == 16 and model.fc.in_features == 512
    assert model.fc.out_features == 7
    feats = {}
    model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("o", o))
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    assert feats["o"].shape[-2:] == (8, 8)  # stride 16 instead of 32


def test_unknown_arch_and_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'vit'"):
        build_model("vit")
    with pytest.raises(ValueError, match="resnet_variant"):
        build_model("resnet50", resnet_variant="v2")
    assert set(ARCHS) == {
        "resnet50", "se_resnet50", "simam_resnet50", "eca_resnet50", "cbam_resnet50"
    }


def test_no_inplace_breakage_under_anomaly_detection() -> None:
    x = torch.randn(1, 3, 64, 64)
    for arch in ARCHS:
        model = build_model(arch, width=0.25)
        with torch.autograd.set_detect_anomaly(True):
            out = model(x.clone().requires_grad_(True))
            out[0, 0].backward()
        # every parameter takes part: a finite gradient reaches each one
        missing = [name for name, p in model.named_parameters() if p.grad is None]
        assert missing == [], f"{arch}: no gradient for {missing[:3]} ..."
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), arch


def test_lambda_defaults_are_the_papers_two_values() -> None:
    """SimAM() is the authors' module (1e-4, the paper's CIFAR value); build_model builds the
    ImageNet ResNet-50 with the paper's ImageNet value 0.1, and the note says which is which."""
    from simam_viz.networks.attention import CIFAR_LAMBDA, IMAGENET_LAMBDA, paper_lambda_note

    assert SimAM().e_lambda == CIFAR_LAMBDA == 1e-4
    model = build_model("simam_resnet50", width=0.125, num_classes=2)
    assert model.simam_viz.simam_lambda == IMAGENET_LAMBDA == 0.1
    assert model.layer1[0].conv2[1].e_lambda == 0.1
    assert "ImageNet" in paper_lambda_note(0.1) and "CIFAR" in paper_lambda_note(1e-4)
    assert paper_lambda_note(0.5) == ""
