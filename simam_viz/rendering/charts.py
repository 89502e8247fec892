"""Interactive plotly charts (pure functions of arrays) for the app's Channels view.

The matplotlib counterparts for export are in :mod:`simam_viz.rendering.figures`.

Maps are downsampled before they reach the browser: plotly serialises every value to JSON.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from simam_viz.rendering.pictures import tile_channels

__all__ = ["channel_bars", "channel_maps"]

MAX_SIDE = 32


def _downsample(maps: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(maps.shape[-2:]) / MAX_SIDE)))
    return maps[..., ::step, ::step]


def channel_maps(weights: np.ndarray, means: np.ndarray, *, top_k: int = 8,
                 colorscale: str = "Viridis") -> go.Figure:
    """The ``top_k`` channels by mean weight as heat maps; hover shows channel and value.

    One heat-map trace of the tiled maps (titles as annotations), not one subplot per
    channel: plotly validates every property of every subplot, and that validation, not the
    data, made each top-k change cost a few hundred milliseconds.
    """
    weights, means = np.asarray(weights, np.float32), np.asarray(means, np.float32)
    k = max(1, min(top_k, weights.shape[0]))
    order = np.argsort(-means, kind="stable")[:k]
    cols = min(4, k)
    rows = -(-k // cols)
    small = _downsample(weights[order])
    h, w = small.shape[1:]
    values, which = tile_channels(small, cols)
    channel = np.where(which >= 0, order[np.maximum(which, 0)], -1)
    fig = go.Figure(go.Heatmap(
        z=values, zmin=float(small.min()), zmax=float(small.max()), colorscale=colorscale,
        customdata=channel, hoverongaps=False,
        hovertemplate="channel %{customdata}<br>weight %{z:.4f}<extra></extra>"))
    for i, c in enumerate(order):
        fig.add_annotation(x=(i % cols) * (w + 1) + (w - 1) / 2, y=(i // cols) * (h + 1) - 0.6,
                           text=f"ch {int(c)} (mean {means[c]:.3f})", showarrow=False,
                           yanchor="bottom", font={"size": 11})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    fig.update_layout(height=60 + 200 * rows, margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


def channel_bars(values: np.ndarray, title: str, *, color: str = "#1f77b4") -> go.Figure:
    """Per-channel weights by channel index (hover: channel, weight)."""
    values = np.asarray(values, np.float32).ravel()
    fig = go.Figure(go.Bar(x=np.arange(values.size), y=values, marker_color=color,
                           hovertemplate="channel %{x}<br>weight %{y:.4f}<extra></extra>"))
    fig.update_layout(title=title, height=280, yaxis_range=[0, 1], bargap=0,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis_title="channel", yaxis_title="weight")
    return fig
