"""Attention taps: where in a bottleneck each map comes from, and hooks that record it.

A *tap* is a submodule whose output the analysis needs: the bottleneck's output, the features
entering and leaving the attention module and, where the kind has 3-D weights, those weights.
Beside the taps, every weight the module's kind produces (:mod:`simam_viz.networks.kinds`:
channel, spatial, 3-D) is recorded as its sigmoid outputs it. :class:`Recorder` hooks all
taps of the requested blocks for ONE forward and ONE backward pass, keeps activations and their
gradients, and always removes its hooks, so a shared model is left exactly as it was found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from simam_viz.networks.kinds import kind_of_module
from simam_viz.networks.models import attention_module

__all__ = ["Recorder", "Tap", "channel_gate", "taps_for_block", "weight_gates"]



@dataclass(frozen=True)
class Tap:
    """One activation to record: ``(block, where)`` and the module whose output it is."""

    block: str
    where: str
    module: nn.Module


def weight_gates(module: nn.Module | None) -> dict[str, nn.Module]:
    """The children whose outputs are the module's weights, by shape (its kind says which)."""
    if module is None:
        return {}
    return kind_of_module(module).gate_modules(module)


def channel_gate(module: nn.Module | None) -> nn.Module | None:
    """The child whose output is the per-channel weight vector (excitation, gate), if any."""
    return weight_gates(module).get("channel")


def taps_for_block(model: nn.Module, block: str) -> list[Tap]:
    """Every map-producing tap of one bottleneck: output, then before, after, attention."""
    bottleneck = model.get_submodule(block)
    taps = [Tap(block, "output", bottleneck)]
    module = attention_module(model, block)
    if module is None:
        return taps
    kind = kind_of_module(module)
    site = getattr(bottleneck, kind.site)
    taps += [Tap(block, "before", site[0]), Tap(block, "after", module)]
    if kind.cam_weights is not None:
        taps.append(Tap(block, "attention", kind.gate_modules(module)[kind.cam_weights]))
    return taps


@dataclass
class Recorder:
    """Context manager recording tap activations, their gradients and channel gates.

    The forward hook stores the output and returns a clone so that in-place operations further
    down (``out += identity`` after ``bn3``, in-place ReLU) cannot overwrite what was recorded:
    they act on the clone, which is numerically the same tensor, so logits are unchanged. The
    stored tensor is the module's own output, which nothing downstream sees any more.
    """

    taps: list[Tap]
    gates: dict[tuple[str, str], nn.Module] = field(default_factory=dict)
    activations: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    gradients: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    gate_values: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    _handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    @classmethod
    def for_blocks(cls, model: nn.Module, blocks: Iterable[str]) -> Recorder:
        taps: list[Tap] = []
        gates: dict[tuple[str, str], nn.Module] = {}
        for block in blocks:
            taps += taps_for_block(model, block)
            for shape, gate in weight_gates(attention_module(model, block)).items():
                gates[(block, shape)] = gate
        return cls(taps, gates)

    def __enter__(self) -> Recorder:
        try:
            for tap in self.taps:
                self._handles.append(tap.module.register_forward_hook(self._capture(tap)))
            for key, gate in self.gates.items():
                self._handles.append(gate.register_forward_hook(self._capture_gate(key)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this recorder registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def _capture(self, tap: Tap):
        key = (tap.block, tap.where)

        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
            self.activations[key] = output.detach()
            if output.requires_grad:

                def store(grad: torch.Tensor) -> None:
                    self.gradients[key] = grad.detach().clone()

                output.register_hook(store)
            return output.clone()

        return hook

    def _capture_gate(self, key: tuple[str, str]):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.gate_values[key] = output.detach().clone()

        return hook
