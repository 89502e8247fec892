"""What each figure panel means, said once for the screen and the exports alike.

The paper's Figure 1 is one Grad-CAM per model at the last block, optionally on one colour
scale shared by all models; its Figure 6 is, for one attention block, Grad-CAM on the features
before and after the module, the module's own weights as a map, and Grad-CAM on those weights.
Which of Figure 6's panels a model has follows from its attention kind: every module has a
before and an after; a map of weights needs weights over positions (SimAM's 3-D weights
averaged over channels, CBAM's spatial gate); Grad-CAM on the weights needs weights with the
features' shape (SimAM). The app's views and :mod:`simam_viz.rendering.export` both draw
their panels here, from an :class:`~simam_viz.engine.analysis.Analysis`, at the input's
resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from simam_viz.engine.analysis import Analysis
from simam_viz.networks.kinds import AttentionKind
from simam_viz.networks.models import DEFAULT_BLOCK
from simam_viz.rendering.pictures import overlay

__all__ = [
    "FIGURE1_BLOCK",
    "FIGURE1_WHERE",
    "WEIGHTS_COLORMAP",
    "Panel",
    "figure1_panel",
    "figure6_panel",
    "figure6_panels",
    "shared_maps",
    "unit",
    "weights_map",
]

FIGURE1_BLOCK = DEFAULT_BLOCK
"""Figure 1's maps come from the last bottleneck's output, as the paper draws them."""
FIGURE1_WHERE = "output"
WEIGHTS_COLORMAP = "viridis"
"""Weights are drawn on their own min-max scale in this colour map, never blended with CAMs:
sigmoid weights sit in a narrow band that an absolute [0, 1] scale would flatten."""


@dataclass(frozen=True)
class Panel:
    """One panel of Figure 6: its title and the CAM tap it shows (None: the weights map)."""

    key: str
    title: str
    where: str | None

    @property
    def is_weights(self) -> bool:
        return self.where is None


def figure6_panels(kind: AttentionKind) -> tuple[Panel, ...]:
    """Figure 6's panels for a model of this kind, in order (empty without attention)."""
    if not kind.has_attention:
        return ()
    panels = [Panel("before", f"Grad-CAM before {kind.label}", "before"),
              Panel("after", f"Grad-CAM after {kind.label}", "after")]
    if "full" in kind.shapes:
        panels.append(Panel("weights", "Attention (channel mean)", None))
    elif "spatial" in kind.shapes:
        panels.append(Panel("weights", "Spatial gate", None))
    if kind.cam_weights is not None:
        panels.append(Panel("weights_cam", "Grad-CAM on attention", "attention"))
    return tuple(panels)


def weights_map(weights: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The module's weights as one map over positions (h x w), if it has weights there:
    3-D weights averaged over channels (Figure 6's third map), else the spatial gate."""
    if "full" in weights:
        return weights["full"].mean(axis=0)
    return weights.get("spatial")


def unit(values: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] (all zeros for a constant map)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def shared_maps(results: Sequence[Analysis], block: str, where: str,
                shared: bool) -> list[np.ndarray]:
    """Each model's map in [0, 1]; with ``shared``, raw maps over the largest of them, so
    the models compare on one scale (a weak map stays weak) instead of each on its own."""
    if not shared:
        return [r.cam(block, where) for r in results]
    raws = [r.raw_cam(block, where) for r in results]
    top = max(float(r.max()) for r in raws) or 1.0
    return [r / top for r in raws]


def figure1_panel(results: Sequence[Analysis], i: int, blend: Mapping[str, object],
                  shared: bool) -> np.ndarray:
    """Model ``i``'s Grad-CAM of the paper's Figure 1 at the input's resolution."""
    cam = shared_maps(results, FIGURE1_BLOCK, FIGURE1_WHERE, shared)[i]
    return overlay(results[i].image, cam, **blend)


def figure6_panel(r: Analysis, block: str, panel: Panel,
                  blend: Mapping[str, object]) -> np.ndarray:
    """One of Figure 6's panels of ``r`` at ``block``; the weights panel on its own scale."""
    if panel.is_weights:
        values = weights_map(r.attention_weights(block))
        if values is None:
            raise ValueError(f"{r.model_name} has no weights over positions at {block}")
        return overlay(r.image, unit(values), colormap=WEIGHTS_COLORMAP, alpha=1.0)
    return overlay(r.image, r.cam(block, panel.where), **blend)
