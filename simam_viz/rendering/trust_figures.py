"""Pictures of a trust check (pure functions of its numbers and maps), on screen and exported.

The app's Trust view and the export share these: plotly charts for the page (deletion and
insertion curves, similarity by cascade step), one mosaic picture for the sanity strip (one
image on a page instead of 19, as for the depth strip), and a matplotlib composite plus a
JSON-ready report for the zip. Inputs are what :func:`simam_viz.engine.trust.faithfulness` and
:func:`simam_viz.engine.trust.sanity_check` return; nothing here runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simam_viz.engine.trust import SANITY_SCORES, SCORES, SanityStep
from simam_viz.rendering.figures import mosaic, overlay

__all__ = [
    "FAITHFULNESS_KEYS",
    "curves_chart",
    "report",
    "sanity_chart",
    "sanity_strip",
    "score_lines",
    "trust_figure",
]

FAITHFULNESS_KEYS: tuple[str, ...] = tuple(SCORES)
_SCORE_TITLES = {"road": "ROAD", "drop_in_confidence": "Drop in confidence",
                 "increase_in_confidence": "Increase in confidence",
                 "deletion_auc": "Deletion AUC", "insertion_auc": "Insertion AUC"}
_SANITY_COLOURS = {"spearman": "#1f77b4", "ssim": "#2ca02c", "hog": "#d62728"}
_CURVE_COLOURS = {"deletion": "#d62728", "insertion": "#1f77b4"}


def score_lines(faith: Mapping[str, Any]) -> list[tuple[str, float, str, str]]:
    """``(title, value, direction, meaning)`` per score, in :data:`SCORES`'s order."""
    return [(_SCORE_TITLES[k], float(faith[k]), SCORES[k][0], SCORES[k][1])
            for k in FAITHFULNESS_KEYS]


def curves_chart(faith: Mapping[str, Any]) -> go.Figure:
    """RISE deletion and insertion curves: the target's probability by fraction of pixels.

    The legend carries each curve's AUC, so the chart and the numbers above it agree.
    """
    fractions = np.asarray(faith["fractions"], np.float64)
    fig = go.Figure()
    for name in ("deletion", "insertion"):
        curve = np.asarray(faith[f"{name}_curve"], np.float64)
        auc = float(faith[f"{name}_auc"])
        fig.add_trace(go.Scatter(
            x=fractions, y=curve, mode="lines+markers", name=f"{name} (AUC {auc:.3f})",
            line={"color": _CURVE_COLOURS[name]},
            hovertemplate="%{x:.0%} of pixels<br>p = %{y:.3f}<extra>" + name + "</extra>"))
    fig.update_layout(
        height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title=f"Target probability as pixels are deleted / inserted ({faith['target_name']})",
        xaxis={"title": "fraction of pixels, most relevant first", "tickformat": ".0%"},
        yaxis={"title": "softmax probability", "range": [0, 1.02]},
        legend={"orientation": "h", "y": -0.25})
    return fig


def _steps(steps: Sequence[SanityStep | Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [s.scores() if isinstance(s, SanityStep) else s for s in steps]


def sanity_chart(steps: Sequence[SanityStep | Mapping[str, Any]]) -> go.Figure:
    """Spearman, SSIM and HOG similarity to the trained model's map, by cascade step.

    A faithful map falls towards 0 as the layers it depends on are randomised; NaN (a flat
    map) is a gap in the line.
    """
    rows = _steps(steps)
    layers = [r["layer"] for r in rows]
    fig = go.Figure()
    for key, colour in _SANITY_COLOURS.items():
        values = [None if _nan(r[key]) else float(r[key]) for r in rows]
        fig.add_trace(go.Scatter(x=layers, y=values, mode="lines+markers", name=key,
                                 line={"color": colour},
                                 hovertemplate="%{x}: %{y:.3f}<extra>" + key + "</extra>"))
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(
        height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title="Similarity to the trained model's map as layers are randomised (logits down)",
        xaxis={"title": "randomised down to", "tickangle": -45},
        yaxis={"title": "similarity", "range": [-1.02, 1.02]},
        legend={"orientation": "h", "y": -0.45})
    return fig


def _json_number(value: Any) -> Any:
    """NaN (a flat map's correlation) as None: JSON has no NaN, and strict readers refuse it."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sanity_strip(image: np.ndarray, reference: np.ndarray,
                 steps: Sequence[SanityStep], *, colormap: str = "jet", alpha: float = 0.5,
                 per_row: int = 10) -> np.ndarray:
    """The trained model's map, then the map after each cascade step, as one picture."""
    panels = [overlay(image, reference, colormap=colormap, alpha=alpha)]
    panels += [overlay(image, s.cam, colormap=colormap, alpha=alpha) for s in steps]
    labels = ["trained", *(f"-{s.layer}" for s in steps)]
    return mosaic(panels, labels, per_row=per_row)


def report(faith: Mapping[str, Any], steps: Sequence[SanityStep | Mapping[str, Any]],
           **context: Any) -> dict[str, Any]:
    """A JSON-ready record of one check: scores with their direction and meaning, curves,
    the cascade's similarities (maps left out), and ``context`` (model, image, ...)."""
    return {
        **context,
        "faithfulness": {k: _json_number(v) for k, v in faith.items()},
        "sanity": [{k: _json_number(v) for k, v in r.items()} for r in _steps(steps)],
        "directions": {k: v[0] for k, v in {**SCORES, **SANITY_SCORES}.items()},
        "meanings": {k: v[1] for k, v in {**SCORES, **SANITY_SCORES}.items()},
    }


def trust_figure(image: np.ndarray, reference: np.ndarray, faith: Mapping[str, Any],
                 steps: Sequence[SanityStep], *, title: str = "", colormap: str = "jet",
                 alpha: float = 0.5) -> Figure:
    """The export composite: scores, the two curves, the similarity chart and the strip."""
    fig = Figure(figsize=(12.0, 8.2))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 1.15], hspace=0.45, wspace=0.3,
                            left=0.05, right=0.98, top=0.9, bottom=0.03)
    fig.suptitle(title or f"Trust check: {faith['block']} {faith['where']}, {faith['method']}",
                 fontsize=11)
    text = fig.add_subplot(grid[0, 0])
    text.axis("off")
    lines = [f"{t}: {v:.3f}  ({d})" for t, v, d, _ in score_lines(faith)]
    lines.append(f"target: {faith['target_name']}  p = {faith['probability']:.3f}")
    text.text(0.0, 1.0, "\n".join(lines), va="top", fontsize=8.5, family="monospace")
    ax = fig.add_subplot(grid[0, 1])
    fractions = np.asarray(faith["fractions"])
    for name in ("deletion", "insertion"):
        ax.plot(fractions, faith[f"{name}_curve"], marker=".", color=_CURVE_COLOURS[name],
                label=f"{name} AUC {faith[f'{name}_auc']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="fraction of pixels", ylabel="probability")
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    ax2 = fig.add_subplot(grid[0, 2])
    rows = _steps(steps)
    x = np.arange(len(rows))
    for key, colour in _SANITY_COLOURS.items():
        ax2.plot(x, [float("nan") if _nan(r[key]) else r[key] for r in rows], marker=".",
                 color=colour, label=key)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks(x, [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax2.set(ylim=(-1.02, 1.02), ylabel="similarity to trained map")
    ax2.legend(fontsize=7)
    ax2.tick_params(axis="y", labelsize=7)
    strip = fig.add_subplot(grid[1, :])
    strip.imshow(sanity_strip(image, reference, steps, colormap=colormap, alpha=alpha))
    strip.axis("off")
    strip.set_title("Cascading randomization: the map after each step", fontsize=9)
    return fig
