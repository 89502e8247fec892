"""ResNet-50 with and without attention, built from torchvision's own ResNet pieces.

Architectures come from a small registry (as timm does): each entry says which attention module
goes where, exactly as the official code places it. SimAM wraps ``conv2`` so it sees the raw
3x3 convolution output (before ``bn2``); SE, ECA and CBAM wrap ``bn3`` so they act after the last
batch norm, before the residual add. Parameter names therefore match the SimAM repository's,
which is the one naming every checkpoint layout is remapped to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torchvision.models import resnet as tv_resnet

from simam_viz.networks.attention import IMAGENET_LAMBDA
from simam_viz.networks.kinds import KINDS, AttentionKind
from simam_viz.networks.preprocess import Preprocessing

__all__ = [
    "ARCHS",
    "BLOCKS",
    "DEFAULT_BLOCK",
    "ModelInfo",
    "ResNet50",
    "attention_module",
    "build_model",
    "model_info",
    "validate_block",
]

STAGE_BLOCKS = (3, 4, 6, 3)  # ResNet-50
STAGE_PLANES = (64, 128, 256, 512)
BLOCKS: tuple[str, ...] = tuple(
    f"layer{s + 1}.{b}" for s, n in enumerate(STAGE_BLOCKS) for b in range(n)
)
"""Names of the 16 bottlenecks, in forward order (``layer1.0`` ... ``layer4.2``)."""

DEFAULT_BLOCK = BLOCKS[-1]
"""The last bottleneck (``layer4.2``): where Grad-CAM looks by default and Figure 6 is drawn."""


def validate_block(name: str) -> str:
    """``name`` if it is one of :data:`BLOCKS`, else one line saying what is expected."""
    if name not in BLOCKS:
        from simam_viz.errors import AnalysisError

        raise AnalysisError(f"unknown block {name!r}; expected {BLOCKS[0]} ... {BLOCKS[-1]}")
    return name


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: ResNet-50 with one attention kind (or none) in every bottleneck."""

    name: str
    kind: AttentionKind
    title: str

    @property
    def attention(self) -> str | None:
        """The kind's name ("simam", "se", "eca", "cbam"), None for the plain ResNet."""
        return self.kind.name if self.kind.has_attention else None

    @property
    def site(self) -> str | None:
        return self.kind.site


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("resnet50", KINDS["none"], "ResNet-50"),
        ArchSpec("simam_resnet50", KINDS["simam"], "SimAM-ResNet-50"),
        ArchSpec("se_resnet50", KINDS["se"], "SE-ResNet-50"),
        ArchSpec("eca_resnet50", KINDS["eca"], "ECA-ResNet-50"),
        ArchSpec("cbam_resnet50", KINDS["cbam"], "CBAM-ResNet-50"),
    )
}
"""Every architecture by name; what its attention is and shows lives in its kind."""


class ResNet50(tv_resnet.ResNet):
    """torchvision's ResNet with Bottleneck blocks [3, 4, 6, 3] and scalable stage widths.

    torchvision hard-codes 64/128/256/512 channels in ``ResNet.__init__``; this constructor
    repeats its few lines with every width multiplied by ``width`` and reuses torchvision's
    ``Bottleneck``, ``_make_layer``, initialisation and forward unchanged, so ``width=1`` has
    torchvision's exact parameter names, shapes and numerics.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        width: float = 1.0,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
        zero_init_residual: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        planes = [max(1, round(p * width)) for p in STAGE_PLANES]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = planes[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block = tv_resnet.Bottleneck
        dil = list(replace_stride_with_dilation)
        self.layer1 = self._make_layer(block, planes[0], STAGE_BLOCKS[0])
        self.layer2 = self._make_layer(block, planes[1], STAGE_BLOCKS[1], 2, dilate=dil[0])
        self.layer3 = self._make_layer(block, planes[2], STAGE_BLOCKS[2], 2, dilate=dil[1])
        self.layer4 = self._make_layer(block, planes[3], STAGE_BLOCKS[3], 2, dilate=dil[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:  # torchvision's option: every block starts as its shortcut
            for m in self.modules():
                if isinstance(m, tv_resnet.Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)


@dataclass
class ModelInfo:
    """What the rest of the product needs to know about a loaded model.

    Attached to the model as ``model.simam_viz`` by :func:`build_model` and filled in further by
    the checkpoint loader, so a model carries its own class names and preprocessing.
    """

    arch: str
    width: float = 1.0
    simam_lambda: float | None = None
    num_classes: int = 1000
    resnet_variant: str = "v1.5"
    class_names: list[str] = field(default_factory=list)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    layout: str = "built"
    name: str = ""
    path: str | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """Human-readable architecture name (``SimAM-ResNet-50``)."""
        return ARCHS[self.arch].title

    @property
    def attention(self) -> str | None:
        """Kind of attention module, or None for the plain ResNet."""
        return ARCHS[self.arch].attention

    @property
    def kind(self) -> AttentionKind:
        """What the attention module is and which weights it shows."""
        return ARCHS[self.arch].kind


def _to_v1(model: ResNet50) -> None:
    """Turn the v1.5 layout into ResNet v1 (the Caffe SE-ResNet-50 layout).

    v1 strides on the first 1x1 conv of each downsampling block and uses a ceil-mode max-pool
    without padding; tensor shapes are identical, which is why loading a v1 checkpoint into a
    v1.5 model silently computes the wrong thing.
    """
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for layer in (model.layer2, model.layer3, model.layer4):
        first = layer[0]
        first.conv1.stride = (2, 2)
        conv2 = first.conv2[0] if isinstance(first.conv2, nn.Sequential) else first.conv2
        conv2.stride = (1, 1)


def build_model(
    arch: str,
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    simam_lambda: float = IMAGENET_LAMBDA,
    resnet_variant: str = "v1.5",
    dilate_last: bool = False,
    se_reduced: Sequence[int] | None = None,
    se_bias: bool = False,
    eca_kernels: Sequence[int] = (3, 5, 5, 7),
    zero_init_residual: bool = False,
) -> ResNet50:
    """Build a ResNet-50 with the attention module of ``arch``, in eval mode.

    ``resnet_variant="v1"`` builds the Caffe layout the original SE checkpoint needs;
    ``dilate_last`` keeps layer4 at stride 16 so the last block's maps are twice as fine (for
    small inputs); ``se_reduced`` (per stage) and ``se_bias`` follow the SE checkpoint at hand;
    ``zero_init_residual`` zeroes each block's last BN scale (a training start, Goyal et al. 2017).
    ``simam_lambda`` defaults to the paper's ImageNet value, 0.1 (section 4.2), because this is
    the ImageNet ResNet-50; the bare ``SimAM()`` module keeps the authors' 1e-4 (CIFAR).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    if resnet_variant not in ("v1", "v1.5"):
        raise ValueError(f"resnet_variant must be 'v1' or 'v1.5', got {resnet_variant!r}")
    spec = ARCHS[arch]
    dilation = (False, False, dilate_last)
    model = ResNet50(num_classes=num_classes, width=width, replace_stride_with_dilation=dilation,
                     zero_init_residual=zero_init_residual)
    opts: dict[str, Any] = {
        "simam_lambda": simam_lambda,
        "se_reduced": se_reduced,
        "se_bias": se_bias,
        "eca_kernels": tuple(eca_kernels),
    }
    kind = spec.kind
    if kind.has_attention:
        for stage, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
            for block in layer:
                channels = block.conv3.out_channels
                module = kind.build(stage, channels, opts)
                if kind.site == "conv2":
                    block.conv2 = nn.Sequential(block.conv2, module)
                else:
                    block.bn3 = nn.Sequential(block.bn3, module)
    if resnet_variant == "v1":
        _to_v1(model)
    model.simam_viz = ModelInfo(  # type: ignore[assignment]
        arch=arch,
        width=width,
        simam_lambda=simam_lambda if kind.has_lambda else None,
        num_classes=num_classes,
        resnet_variant=resnet_variant,
        class_names=default_class_names(num_classes),
        extra={"dilate_last": dilate_last},
    )
    return model.eval()


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet's names for a 1000-way head, else ``class 0 ... class N-1``.

    A freshly built model must accept integer and name targets (``analyze(m, x, target=440)``)
    without a checkpoint; loading a checkpoint replaces these with its own names.
    """
    if num_classes == 1000:
        from simam_viz.networks.preprocess import imagenet_classes

        return list(imagenet_classes())
    return [f"class {i}" for i in range(num_classes)]


def model_info(model: nn.Module) -> ModelInfo:
    """The :class:`ModelInfo` of a model made by :func:`build_model` or ``load_model``."""
    info = getattr(model, "simam_viz", None)
    if not isinstance(info, ModelInfo):
        raise ValueError("model was not built by simam_viz (no model.simam_viz info)")
    return info


def attention_module(model: nn.Module, block: str) -> nn.Module | None:
    """The attention module inside bottleneck ``block`` (e.g. ``layer4.2``), or None."""
    bottleneck = model.get_submodule(block)
    for site in ("conv2", "bn3"):
        sub = getattr(bottleneck, site)
        if isinstance(sub, nn.Sequential) and len(sub) == 2:
            return sub[1]
    return None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (SimAM adds none: Table 3's 25.56 M for both)."""
    return sum(p.numel() for p in model.parameters())

