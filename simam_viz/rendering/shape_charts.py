"""Interactive plotly charts of the Attention shapes view (the paper's Figure 2, live).

Each chart takes ``(model name, ShapeSummary)`` pairs (:func:`simam_viz.engine.attention_shapes.
shape_summary`) and puts every model on one scale: weights are sigmoids in (0, 1), channel
profiles are drawn against the channel's rank as a fraction (models have different channel
counts where their modules sit), and maps share one colour range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simam_viz.engine.attention_shapes import SHARES, ShapeSummary
from simam_viz.rendering.shape_figures import SHARE_COLOURS

__all__ = ["channel_profiles", "position_maps", "variance_bars"]

Models = Sequence[tuple[str, ShapeSummary]]
_SHARE_TEXT = {"channel": "channel (what SE/ECA can do)",
               "spatial": "spatial (what a spatial gate can do)",
               "interaction": "interaction (3-D only)"}
_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def variance_bars(models: Models) -> go.Figure:
    """One stacked bar per model: the shares of its weights' variance (``weight_variance``)."""
    names = [name for name, _ in models]
    fig = go.Figure()
    for share in SHARES:
        values = [s.variance[share] for _, s in models]
        fig.add_trace(go.Bar(
            y=names, x=[0.0 if np.isnan(v) else v for v in values], orientation="h",
            name=_SHARE_TEXT[share], marker_color=SHARE_COLOURS[share],
            hovertemplate="%{y}: %{x:.1%} " + share + "<extra></extra>"))
    for name, s in models:
        if np.isnan(s.variance["channel"]):
            fig.add_annotation(x=0.5, y=name, text="all weights equal: no variance",
                               showarrow=False)
    fig.update_layout(barmode="stack", height=90 + 45 * len(models), margin=_MARGIN,
                      title="Where the weights vary (shares of their variance)",
                      xaxis={"range": [0, 1], "tickformat": ".0%"},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def channel_profiles(models: Models) -> go.Figure:
    """Each model's channel weights, strongest first, against the channel's rank (0-1).

    For 3-D weights the line is each channel's mean over positions and the band its mean
    plus and minus its spread over positions: a band as wide as the line is tall says the
    channel's neurons do not share one weight.
    """
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for i, (name, s) in enumerate(models):
        if s.channel is None:
            continue
        colour = palette[i % len(palette)]
        order, rank, mean, spread = s.profile()
        if spread is not None:
            fig.add_trace(go.Scatter(
                x=np.concatenate([rank, rank[::-1]]),
                y=np.concatenate([mean + spread, (mean - spread)[::-1]]), fill="toself",
                fillcolor=colour, opacity=0.2, line={"width": 0}, hoverinfo="skip",
                name=f"{name}: spread over positions"))
        fig.add_trace(go.Scatter(
            x=rank, y=mean, mode="lines", line={"color": colour}, name=name,
            customdata=order,
            hovertemplate=name + "<br>channel %{customdata}<br>weight %{y:.4f}<extra></extra>"))
    fig.update_layout(height=320, margin=_MARGIN, title="Channel weights, strongest first",
                      xaxis={"title": "channel rank (fraction of the block's channels)",
                             "range": [0, 1]},
                      yaxis={"title": "weight", "range": [0, 1]},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def position_maps(models: Models) -> go.Figure | None:
    """Maps over positions on one colour range: for every model whose weights vary over
    positions, the channel mean of the weights it applies, and CBAM's spatial gate itself.
    None when no model has weights over positions (SE and ECA cannot)."""
    panels: list[tuple[str, np.ndarray]] = []
    for name, s in models:
        if s.spatial is not None:
            panels.append((f"{name}: spatial gate", s.spatial))
        if s.applied_map is not None:
            what = "channel x spatial" if s.spatial is not None else "3-D weights"
            panels.append((f"{name}: {what}, channel mean", s.applied_map))
    if not panels:
        return None
    low = min(float(m.min()) for _, m in panels)
    high = max(float(m.max()) for _, m in panels)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels],
                        horizontal_spacing=0.04)
    for j, (_, values) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(
            z=values, zmin=low, zmax=high, colorscale="Viridis", showscale=j == len(panels),
            hovertemplate="row %{y}, col %{x}<br>weight %{z:.4f}<extra></extra>"),
            row=1, col=j)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{j}" if j > 1 else "x",
                         visible=False, row=1, col=j)
        fig.update_xaxes(visible=False, row=1, col=j)
    fig.update_layout(height=300, margin=_MARGIN)
    fig.update_annotations(font_size=11)
    return fig
