"""The numbers behind the neuron-explaining views, shared by the plotly charts and the exports.

:mod:`simam_viz.rendering.neuron_charts` (plotly, on screen) and
:mod:`simam_viz.rendering.neuron_figures` (matplotlib, exported PNG) both draw what these
functions return, so the two cannot disagree, and neither has to import the other: an
export never loads plotly. Everything here is numpy on the mapping of
:func:`simam_viz.engine.neuron.explain_neuron` or on plain arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simam_viz.engine.neuron import weight_curve
from simam_viz.rendering.pictures import check_map

__all__ = [
    "CURVE_POINTS",
    "check_position",
    "check_values",
    "curve_data",
    "histogram_data",
    "line_data",
]

CURVE_POINTS = 241  # samples of the weight curve: smooth at any zoom, a few kB of JSON


def check_values(values: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """A finite, non-empty float64 array (of ``ndim`` dimensions if given), or a one-line
    ValueError: NaN would draw as a gap and hide the neuron being explained. float64, not
    the pictures' float32: the separating line is fitted through these values."""
    return check_map(values, name, ndim, np.float64)


def check_position(chosen: Sequence[int] | None, shape: tuple[int, int]) -> tuple[int, int] | None:
    """``chosen`` (row, column) as ints if it lies on a ``shape`` grid; None stays None."""
    if chosen is None:
        return None
    y, x = (int(v) for v in chosen)
    if not (0 <= y < shape[0] and 0 <= x < shape[1]):
        raise ValueError(f"chosen neuron {(y, x)} is outside the {shape[0]}x{shape[1]} grid")
    return y, x


# --- the separating line (Eqn 2) ----------------------------------------------------------


def line_data(explanation: Mapping[str, Any]) -> dict[str, Any]:
    """What the separating-line charts draw, from an :func:`~simam_viz.engine.neuron.explain_neuron`
    mapping: the others' values, the target, and the line ``w x + b`` sampled at its ends,
    its zero crossing (``threshold``, NaN when there is none on the chart) and ``t`` (so the
    chart holds ``w t + b`` exactly).
    """
    values = check_values(explanation["values"], "values", 2)
    y, x = int(explanation["y"]), int(explanation["x"])
    t = float(explanation["t"])
    others = np.delete(values.ravel(), y * values.shape[1] + x)
    w, b = float(explanation["w"]), float(explanation["b"])
    lo, hi = float(min(values.min(), t)), float(max(values.max(), t))
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    xs = [lo - pad, hi + pad, t]
    threshold = float(explanation.get("threshold", float("nan")))
    if not (np.isfinite(threshold) and lo - pad <= threshold <= hi + pad):
        threshold = float("nan")  # no crossing (w = 0), or one off the chart
    else:
        xs.append(threshold)
    line_x = np.unique(np.asarray(xs, dtype=np.float64))
    rows, cols = np.divmod(np.delete(np.arange(values.size), y * values.shape[1] + x),
                           values.shape[1])
    return {"t": t, "others": others, "others_yx": np.stack([rows, cols], axis=1),
            "w": w, "b": b, "line_x": line_x, "line_y": w * line_x + b,
            "threshold": threshold, "fit_t": w * t + b, "x_range": (lo - pad, hi + pad)}


# --- the weight curve (Eqns 5-6) ----------------------------------------------------------


def curve_data(
    values: np.ndarray, mean: float, variance: float, lam: float, t: float,
    *, points: int = CURVE_POINTS,
) -> tuple[np.ndarray, np.ndarray]:
    """``(t_grid, weight_curve(t_grid, mean, variance, lam))`` over the channel's range.

    The grid spans the values, ``t`` and the mean with a margin of a tenth of that span, and
    holds ``t`` itself so the curve passes exactly through the chosen neuron's weight.
    """
    vals = check_values(values, "values").ravel()
    lo = min(float(vals.min()), float(t), float(mean))
    hi = max(float(vals.max()), float(t), float(mean))
    pad = 0.1 * (hi - lo) if hi > lo else 1.0
    grid = np.union1d(np.linspace(lo - pad, hi + pad, points), [float(t)])
    return grid, weight_curve(grid, mean, variance, lam)


def histogram_data(values: np.ndarray, bins: int | None = None) -> tuple[np.ndarray, ...]:
    """``(centres, counts, widths)`` of the channel's values; ``sqrt(M)`` bins, 5 to 40."""
    vals = np.asarray(values, dtype=np.float64).ravel()
    bins = bins or int(np.clip(round(np.sqrt(vals.size)), 5, 40))
    counts, edges = np.histogram(vals, bins=bins)
    return (edges[:-1] + edges[1:]) / 2, counts, np.diff(edges)
