"""The neuron-explaining charts (plotly) and panels (matplotlib) hold the right numbers.

Expected values come from the paper's formulas written out again here (closed-form minimiser
of Eqn (2), Eqns (5)-(6)) or from hand-made arrays whose answer is known, not from the code
under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import image_size
from matplotlib.figure import Figure

from simam_viz.engine.neuron import explain_from_arrays, weight_curve
from simam_viz.rendering.figures import figure_to_png, png_size
from simam_viz.rendering.neuron_charts import (
    MAX_SIDE_3D,
    channel_map,
    neuron_from_selection,
    separating_line_chart,
    weight_curve_chart,
    weights_3d,
    weights_3d_data,
)
from simam_viz.rendering.neuron_data import CURVE_POINTS
from simam_viz.rendering.neuron_figures import (
    HEADER,
    PANEL_H,
    PANEL_W,
    PANELS,
    channel_map_figure,
    explain_figure,
    explain_panels,
    separating_line_figure,
    weight_curve_figure,
)

RNG = np.random.default_rng(7)
VALUES = RNG.normal(0.0, 1.0, (3, 6, 7))
LAM = 0.1


def _trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def _sigmoid_weight(t, mu, var, lam):
    """Eqns (5)-(6): sigmoid(1 / e*), e* = 4 (var + lam) / ((t - mu)^2 + 2 var + 2 lam)."""
    energy = 4 * (var + lam) / ((np.asarray(t) - mu) ** 2 + 2 * var + 2 * lam)
    return 1 / (1 + np.exp(-1 / energy))


def _closed_form(t: float, others: np.ndarray, lam: float) -> tuple[float, float]:
    """Eqn (2)'s minimiser with the sign that minimises (Eqn (3) prints the opposite)."""
    mu, var = others.mean(), others.var()
    w = 2 * (t - mu) / ((t - mu) ** 2 + 2 * var + 2 * lam)
    return w, -0.5 * (t + mu) * w


# --- channel map ------------------------------------------------------------------------------


def test_channel_map_points_are_the_grid_and_the_chosen_cell_is_outlined() -> None:
    grid = VALUES[1]
    fig = channel_map(grid, chosen=(4, 2))
    points = fig.data[0]
    assert points.type == "scatter" and points.marker.symbol == "square"
    # every cell once, at x = column and y = row, coloured by its own value
    cells = {(int(y), int(x)): c for x, y, c in zip(points.x, points.y, points.marker.color,
                                                    strict=True)}
    assert len(cells) == grid.size
    for (y, x), colour in cells.items():
        assert colour == pytest.approx(grid[y, x], rel=1e-6)
    (shape,) = fig.layout.shapes
    assert (shape.x0, shape.x1, shape.y0, shape.y1) == (1.5, 2.5, 3.5, 4.5)
    assert fig.layout.yaxis.range == (grid.shape[0] - 0.5, -0.5)  # rows grow downwards
    assert fig.layout.clickmode == "event+select"
    assert "(4, 2)" in fig.layout.title.text


def test_channel_map_big_grids_use_webgl_and_bad_input_is_one_line() -> None:
    assert channel_map(np.zeros((70, 70))).data[0].type == "scattergl"
    with pytest.raises(ValueError, match="outside the 6x7 grid"):
        channel_map(VALUES[0], chosen=(6, 0))
    with pytest.raises(ValueError, match="2-D"):
        channel_map(VALUES)
    with pytest.raises(ValueError, match="NaN"):
        channel_map(np.full((2, 2), np.nan))


def test_a_click_comes_back_as_the_neuron() -> None:
    shape = VALUES[0].shape
    point = {"curve_number": 0, "point_index": 17, "x": 3, "y": 2}
    assert neuron_from_selection({"points": [point]}, shape) == (2, 3)
    assert neuron_from_selection({"selection": {"points": [point]}}, shape) == (2, 3)
    assert neuron_from_selection([{"x": 6.0, "y": 5.0}], shape) == (5, 6)
    assert neuron_from_selection({"points": []}, shape) is None
    assert neuron_from_selection({"points": [{"x": 9, "y": 0}]}, shape) is None  # off grid
    assert neuron_from_selection({"points": [{"z": 1}]}, shape) is None


# --- separating line --------------------------------------------------------------------------


def _line_y_at(fig, x: float) -> float:
    line = _trace(fig, "w x + b (Eqn 2 minimum)")
    return float(np.interp(x, np.asarray(line.x), np.asarray(line.y)))


@pytest.mark.parametrize(("channel", "y", "x"), [(0, 2, 3), (2, 5, 6), (1, 0, 0)])
def test_separating_line_is_the_exact_minimiser(channel: int, y: int, x: int) -> None:
    exp = explain_from_arrays(VALUES, channel=channel, y=y, x=x, lam=LAM)
    fig = separating_line_chart(exp)
    flat = VALUES[channel].ravel()
    t, others = flat[y * 7 + x], np.delete(flat, y * 7 + x)
    w, b = _closed_form(t, others, LAM)
    line = _trace(fig, "w x + b (Eqn 2 minimum)")
    np.testing.assert_allclose(line.y, w * np.asarray(line.x) + b, rtol=1e-9, atol=1e-12)
    assert _line_y_at(fig, t) == pytest.approx(w * t + b, rel=1e-9)
    assert _line_y_at(fig, (t + others.mean()) / 2) == pytest.approx(0.0, abs=1e-12)
    target = _trace(fig, "target t (y = +1)")
    assert (target.x[0], target.y[0]) == (t, 1.0)
    dots = _trace(fig, "other neurons (y = -1)")
    np.testing.assert_array_equal(np.sort(dots.x), np.sort(others))
    assert set(dots.y) == {-1.0}
    # hover positions name the right neurons
    for (row, col), value in zip(dots.customdata, dots.x, strict=True):
        assert VALUES[channel][row, col] == value
    printed = _trace(fig, "Eqn (3) as printed (wrong sign)")
    np.testing.assert_allclose(printed.y, -(w * np.asarray(printed.x) + b), rtol=1e-9)


def test_a_lone_standout_neuron_is_sent_to_plus_one() -> None:
    """Others all equal, lambda tiny: the line passes through (t, 1) and (others, -1)."""
    grid = np.zeros((5, 5))
    grid[2, 3] = 4.0
    exp = explain_from_arrays(grid[None], channel=0, y=2, x=3, lam=1e-6)
    fig = separating_line_chart(exp)
    assert _line_y_at(fig, 4.0) == pytest.approx(1.0, abs=1e-5)
    assert _line_y_at(fig, 0.0) == pytest.approx(-1.0, abs=1e-5)


def test_a_neuron_at_the_others_mean_gets_a_flat_line() -> None:
    """t equal to the others' mean: w = b = 0, Eqn (2)'s minimum is 1 + 1 = 2, no boundary."""
    grid = np.arange(25.0).reshape(5, 5)  # the centre, 12, is the mean of the other 24
    exp = explain_from_arrays(grid[None], channel=0, y=2, x=2, lam=LAM)
    assert exp["energy_exact"] == pytest.approx(2.0)
    fig = separating_line_chart(exp)
    np.testing.assert_allclose(_trace(fig, "w x + b (Eqn 2 minimum)").y, 0.0, atol=1e-12)
    assert np.isnan(exp["threshold"]) and exp["separated"] == 0.0
    assert [s.xref for s in fig.layout.shapes] == ["x domain", "x domain"]  # no boundary line


# --- weight curve -----------------------------------------------------------------------------


def test_weight_curve_chart_is_eqns_5_and_6() -> None:
    exp = explain_from_arrays(VALUES, channel=2, y=1, x=4, lam=LAM)
    mean, var, t = exp["mean"], exp["variance"], exp["t"]
    fig = weight_curve_chart(VALUES[2], mean, var, 0.5, t, lam_model=LAM)
    curve = _trace(fig, "sigmoid(1/e*), λ = 0.5")
    xs = np.asarray(curve.x)
    np.testing.assert_allclose(curve.y, _sigmoid_weight(xs, mean, var, 0.5), rtol=1e-12)
    np.testing.assert_array_equal(curve.y, weight_curve(xs, mean, var, 0.5))
    assert xs.min() <= VALUES[2].min() and xs.max() >= VALUES[2].max() and t in xs
    model = _trace(fig, "model's λ = 0.1")
    np.testing.assert_allclose(model.y, _sigmoid_weight(xs, mean, var, LAM), rtol=1e-12)
    star = _trace(fig, "chosen neuron")
    assert star.x[0] == t and star.y[0] == pytest.approx(_sigmoid_weight(t, mean, var, 0.5))
    bars = _trace(fig, "neurons of the channel")
    assert bars.yaxis == "y2" and int(np.sum(bars.y)) == VALUES[2].size
    counts, edges = np.histogram(VALUES[2], bins=6)  # sqrt(42) rounds to 6
    np.testing.assert_array_equal(bars.y, counts)
    np.testing.assert_allclose(bars.x, (edges[1:] + edges[:-1]) / 2)
    # the curve's minimum, at the mean, is sigmoid(1/2) whatever lambda is
    assert min(curve.y) >= 1 / (1 + np.exp(-0.5)) - 1e-12
    # at the model's lambda there is one curve only
    same = weight_curve_chart(VALUES[2], mean, var, LAM, t, lam_model=LAM)
    assert [tr.name for tr in same.data if tr.type == "scatter"] == [
        "sigmoid(1/e*), λ = 0.1", "chosen neuron"]


def test_weight_curve_chart_is_small() -> None:
    """A lambda slider redraws it on every move: a few hundred points, whatever the channel
    size (times are in benchmarks/neuron_view.py, not here)."""
    fig = weight_curve_chart(RNG.random(56 * 56), 0.0, 1.0, 0.3, 0.5, lam_model=0.1)
    lines = [tr for tr in fig.data if tr.type == "scatter" and tr.mode == "lines"]
    assert all(CURVE_POINTS <= len(tr.x) <= CURVE_POINTS + 1 for tr in lines)  # + t itself
    assert len(lines) == 2
    assert len(fig.to_json()) < 100_000


# --- 3-D weights ------------------------------------------------------------------------------


def _known_weights(c: int, h: int, w: int) -> np.ndarray:
    """weight[c, y, x] = 0.5 + c / 1000 + y / 1e5 + x / 1e7: every point names itself."""
    cc, yy, xx = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    return (0.5 + cc / 1e3 + yy / 1e5 + xx / 1e7).astype(np.float64)


def test_weights_3d_hover_holds_channel_y_x_weight() -> None:
    weights = _known_weights(5, 4, 6)
    means = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    fig = weights_3d(weights, means, top_k=3)
    (trace,) = fig.data
    assert trace.type == "scatter3d"
    channel, weight = np.asarray(trace.customdata).T
    assert len(trace.x) == 3 * 4 * 6
    for c, y, x, w, z in zip(channel, trace.y, trace.x, weight, trace.z, strict=True):
        assert w == pytest.approx(weights[int(c), y, x], rel=1e-7)  # float32 on the wire
        assert {1: 2, 3: 1, 2: 0}[int(c)] == z  # highest mean on top
    assert sorted({int(c) for c in channel}) == [1, 2, 3]
    assert fig.layout.scene.zaxis.ticktext == ("ch 2", "ch 3", "ch 1")
    assert "%{customdata[0]:d}" in trace.hovertemplate
    assert "%{customdata[1]:.4f}" in trace.hovertemplate
    assert "sampled" not in fig.layout.title.text


def test_weights_3d_top_k_are_the_highest_means() -> None:
    means = RNG.random(64)
    data = weights_3d_data(RNG.random((64, 3, 3)), means, top_k=8)
    np.testing.assert_array_equal(np.sort(data["order"]), np.sort(np.argsort(means)[-8:]))
    assert list(means[data["order"]]) == sorted(means[data["order"]], reverse=True)
    ties = weights_3d_data(np.zeros((4, 2, 2)), np.zeros(4), top_k=2)
    assert list(ties["order"]) == [0, 1]  # ties: lower index first
    assert list(weights_3d_data(np.zeros((2, 2, 2)), np.ones(2), top_k=9)["order"]) == [0, 1]


def test_weights_3d_strides_big_grids_and_says_so() -> None:
    weights = _known_weights(3, 100, 100)
    fig = weights_3d(weights, np.array([0.2, 0.1, 0.3]), top_k=2)
    (trace,) = fig.data
    step = -(-100 // MAX_SIDE_3D)
    assert step > 1 and sorted(set(trace.x)) == list(range(0, 100, step))
    channel, weight = np.asarray(trace.customdata).T
    np.testing.assert_allclose(weight, weights[channel.astype(int), trace.y, trace.x],
                               rtol=1e-7)
    assert f"sampled every {step} rows and columns" in fig.layout.title.text
    assert f"strided by {step}" in trace.hovertemplate


def test_weights_3d_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match="C x h x w"):
        weights_3d(np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="need 3 channel means"):
        weights_3d(np.zeros((3, 2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="top_k"):
        weights_3d(np.zeros((3, 2, 2)), np.zeros(3), top_k=0)


def test_weights_3d_bounds_what_the_browser_draws() -> None:
    """A 256 x 56 x 56 array (more than any ResNet-50 SimAM block) still sends at most
    top_k * MAX_SIDE_3D**2 markers: the browser's draw time grows with them
    (benchmarks/neuron_view.py --browser times it)."""
    weights = RNG.random((256, 56, 56)).astype(np.float32)
    text = weights_3d(weights, weights.mean(axis=(1, 2))).to_json()
    assert len(json.loads(text)["data"][0]["x"]) <= 8 * MAX_SIDE_3D**2
    assert len(text) < 500_000
    assert json.loads(text)["data"][0]["type"] == "scatter3d"


# --- matplotlib panels ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explanation() -> dict:
    return explain_from_arrays(VALUES, channel=0, y=3, x=5, lam=LAM,
                               weights=weight_curve(VALUES, 0.0, 1.0, LAM), block="layer2.0")


def test_panel_sizes_are_fixed(explanation: dict) -> None:
    dpi = 50
    single = (int(PANEL_W * dpi + 1e-8), int(PANEL_H * dpi + 1e-8))
    panels = explain_panels(explanation)
    assert list(panels) == list(PANELS)
    for name in ("map", "line", "curve"):
        assert png_size(panels[name], dpi=dpi) == single
        assert image_size(figure_to_png(panels[name], dpi=dpi)) == single
    composite = (int(3 * PANEL_W * dpi + 1e-8), int((PANEL_H + HEADER) * dpi + 1e-8))
    assert image_size(figure_to_png(panels["explain"], dpi=dpi)) == composite


def test_panels_draw_the_same_numbers(explanation: dict) -> None:
    exp = explanation
    fig = separating_line_figure(exp)
    line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("w x + b"))
    xs, ys = line.get_data()
    w, b = _closed_form(exp["t"], np.delete(VALUES[0].ravel(), 3 * 7 + 5), LAM)
    np.testing.assert_allclose(ys, w * np.asarray(xs) + b, rtol=1e-9, atol=1e-12)

    curve_fig = weight_curve_figure(VALUES[0], exp["mean"], exp["variance"], 0.3, exp["t"],
                                    lam_model=LAM)
    ax = next(a for a in curve_fig.axes if a.get_ylabel() == "SimAM weight")
    curves = {ln.get_label(): ln for ln in ax.lines}
    x, y = curves["sigmoid(1/e*), λ 0.3"].get_data()
    np.testing.assert_allclose(y, _sigmoid_weight(x, exp["mean"], exp["variance"], 0.3))
    x, y = curves["model's λ 0.1"].get_data()
    np.testing.assert_allclose(y, _sigmoid_weight(x, exp["mean"], exp["variance"], LAM))

    map_fig = channel_map_figure(VALUES[0], chosen=(3, 5))
    (image,) = map_fig.axes[0].images
    np.testing.assert_array_equal(image.get_array(), VALUES[0])
    (outline,) = map_fig.axes[0].patches
    assert outline.get_xy() == (4.5, 2.5)

    whole = explain_figure(exp)
    assert isinstance(whole, Figure)
    title = whole.get_suptitle()
    assert "layer2.0, channel 0, neuron (3, 5) of 6x7" in title
    assert f"e* = {exp['energy']:.3f}" in title
    assert f"weight sigmoid(1/e*) = {exp['weight']:.3f}" in title


def test_panels_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        channel_map_figure(VALUES[0], chosen=(0, 7))
    with pytest.raises(ValueError, match="NaN"):
        weight_curve_figure(np.array([1.0, np.nan]), 0.0, 1.0, 0.1, 0.0)
