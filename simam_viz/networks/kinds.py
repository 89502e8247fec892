"""What each attention kind is and can show: the one place that knows SE, ECA, CBAM and SimAM.

timm's ``create_attn`` builds every attention layer from one registry; here each kind also says
where its module sits in a bottleneck, which weights it produces and in which shape (the
paper's Figure 2: SE and ECA weigh channels, CBAM channels then positions, SimAM every neuron),
which children output those weights (so a forward hook records them as the network computes
them), how a checkpoint's tensors fix its options, and how it is named on screen. The taps,
the analysis, the checkpoint loader, the views and the exports ask a kind; none of them
compares an architecture or attention name.

Weight shapes are named ``"channel"`` (C,), ``"spatial"`` (H, W) and ``"full"`` (C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from simam_viz.networks.attention import CBAM, ECA, SE, SimAM

__all__ = [
    "KINDS",
    "NO_ATTENTION",
    "SHAPES",
    "AttentionKind",
    "kind_named",
    "kind_of_module",
]

SHAPES: dict[str, str] = {
    "channel": "1-D: one weight per channel",
    "spatial": "2-D: one weight per position",
    "full": "3-D: one weight per neuron",
}
"""Every weight shape a kind can produce, in the order views show them, with its meaning."""

# (stage index 0-3, output channels of the block, build options) -> module
Factory = Callable[[int, int, Mapping[str, Any]], nn.Module]
# canonical state dict, the four first blocks' module prefixes -> build options it fixes
OptionsFromState = Callable[[Mapping[str, torch.Tensor], list[str]], dict[str, Any]]


def _no_options(state: Mapping[str, torch.Tensor], firsts: list[str]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class AttentionKind:
    """One attention kind: its module, its place in the bottleneck and the weights it makes.

    ``weights`` maps each weight shape the module produces to a function giving the child
    whose output *is* those weights (a sigmoid), so recording is a forward hook, never a
    recomputation. ``cam_weights`` names the weights that also get a Grad-CAM map (Figure 6's
    fourth map): only 3-D weights have the feature map's shape.
    """

    name: str
    label: str
    module_type: type[nn.Module] | None = None
    site: str | None = None
    weights: Mapping[str, Callable[[nn.Module], nn.Module]] = field(default_factory=dict)
    cam_weights: str | None = None
    factory: Factory | None = None
    options_from_state: OptionsFromState = _no_options
    has_lambda: bool = False
    summary: str = ""

    @property
    def shapes(self) -> tuple[str, ...]:
        """The weight shapes this kind produces, in :data:`SHAPES` order."""
        return tuple(s for s in SHAPES if s in self.weights)

    @property
    def has_attention(self) -> bool:
        return self.module_type is not None

    @property
    def interventions(self) -> tuple[str, ...]:
        """The counterfactual weights :func:`simam_viz.intervene` can put in this kind's place.

        Every attention module's weights can be removed (``identity``), flattened to their
        mean (``constant``) or reduced to their channel or spatial part; only a module whose
        weights are Eqn (5)'s closed form (SimAM) also has Eqn (2)'s ``exact`` minimum.
        """
        if not self.has_attention:
            return ()
        return ("identity", "constant", "channel_mean", "spatial_mean") + (
            ("exact",) if self.has_lambda else ())

    @property
    def site_text(self) -> str:
        """Where the module acts, in words (for captions and the About view)."""
        if self.site == "conv2":
            return "on the 3x3 convolution's raw output, before bn2"
        if self.site == "bn3":
            return "after bn3, before the residual add"
        return "no attention module"

    def gate_modules(self, module: nn.Module) -> dict[str, nn.Module]:
        """The children of ``module`` whose outputs are this kind's weights, by shape."""
        return {shape: child(module) for shape, child in self.weights.items()}

    def build(self, stage: int, channels: int, options: Mapping[str, Any]) -> nn.Module:
        if self.factory is None:
            raise ValueError(f"{self.label} has no attention module to build")
        return self.factory(stage, channels, options)


def _se(stage: int, channels: int, opts: Mapping[str, Any]) -> nn.Module:
    reduced = opts.get("se_reduced")
    return SE(channels, 16, reduced=None if reduced is None else reduced[stage],
              bias=bool(opts.get("se_bias", False)))


def _se_options(state: Mapping[str, torch.Tensor], firsts: list[str]) -> dict[str, Any]:
    """SE checkpoints round the hidden width differently and may carry biases."""
    return {"se_reduced": [int(state[f"{p}.fc.0.weight"].shape[0]) for p in firsts],
            "se_bias": f"{firsts[0]}.fc.0.bias" in state}


def _eca_options(state: Mapping[str, torch.Tensor], firsts: list[str]) -> dict[str, Any]:
    """ECA's kernel size per stage is whatever the checkpoint's 1-D convolution has."""
    return {"eca_kernels": [int(state[f"{p}.conv.weight"].shape[-1]) for p in firsts]}


NO_ATTENTION = AttentionKind(name="none", label="ResNet-50", summary="no attention module")

KINDS: dict[str, AttentionKind] = {
    kind.name: kind
    for kind in (
        NO_ATTENTION,
        AttentionKind(
            name="se", label="SE", module_type=SE, site="bn3",
            weights={"channel": lambda m: m.fc[3]},
            factory=_se, options_from_state=_se_options,
            summary="squeeze-and-excitation: an MLP on pooled channels weighs each channel",
        ),
        AttentionKind(
            name="eca", label="ECA", module_type=ECA, site="bn3",
            weights={"channel": lambda m: m.sigmoid},
            factory=lambda stage, channels, opts: ECA(
                channels, tuple(opts.get("eca_kernels", (3, 5, 5, 7)))[stage]),
            options_from_state=_eca_options,
            summary="efficient channel attention: a 1-D convolution across pooled channels",
        ),
        AttentionKind(
            name="cbam", label="CBAM", module_type=CBAM, site="bn3",
            weights={"channel": lambda m: m.ChannelGate.sigmoid,
                     "spatial": lambda m: m.SpatialGate.sigmoid},
            factory=lambda stage, channels, opts: CBAM(channels, 16),
            summary="a channel gate, then a 7x7 spatial gate: channel x spatial weights",
        ),
        AttentionKind(
            name="simam", label="SimAM", module_type=SimAM, site="conv2",
            weights={"full": lambda m: m.sigmoid}, cam_weights="full",
            factory=lambda stage, channels, opts: SimAM(opts["simam_lambda"]),
            has_lambda=True,
            summary="parameter-free: each neuron's weight from its energy (Eqns 5-6)",
        ),
    )
}
"""Every attention kind by name (``"none"`` is plain ResNet-50)."""


def kind_named(name: str | None) -> AttentionKind:
    """The kind called ``name`` (None and ``"none"`` give :data:`NO_ATTENTION`)."""
    if name is None:
        return NO_ATTENTION
    if name not in KINDS:
        raise ValueError(f"unknown attention kind {name!r}; expected one of {', '.join(KINDS)}")
    return KINDS[name]


def kind_of_module(module: nn.Module | None) -> AttentionKind:
    """The kind of an attention module found in a network (None gives :data:`NO_ATTENTION`)."""
    if module is None:
        return NO_ATTENTION
    for kind in KINDS.values():
        if kind.module_type is not None and isinstance(module, kind.module_type):
            return kind
    raise ValueError(f"not an attention module simam_viz knows: {type(module).__name__}")
