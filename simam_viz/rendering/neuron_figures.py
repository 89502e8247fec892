"""Matplotlib panels that explain one SimAM neuron, for export (PNG) rather than the screen.

The same three views as the app's plotly charts (:mod:`simam_viz.rendering.neuron_charts`),
drawn from the same data helpers (:mod:`simam_viz.rendering.neuron_data`) so an exported
figure matches what was on screen, without loading plotly:

* :func:`channel_map_figure`: the channel's map with the neuron outlined;
* :func:`separating_line_figure`: Eqn (2)'s best line between the target (+1) and the
  channel's other neurons (-1);
* :func:`weight_curve_figure`: ``sigmoid(1 / e*)`` as a function of ``t`` over a histogram
  of the channel's values (Eqns 5-6);
* :func:`explain_figure`: the three side by side under a title carrying the numbers, in the
  manner of the paper's figures; :func:`explain_panels` gives all four by name.

Inputs are the mapping of :func:`simam_viz.engine.neuron.explain_neuron` (or
:func:`~simam_viz.engine.neuron.explain_from_arrays`) or plain arrays; nothing here runs a model.
As in :mod:`simam_viz.rendering.figures`, figures are ``Figure`` objects on their own Agg canvas (no
pyplot state shared between the app's sessions) with sizes fixed in inches, so the pixel
size of a PNG is known in advance: a single panel is ``PANEL_W`` x ``PANEL_H`` inches, the
composite ``3 * PANEL_W`` x ``PANEL_H + HEADER``. Render with
:func:`simam_viz.rendering.figures.figure_to_png` or :func:`~simam_viz.rendering.figures.save_png`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from simam_viz.engine.neuron import weight_curve
from simam_viz.rendering.neuron_data import (
    check_position,
    check_values,
    curve_data,
    histogram_data,
    line_data,
)
from simam_viz.rendering.pictures import resolve_colormap

__all__ = [
    "HEADER",
    "PANELS",
    "PANEL_H",
    "PANEL_W",
    "channel_map_figure",
    "explain_figure",
    "explain_panels",
    "separating_line_figure",
    "weight_curve_figure",
]

PANEL_W = 3.6  # inches per panel, wide enough for a second y axis or a colour bar
PANEL_H = 3.2
HEADER = 0.55  # inches above the composite's panels for its two-line title
PANELS = ("map", "line", "curve", "explain")  # the names explain_panels returns, in order
# Axes box inside a panel, in inches from its left/bottom edge (left, bottom, right, top
# margins): room for tick labels, axis titles and, on the right, a colour bar or twin axis.
_MARGINS = (0.6, 0.75, 0.6, 0.4)
_TARGET = "tab:red"
_OTHERS = "tab:blue"
_FONT = 7


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _panel_axes(fig: Figure, col: int) -> Axes:
    """The axes of panel ``col`` (0-based, left to right) at the figure's bottom."""
    fig_w, fig_h = fig.get_size_inches()
    left, bottom, right, top = _MARGINS
    box = (col * PANEL_W + left, bottom, PANEL_W - left - right, PANEL_H - bottom - top)
    ax = fig.add_axes((box[0] / fig_w, box[1] / fig_h, box[2] / fig_w, box[3] / fig_h))
    ax.tick_params(labelsize=_FONT - 1)
    return ax


def _legend(ax: Axes, handles: list[Any] | None = None) -> None:
    """A small legend under the axes: inside them it would cover the points it explains."""
    kwargs = {"handles": handles} if handles is not None else {}
    ax.legend(fontsize=_FONT - 1.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
              frameon=False, handlelength=1.5, columnspacing=1.0, **kwargs)


# --- drawing into one axes --------------------------------------------------------------------


def _draw_map(ax: Axes, values: np.ndarray, chosen: tuple[int, int] | None, *, title: str,
              label: str, colormap: Any) -> None:
    shown = ax.imshow(values, cmap=resolve_colormap(colormap), interpolation="nearest")
    if chosen is not None:
        y, x = chosen
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor=_TARGET,
                               linewidth=1.8))
    ax.set_xlabel("x", fontsize=_FONT)
    ax.set_ylabel("y", fontsize=_FONT)
    ax.set_title(title, fontsize=_FONT + 0.5)
    bar = ax.figure.colorbar(shown, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label(label, fontsize=_FONT - 1)
    bar.ax.tick_params(labelsize=_FONT - 1.5)


def _draw_line(ax: Axes, explanation: Mapping[str, Any]) -> None:
    data = line_data(explanation)
    t = data["t"]
    ax.axhline(1.0, color="lightgrey", linestyle="--", linewidth=0.8)
    ax.axhline(-1.0, color="lightgrey", linestyle="--", linewidth=0.8)
    ax.axhline(0.0, color="lightgrey", linewidth=0.6)
    if np.isfinite(data["threshold"]):
        ax.axvline(data["threshold"], color="grey", linestyle=":", linewidth=0.9)
    ax.scatter(data["others"], np.full(data["others"].size, -1.0), marker="|", s=60,
               color=_OTHERS, alpha=0.6, linewidths=1.2, label="other neurons (-1)")
    ax.plot(data["line_x"], data["line_y"], color=_TARGET, linewidth=1.6,
            label=f"w x + b  (w {data['w']:.3f}, b {data['b']:.3f})")
    ax.scatter([t], [1.0], marker="*", s=110, color=_TARGET, zorder=3, label="target t (+1)")
    ax.scatter([t], [data["fit_t"]], s=28, facecolor="white", edgecolor=_TARGET, zorder=3,
               label=f"w t + b = {data['fit_t']:.3f}")
    low = min(-1.3, float(data["line_y"].min()) - 0.1)
    high = max(1.3, float(data["line_y"].max()) + 0.1)
    ax.set_xlim(*data["x_range"])
    ax.set_ylim(low, high)
    ax.set_xlabel("neuron value (SimAM input)", fontsize=_FONT)
    ax.set_ylabel("label / w x + b", fontsize=_FONT)
    title = "Eqn (2): best line"
    if "energy_exact" in explanation:
        title += f", min e = {float(explanation['energy_exact']):.3f}"
    ax.set_title(title, fontsize=_FONT + 0.5)
    _legend(ax)


def _draw_curve(ax: Axes, values: np.ndarray, mean: float, variance: float, lam: float,
                t: float, lam_model: float | None) -> None:
    grid, curve = curve_data(values, mean, variance, lam, t)
    centres, counts, widths = histogram_data(values)
    hist = ax.twinx()
    hist.bar(centres, counts, width=widths, color=_OTHERS, alpha=0.25, label="neurons")
    hist.set_ylabel("neurons", fontsize=_FONT)
    hist.tick_params(labelsize=_FONT - 1)
    ax.set_zorder(hist.get_zorder() + 1)  # the curve over the bars, not under them
    ax.patch.set_visible(False)
    handles = []
    if lam_model is not None and not np.isclose(lam_model, lam, rtol=1e-12, atol=0):
        handles += ax.plot(grid, weight_curve(grid, mean, variance, lam_model), color="grey",
                           linestyle="--", linewidth=1.0, label=f"model's λ {lam_model:g}")
    handles += ax.plot(grid, curve, color="black", linewidth=1.6,
                       label=f"sigmoid(1/e*), λ {lam:g}")
    weight_t = float(weight_curve(t, mean, variance, lam))
    handles.append(ax.scatter([t], [weight_t], marker="*", s=110, color=_TARGET, zorder=3,
                              label=f"chosen: {weight_t:.3f}"))
    ax.axvline(mean, color="grey", linestyle=":", linewidth=0.9)
    ax.set_ylim(0.6, max(1.0, float(curve.max())) + 0.01)
    ax.set_xlabel("neuron value t", fontsize=_FONT)
    ax.set_ylabel("SimAM weight", fontsize=_FONT)
    ax.set_title(f"weight vs t: mean {mean:.3f}, var {variance:.3f}", fontsize=_FONT + 0.5)
    _legend(ax, handles + [hist.containers[0]])


# --- single panels ----------------------------------------------------------------------------


def channel_map_figure(
    weights_hw: np.ndarray,
    *,
    chosen: tuple[int, int] | None = None,
    title: str | None = None,
    label: str = "SimAM weight",
    colormap: Any = "viridis",
) -> Figure:
    """The channel's h x w map (weights or values) with neuron ``chosen`` (row, column)
    outlined in red, on its own min-max colour scale with a colour bar.

    Size: ``PANEL_W`` x ``PANEL_H`` inches. Raises ``ValueError`` (one line) for a map that
    is not a finite 2-D array or a position outside it.
    """
    values = check_values(weights_hw, "weights_hw", 2)
    pos = check_position(chosen, values.shape)
    fig = _new_figure(PANEL_W, PANEL_H)
    default = "channel map" + (f", neuron ({pos[0]}, {pos[1]})" if pos else "")
    _draw_map(_panel_axes(fig, 0), values, pos, title=title or default, label=label,
              colormap=colormap)
    return fig


def separating_line_figure(explanation: Mapping[str, Any]) -> Figure:
    """Eqn (2) drawn: the others at -1, the target at +1 and the minimising ``w x + b``.

    Uses ``values``, ``y``, ``x``, ``t``, ``w``, ``b`` and ``threshold`` of the mapping. A
    neuron far from the others gets a steep line that nearly reaches both labels (low
    energy); one amid them gets a flat line near 0 (energy near 2).
    Size: ``PANEL_W`` x ``PANEL_H`` inches.
    """
    fig = _new_figure(PANEL_W, PANEL_H)
    _draw_line(_panel_axes(fig, 0), explanation)
    return fig


def weight_curve_figure(
    values: np.ndarray,
    mean: float,
    variance: float,
    lam: float,
    t: float,
    *,
    lam_model: float | None = None,
) -> Figure:
    """SimAM's weight as a function of ``t`` for the channel's ``mean``/``variance`` and
    ``lam``, over a histogram of the channel's ``values``, neuron ``t`` starred; with
    ``lam_model`` (different from ``lam``) the model's own curve dashed beside it.

    Size: ``PANEL_W`` x ``PANEL_H`` inches.
    """
    vals = check_values(values, "values").ravel()
    fig = _new_figure(PANEL_W, PANEL_H)
    _draw_curve(_panel_axes(fig, 0), vals, float(mean), float(variance), float(lam), float(t),
                lam_model)
    return fig


# --- the composite ----------------------------------------------------------------------------


def _headline(explanation: Mapping[str, Any]) -> str:
    """Two lines of numbers, all at the model's lambda (the one the energies were computed
    at); a display-only lambda shows in the curve panel's legend instead."""
    lam = float(explanation["lambda"])
    where = f"{explanation['block']}, " if explanation.get("block") else ""
    first = (f"{where}channel {explanation['channel']}, neuron ({explanation['y']}, "
             f"{explanation['x']}) of {explanation['grid'][0]}x{explanation['grid'][1]}:  "
             f"t = {explanation['t']:.3f}, mean {explanation['mean']:.3f}, "
             f"variance {explanation['variance']:.3f}, λ {lam:g}")
    second = (f"Eqn (5) e* = {explanation['energy']:.3f}  (exact Eqn (2) minimum "
              f"{explanation['energy_exact']:.3f}),  weight sigmoid(1/e*) = "
              f"{explanation['weight']:.3f}  (rank {explanation['weight_rank']} of "
              f"{explanation['M']})")
    return f"{first}\n{second}"


def explain_figure(explanation: Mapping[str, Any], *, lam: float | None = None) -> Figure:
    """Map, separating line and weight curve side by side, the numbers in the title.

    ``lam`` redraws the weight curve at another lambda (display only; the model's lambda,
    ``explanation["lambda"]``, is then drawn dashed); the map shows the channel's weights
    (``explanation["weights"]``, else its values). Size: ``3 * PANEL_W`` x
    ``PANEL_H + HEADER`` inches.
    """
    lam_model = float(explanation["lambda"])
    lam = lam_model if lam is None else float(lam)
    fig = _new_figure(3 * PANEL_W, PANEL_H + HEADER)
    has_weights = explanation.get("weights") is not None
    shown = explanation["weights"] if has_weights else explanation["values"]
    values = check_values(shown, "map", 2)
    pos = check_position((explanation["y"], explanation["x"]), values.shape)
    _draw_map(_panel_axes(fig, 0), values, pos, title="channel map",
              label="SimAM weight" if has_weights else "value", colormap="viridis")
    _draw_line(_panel_axes(fig, 1), explanation)
    _draw_curve(_panel_axes(fig, 2), check_values(explanation["values"], "values").ravel(),
                float(explanation["mean"]), float(explanation["variance"]), lam,
                float(explanation["t"]), lam_model)
    fig.suptitle(_headline(explanation), fontsize=_FONT + 1, y=1 - 0.08 / fig.get_figheight(),
                 va="top")
    return fig


def explain_panels(
    explanation: Mapping[str, Any], *, lam: float | None = None
) -> dict[str, Figure]:
    """The three panels and the composite, by the names of :data:`PANELS`.

    ``map``: the channel's weights (values if the mapping has none) with the neuron outlined;
    ``line``: :func:`separating_line_figure`; ``curve``: :func:`weight_curve_figure` at
    ``lam`` (default the model's); ``explain``: :func:`explain_figure`.
    """
    lam_model = float(explanation["lambda"])
    has_weights = explanation.get("weights") is not None
    chosen = (int(explanation["y"]), int(explanation["x"]))
    return {
        "map": channel_map_figure(
            explanation["weights"] if has_weights else explanation["values"], chosen=chosen,
            label="SimAM weight" if has_weights else "value",
            title=f"channel {explanation['channel']}, neuron {chosen}"),
        "line": separating_line_figure(explanation),
        "curve": weight_curve_figure(
            explanation["values"], explanation["mean"], explanation["variance"],
            lam_model if lam is None else lam, explanation["t"], lam_model=lam_model),
        "explain": explain_figure(explanation, lam=lam),
    }
