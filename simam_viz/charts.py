"""Interactive plotly charts (pure functions of arrays) for the app's Channels view.

Maps are downsampled before they reach the browser: plotly serialises every value to JSON.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["channel_bars", "channel_maps"]

MAX_SIDE = 32


def _downsample(maps: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(maps.shape[-2:]) / MAX_SIDE)))
    return maps[..., ::step, ::step]


def channel_maps(weights: np.ndarray, means: np.ndarray, *, top_k: int = 8,
                 colorscale: str = "Viridis") -> go.Figure:
    """The ``top_k`` channels by mean weight as heat maps; hover shows channel and value."""
    weights, means = np.asarray(weights, np.float32), np.asarray(means, np.float32)
    k = max(1, min(top_k, weights.shape[0]))
    order = np.argsort(-means, kind="stable")[:k]
    cols = min(4, k)
    rows = -(-k // cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.03, vertical_spacing=0.08,
                        subplot_titles=[f"ch {int(c)} (mean {means[c]:.3f})" for c in order])
    small = _downsample(weights[order])
    lo, hi = float(small.min()), float(small.max())
    for i, c in enumerate(order):
        fig.add_trace(
            go.Heatmap(z=small[i][::-1], zmin=lo, zmax=hi, colorscale=colorscale,
                       showscale=i == 0, customdata=np.full(small[i].shape, int(c)),
                       hovertemplate="channel %{customdata}<br>weight %{z:.4f}<extra></extra>"),
            row=i // cols + 1, col=i % cols + 1,
        )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, scaleanchor="x")
    fig.update_layout(height=220 * rows, margin={"l": 10, "r": 10, "t": 40, "b": 10})
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
