"""Interactive plotly charts that explain one SimAM neuron (pure functions of arrays).

The app's "Explain SimAM" view draws these from what :mod:`simam_viz.engine.neuron` computed; the
matplotlib panels of :mod:`simam_viz.rendering.neuron_figures` draw the same data (the ``*_data``
helpers of :mod:`simam_viz.rendering.neuron_data`), so the exported PNG and the screen cannot
disagree. Nothing here runs a model, so moving a lambda slider or clicking another neuron
only redraws.

* :func:`channel_map`: one channel's h x w map as a grid of square *scatter* markers, not a
  heat map: Streamlit's ``st.plotly_chart(..., on_select="rerun")`` returns nothing for a
  click on a ``Heatmap`` trace (streamlit/streamlit#8760, #15042: plotly.js emits no point
  data for heat-map selections) but returns ``x``/``y`` for scatter points.
  :func:`neuron_from_selection` turns that selection back into ``(y, x)``.
* :func:`separating_line_chart`: Eqn (2) as a picture: the channel's neurons on the x axis at
  their labels (target +1, others -1) and the minimising line ``w x + b``.
* :func:`weight_curve_chart`: ``sigmoid(1 / e*)`` as a function of ``t`` for the channel's
  statistics (Eqns 5-6) over a histogram of the channel's values.
* :func:`weights_3d`: the top-k channels' weights of a block as stacked slices of markers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from simam_viz.engine.neuron import weight_curve
from simam_viz.rendering.neuron_data import (
    check_position,
    check_values,
    curve_data,
    histogram_data,
    line_data,
)
from simam_viz.rendering.pictures import check_count

__all__ = [
    "MAX_SIDE_3D",
    "channel_map",
    "neuron_from_selection",
    "separating_line_chart",
    "weight_curve_chart",
    "weights_3d",
    "weights_3d_data",
]

LOG = logging.getLogger(__name__)

MAX_SIDE_3D = 24
"""Largest grid side :func:`weights_3d` draws at full resolution; bigger grids are strided.

The browser's WebGL draw, not the figure's build, is what a person waits for: in headless
chromium on SwiftShader (2 CPU cores) 13,448 markers (8 channels of a 41 x 41 grid) took
about 2.5x as long to draw as 3,528 (``benchmarks/neuron_view.py --browser``). 24 keeps
stages 3-4 of the demo models (11 x 11) and of a full-width ResNet-50 (14 x 14, 7 x 7)
whole and strides the larger grids by 2 or 3 (the title and hover say so), so the browser
gets at most ``top_k * 24 * 24`` markers.
"""
MAP_HEIGHT = 420  # px; channel_map sizes its square markers from this
_MAP_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
_TARGET = "#d62728"
_OTHERS = "#1f77b4"


# --- the channel map ------------------------------------------------------------------------


def channel_map(
    weights_hw: np.ndarray,
    *,
    chosen: tuple[int, int] | None = None,
    title: str | None = None,
    label: str = "weight",
    colorscale: str = "Viridis",
) -> go.Figure:
    """One channel's h x w map whose cells can be clicked, the chosen neuron outlined in red.

    Each neuron is a square marker at ``x`` = column, ``y`` = row (rows grow downwards, as in
    an image), coloured by its value; a click in Streamlit selects the marker and comes back
    as that ``x``/``y`` (see :func:`neuron_from_selection`). ``label`` names the value in the
    hover and colour bar ("weight", "value"...). The markers are sized to fill the cells of a
    chart ``MAP_HEIGHT`` pixels high and at least as wide; the outline of ``chosen`` (row,
    column) is a layout shape, not a trace, so it cannot be selected itself. ``dragmode`` is
    left unset: Streamlit then picks "pan" with click selection for ``selection_mode="points"``
    (a click on a marker selects it in either case). Grids above
    4096 cells use WebGL (``Scattergl``), which Streamlit can select too.
    """
    arr = check_values(weights_hw, "weights_hw", 2)
    height, width = arr.shape
    pos = check_position(chosen, (height, width))
    rows, cols = np.divmod(np.arange(arr.size), width)
    plot_px = MAP_HEIGHT - _MAP_MARGIN["t"] - _MAP_MARGIN["b"]
    size = max(2.0, 0.96 * plot_px / max(height, width))
    trace = go.Scattergl if arr.size > 4096 else go.Scatter
    fig = go.Figure(trace(
        x=cols, y=rows, mode="markers", name="neurons",
        marker={"symbol": "square", "size": size, "color": arr.ravel().astype(np.float32),
                "colorscale": colorscale, "colorbar": {"title": {"text": label}, "thickness": 12},
                "line": {"width": 0}},
        hovertemplate=f"y %{{y}}, x %{{x}}<br>{label} %{{marker.color:.4f}}<extra></extra>",
        unselected={"marker": {"opacity": 1.0}}, selected={"marker": {"opacity": 1.0}}))
    if pos is not None:
        y, x = pos
        fig.add_shape(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5,
                      line={"color": _TARGET, "width": 3})
    fig.update_xaxes(range=[-0.5, width - 0.5], showgrid=False, zeroline=False,
                     constrain="domain", title_text="x")
    fig.update_yaxes(range=[height - 0.5, -0.5], showgrid=False, zeroline=False,
                     scaleanchor="x", constrain="domain", title_text="y")
    default = f"{height}x{width} grid" + (f", neuron ({pos[0]}, {pos[1]})" if pos else "")
    fig.update_layout(title=title or default, height=MAP_HEIGHT, margin=_MAP_MARGIN,
                      clickmode="event+select", showlegend=False)
    return fig


def neuron_from_selection(selection: Any, shape: tuple[int, int]) -> tuple[int, int] | None:
    """``(y, x)`` of the first point of a Streamlit plotly selection, or None.

    Accepts the ``event.selection`` of ``st.plotly_chart(channel_map(...), on_select=...)``
    (a mapping with ``points``), the event itself, or a list of points. Points off the grid
    (another trace, a stale selection from a smaller block) give None instead of an index
    the explanation would reject.
    """
    if isinstance(selection, Mapping) and "selection" in selection:
        selection = selection["selection"]
    points = selection.get("points", []) if isinstance(selection, Mapping) else selection
    for point in points or []:
        try:
            y, x = round(float(point["y"])), round(float(point["x"]))
        except (KeyError, TypeError, ValueError):
            continue
        if 0 <= y < shape[0] and 0 <= x < shape[1]:
            return int(y), int(x)
    return None


# --- the separating line (Eqn 2) ------------------------------------------------------------


def separating_line_chart(explanation: Mapping[str, Any]) -> go.Figure:
    """Why a neuron that stands out has low energy: Eqn (2)'s best line, drawn.

    The channel's other neurons sit at y = -1 and the target at y = +1 (the paper's labels
    ``y_o = -1``, ``y_t = 1``); the red line is ``w x + b`` for the exact minimiser ``w``,
    ``b`` of the explanation. The closer the line comes to both labels, the lower the energy:
    a neuron far from the others gets a steep line through +1 at ``t`` and -1 near the
    others' mean; one amid the others gets a flat line near 0 (energy near 2). The dotted
    vertical line is where ``w x + b = 0`` ((t + mean_others) / 2). The printed Eqn (3)'s line
    (opposite sign) is in the legend, hidden until clicked.
    """
    data = line_data(explanation)
    t, others = data["t"], data["others"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=others, y=np.full(others.size, -1.0), mode="markers", name="other neurons (y = -1)",
        marker={"color": _OTHERS, "size": 8, "opacity": 0.55, "symbol": "line-ns-open",
                "line": {"width": 2, "color": _OTHERS}},
        customdata=data["others_yx"],
        hovertemplate="neuron (%{customdata[0]}, %{customdata[1]})<br>x = %{x:.4f}"
                      "<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[t], y=[1.0], mode="markers", name="target t (y = +1)",
        marker={"color": _TARGET, "size": 14, "symbol": "star"},
        hovertemplate="target t = %{x:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=data["line_x"], y=data["line_y"], mode="lines", name="w x + b (Eqn 2 minimum)",
        line={"color": _TARGET, "width": 2.5},
        hovertemplate="w x + b = %{y:.4f} at x = %{x:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[t], y=[data["fit_t"]], mode="markers", name="w t + b",
        marker={"color": "white", "size": 9, "line": {"color": _TARGET, "width": 2}},
        hovertemplate="w t + b = %{y:.4f}<extra></extra>"))
    if "paper_w" in explanation:
        pw, pb = float(explanation["paper_w"]), float(explanation["paper_b"])
        fig.add_trace(go.Scatter(
            x=data["line_x"], y=pw * data["line_x"] + pb, mode="lines", visible="legendonly",
            name="Eqn (3) as printed (wrong sign)", line={"color": "grey", "dash": "dot"}))
    for level in (-1.0, 1.0):
        fig.add_hline(y=level, line={"color": "lightgrey", "dash": "dash", "width": 1})
    if np.isfinite(data["threshold"]):
        fig.add_vline(x=data["threshold"], line={"color": "grey", "dash": "dot", "width": 1})
    title = (f"neuron ({int(explanation['y'])}, {int(explanation['x'])}): "
             f"w = {data['w']:.3f}, b = {data['b']:.3f}")
    if "energy_exact" in explanation:
        title += f", min e = {float(explanation['energy_exact']):.3f}"
    if "separated" in explanation:
        title += f", {float(explanation['separated']):.0%} of others on the -1 side"
    low = min(-1.3, float(data["line_y"].min()) - 0.1)
    high = max(1.3, float(data["line_y"].max()) + 0.1)
    fig.update_layout(
        title=title, height=360, margin={"l": 10, "r": 10, "t": 50, "b": 10},
        xaxis={"title": {"text": "neuron value (SimAM input)"}, "range": list(data["x_range"])},
        yaxis={"title": {"text": "label / w x + b"}, "range": [low, high], "zeroline": True},
        legend={"orientation": "h", "y": -0.2})
    return fig


# --- the weight curve (Eqns 5-6) ------------------------------------------------------------


def weight_curve_chart(
    values: np.ndarray,
    mean: float,
    variance: float,
    lam: float,
    t: float,
    *,
    lam_model: float | None = None,
) -> go.Figure:
    """SimAM's weight as a function of a neuron's value, for this channel and ``lam``.

    ``weight(t) = sigmoid((t - mean)^2 / (4 (variance + lam)) + 1/2)``
    (:func:`simam_viz.engine.neuron.weight_curve`, the module's own expression) with the channel's
    ``mean`` and ``variance`` held fixed, over a histogram of the channel's ``values`` (right
    axis, counts) and the chosen neuron ``t`` marked. Cheap (a few hundred points, no model),
    so a lambda slider can redraw it; with ``lam_model`` (the model's lambda) different from
    ``lam`` the model's curve is drawn dashed for comparison. Note the neurons do not move
    with ``lam``: only the curve does (the model would see other inputs at another lambda).
    """
    vals = check_values(values, "values").ravel()
    grid, curve = curve_data(vals, mean, variance, lam, t)
    centres, counts, widths = histogram_data(vals)
    weight_t = float(weight_curve(t, mean, variance, lam))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centres, y=counts, width=widths, name="neurons of the channel",
                         marker={"color": _OTHERS, "opacity": 0.3}, yaxis="y2",
                         hovertemplate="%{y} neurons near %{x:.3f}<extra></extra>"))
    if lam_model is not None and not np.isclose(lam_model, lam, rtol=1e-12, atol=0):
        fig.add_trace(go.Scatter(
            x=grid, y=weight_curve(grid, mean, variance, lam_model), mode="lines",
            name=f"model's λ = {lam_model:g}", line={"color": "grey", "dash": "dash"},
            hovertemplate="t %{x:.3f}: weight %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=grid, y=curve, mode="lines", name=f"sigmoid(1/e*), λ = {lam:g}",
        line={"color": "black", "width": 2.5},
        hovertemplate="t %{x:.3f}: weight %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[t], y=[weight_t], mode="markers", name="chosen neuron",
        marker={"color": _TARGET, "size": 13, "symbol": "star"},
        hovertemplate="t %{x:.4f}: weight %{y:.4f}<extra></extra>"))
    fig.add_vline(x=float(mean), line={"color": "grey", "dash": "dot", "width": 1},
                  annotation_text="mean", annotation_position="top")
    top = max(1.0, float(curve.max()))
    fig.update_layout(
        title=f"weight = sigmoid(1/e*): mean {mean:.3f}, variance {variance:.3f}, λ {lam:g}",
        height=360, margin={"l": 10, "r": 10, "t": 50, "b": 10}, bargap=0,
        xaxis={"title": {"text": "neuron value t"}},
        yaxis={"title": {"text": "SimAM weight"}, "range": [0.6, top + 0.01]},
        yaxis2={"title": {"text": "neurons"}, "overlaying": "y", "side": "right",
                "showgrid": False, "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.2})
    return fig


# --- the block's 3-D weights ----------------------------------------------------------------


def weights_3d_data(
    weights_chw: np.ndarray, means: np.ndarray, *, top_k: int = 8,
    max_side: int = MAX_SIDE_3D,
) -> dict[str, Any]:
    """The points :func:`weights_3d` draws: one per neuron of the top-k channels.

    Returns ``order`` (channels, highest mean first; ties to the lower index), ``step`` (the
    stride applied to both grid axes, 1 when the grid fits ``max_side``), and per point
    ``channel``, ``y``, ``x`` (indices into the *full* grid), ``z`` (slice height: the top
    channel highest) and ``weight``.
    """
    arr = np.asarray(weights_chw)
    if arr.ndim != 3 or arr.size == 0:
        raise ValueError(f"weights_chw must be a non-empty C x h x w array, got {arr.shape}")
    means = np.asarray(means, dtype=np.float64).ravel()
    if means.shape != (arr.shape[0],):
        raise ValueError(f"need {arr.shape[0]} channel means, got {means.shape[0]}")
    k = min(check_count(top_k, "top_k"), arr.shape[0])
    order = np.argsort(-means, kind="stable")[:k]
    step = max(1, -(-max(arr.shape[1:]) // max_side))
    rows = np.arange(0, arr.shape[1], step)
    cols = np.arange(0, arr.shape[2], step)
    picked = np.asarray(arr[order][:, ::step, ::step], dtype=np.float32)
    if not np.isfinite(picked).all():
        raise ValueError("weights_chw has NaN or infinite values")
    per = rows.size * cols.size
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    return {
        "order": order, "step": step, "grid": arr.shape[1:],
        "channel": np.repeat(order, per).astype(np.int32),
        "y": np.tile(yy.ravel(), k).astype(np.int16),  # int16: a quarter of int64 in the JSON
        "x": np.tile(xx.ravel(), k).astype(np.int16),
        "z": np.repeat(np.arange(k - 1, -1, -1), per).astype(np.int16),
        "weight": picked.ravel(),
    }


def weights_3d(
    weights_chw: np.ndarray, means: np.ndarray, *, top_k: int = 8, colorscale: str = "Viridis",
) -> go.Figure:
    """A block's C x h x w SimAM weights in 3-D: the ``top_k`` channels by mean weight as
    stacked slices (highest mean on top), one marker per neuron, hover: channel, y, x, weight.

    One ``Scatter3d`` trace of 1-D arrays rather than one ``Surface`` per channel: plotly's
    surface hover transposes ``surfacecolor`` and drops ``customdata`` (plotly.py #4586,
    #5157), so a surface could not show the right weight under the cursor. Grids with a side
    above :data:`MAX_SIDE_3D` are strided (every ``step``-th row and column; the title and
    the hover say so), which keeps the figure to at most ``top_k * 24 * 24`` points and its
    build plus ``to_json`` in milliseconds (``benchmarks/neuron_view.py``).
    """
    data = weights_3d_data(weights_chw, means, top_k=top_k)
    step, (height, width) = data["step"], data["grid"]
    order = data["order"]
    sampled = f", sampled every {step} rows and columns" if step > 1 else ""
    strided = f"<br>grid strided by {step}" if step > 1 else ""
    side = -(-max(height, width) // step)
    fig = go.Figure(go.Scatter3d(
        x=data["x"], y=data["y"], z=data["z"], mode="markers",
        marker={"symbol": "square", "size": float(np.clip(150 / side, 2, 8)),
                "color": data["weight"], "colorscale": colorscale, "opacity": 1.0,
                "colorbar": {"title": {"text": "weight"}, "thickness": 12}},
        customdata=np.stack([data["channel"], data["weight"]], axis=1).astype(np.float32),
        hovertemplate="channel %{customdata[0]:d}<br>y %{y}, x %{x}<br>"
                      f"weight %{{customdata[1]:.4f}}{strided}<extra></extra>"))
    k = order.size
    fig.update_layout(
        title=f"top {k} channels by mean weight, {height}x{width} grid{sampled}",
        height=520, margin={"l": 0, "r": 0, "t": 40, "b": 0},
        scene={"xaxis": {"title": {"text": "x"}, "range": [-0.5, width - 0.5]},
               "yaxis": {"title": {"text": "y"}, "autorange": "reversed"},
               "zaxis": {"title": {"text": "channel"}, "tickvals": list(range(k)),
                         "ticktext": [f"ch {int(c)}" for c in order[::-1]],
                         "range": [-0.5, k - 0.5]},
               "aspectmode": "manual", "aspectratio": {"x": 1, "y": height / width, "z": 0.9},
               "camera": {"eye": {"x": 1.5, "y": 1.5, "z": 0.9}}})
    return fig
