"""Interactive plotly charts of a trust check, for the app's Trust view.

Deletion and insertion curves and similarity by cascade step, drawn from what
:func:`simam_viz.engine.trust.faithfulness` and :func:`simam_viz.engine.trust.sanity_check`
return; nothing here runs a model. The exported composite draws the same numbers in the same
colours with matplotlib (:mod:`simam_viz.rendering.trust_figures`, which also holds the
helpers both read them through), and the sanity strip is one picture
(:func:`simam_viz.rendering.pictures.sanity_strip`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from simam_viz.engine.trust import SanityStep
from simam_viz.rendering.jsonsafe import to_json_safe
from simam_viz.rendering.trust_figures import (
    BASELINE_TITLES,
    CURVE_COLOURS,
    SANITY_COLOURS,
    SANITY_MODE_LABELS,
    flat_steps,
    sanity_rows,
    sanity_series,
)

__all__ = ["curves_chart", "sanity_chart"]


def curves_chart(faith: Mapping[str, Any]) -> go.Figure:
    """RISE deletion and insertion curves: the target's probability by fraction of pixels.

    The legend carries each curve's AUC, so the chart and the numbers above it agree. A check
    run with ``baselines=True`` adds the random and the centre map's curves, thin and dotted
    or dashed in the same colours, so the map's curves can be read against them.
    """
    fractions = np.asarray(faith["fractions"], np.float64)
    fig = go.Figure()
    for name in ("deletion", "insertion"):
        curve = np.asarray(faith[f"{name}_curve"], np.float64)
        auc = float(faith[f"{name}_auc"])
        fig.add_trace(go.Scatter(
            x=fractions, y=curve, mode="lines+markers", name=f"{name} (AUC {auc:.3f})",
            line={"color": CURVE_COLOURS[name]},
            hovertemplate="%{x:.0%} of pixels<br>p = %{y:.3f}<extra>" + name + "</extra>"))
    for base, entry in (faith.get("baselines") or {}).items():
        for name in ("deletion", "insertion"):
            label = f"{name}, {BASELINE_TITLES[base]}"
            fig.add_trace(go.Scatter(
                x=fractions, y=np.asarray(entry[f"{name}_curve"], np.float64), mode="lines",
                name=f"{label} (AUC {float(entry[f'{name}_auc']):.3f})",
                line={"color": CURVE_COLOURS[name], "width": 1,
                      "dash": "dot" if base == "random" else "dash"},
                hovertemplate="%{x:.0%} of pixels<br>p = %{y:.3f}<extra>" + label
                + "</extra>"))
    fig.update_layout(
        height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title=f"Target probability as pixels are deleted / inserted ({faith['target_name']})",
        xaxis={"title": "fraction of pixels, most relevant first", "tickformat": ".0%"},
        yaxis={"title": "softmax probability", "range": [0, 1.02]},
        legend={"orientation": "h", "y": -0.25})
    return fig


def sanity_chart(steps: Sequence[SanityStep | Mapping[str, Any]], *,
                 mode: str = "cascade") -> go.Figure:
    """Spearman, SSIM and HOG similarity to the trained model's map, by step of ``mode``.

    A faithful map falls towards 0 as the layers it depends on are randomised. A flat map
    counts as Spearman and HOG 0 (the flat-map rule of
    :func:`simam_viz.engine.trust.compare_maps`) and is marked by a grey x on the zero line;
    NaN (a flat trained map) is a gap in the line: plotly sends its data to the browser as
    JSON, where a gap is null.
    """
    rows = sanity_rows(steps)
    labels = SANITY_MODE_LABELS[mode]
    layers = [r["layer"] for r in rows]
    fig = go.Figure()
    for key, colour in SANITY_COLOURS.items():
        fig.add_trace(go.Scatter(x=layers, y=to_json_safe(sanity_series(rows, key)),
                                 mode="lines+markers", name=key, line={"color": colour},
                                 hovertemplate="%{x}: %{y:.3f}<extra>" + key + "</extra>"))
    flat = [layer for layer, is_flat in zip(layers, flat_steps(rows), strict=True) if is_flat]
    if flat:
        fig.add_trace(go.Scatter(x=flat, y=[0.0] * len(flat), mode="markers", name="flat map",
                                 marker={"symbol": "x", "color": "grey", "size": 9},
                                 hovertemplate="%{x}: flat map (counted as 0)<extra></extra>"))
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(
        height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title=labels["title"],
        xaxis={"title": labels["axis"], "tickangle": -45},
        yaxis={"title": "similarity", "range": [-1.02, 1.02]},
        legend={"orientation": "h", "y": -0.45})
    return fig
