"""Figures: exact overlay values, shared scale, layouts and PNG sizes, export, thread safety."""

from __future__ import annotations

import ast
import io
import json
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from helpers import image_size
from PIL import Image

from simam_viz.rendering import figures
from simam_viz.rendering.figures import (
    CBAR,
    LABEL,
    PANEL,
    TOP,
    channel_figure,
    depth_strip,
    figure1,
    figure6,
    figure_to_png,
    png_size,
    save_png,
    write_manifest,
)
from simam_viz.rendering.pictures import jpeg_bytes, mosaic, overlay, panel_png

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (32, 40, 3), dtype=np.uint8)
CAM = RNG.random((32, 40)).astype(np.float32)
ATT = (0.5 + 0.4 * RNG.random((4, 5))).astype(np.float32)  # SimAM-like, feature resolution
CH_MAPS = RNG.random((6, 3, 3)).astype(np.float32)
JET_AT_0 = np.array([0.0, 0.0, 127.5])  # jet starts at dark blue (0, 0, 0.5)


def _pixels(inches: float, dpi: float) -> int:
    """matplotlib's truncation of inches * dpi to whole pixels."""
    return int(inches * dpi + 1e-8)


def _gray(values: np.ndarray) -> np.ndarray:
    """matplotlib's "gray" colour map: a 256-entry lookup table, entry k = k / 255."""
    return np.minimum(np.floor(values * 256), 255).astype(np.uint8)


def _pictures(fig) -> list[np.ndarray]:
    """The arrays shown by the figure's image panels, in drawing order."""
    return [np.asarray(ax.get_images()[0].get_array()) for ax in fig.axes if ax.get_images()]


SIMAM_TITLES = ["Grad-CAM before SimAM", "Grad-CAM after SimAM", "Attention (channel mean)",
                "Grad-CAM on attention"]


def _simam_row() -> list[np.ndarray]:
    """A SimAM row's four panels as the screen draws them (weights on their own scale)."""
    unit = (ATT - ATT.min()) / (ATT.max() - ATT.min())
    return [overlay(IMG, CAM), overlay(IMG, CAM[::-1]),
            overlay(IMG, unit, colormap="viridis", alpha=1.0), overlay(IMG, 1 - CAM)]


def _fig6(n: int = 1, **kwargs):
    scale = (float(ATT.min()), float(ATT.max()))
    return figure6([_simam_row()] * n, [SIMAM_TITLES] * n, scales=[scale] * n, **kwargs)


# --- overlay ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_overlay_equals_independent_blend(alpha: float) -> None:
    assert np.allclose(matplotlib.colormaps["jet"](0.0)[:3], JET_AT_0 / 255)
    expected = np.round((1 - alpha) * IMG.astype(float) + alpha * JET_AT_0).astype(np.uint8)
    np.testing.assert_array_equal(overlay(IMG, np.zeros((32, 40)), alpha=alpha), expected)


def test_overlay_alpha_limits() -> None:
    np.testing.assert_array_equal(overlay(IMG, CAM, alpha=0.0), IMG)
    pure = overlay(IMG, np.zeros((32, 40)), alpha=1.0)
    assert (pure == np.array([0, 0, 128], np.uint8)).all()  # 127.5 rounds to even 128
    assert (overlay(IMG, np.ones((32, 40)), colormap="gray", alpha=1.0) == 255).all()


def test_overlay_clips_and_resizes_maps() -> None:
    out_of_range = overlay(IMG, np.full((32, 40), 7.0), colormap="gray", alpha=1.0)
    assert (out_of_range == 255).all()
    small = overlay(IMG, np.full((4, 5), 0.5, np.float32), colormap="gray", alpha=1.0)
    assert small.shape == IMG.shape and (small == 128).all()
    ramp = overlay(IMG, np.array([[0.0, 1.0]]), colormap="gray", alpha=1.0)[0, :, 0]
    assert ramp.shape == (40,) and ramp[0] < 10 and ramp[-1] > 245
    assert (np.diff(ramp.astype(int)) >= 0).all()  # bilinear: monotone left to right


# --- bad inputs -------------------------------------------------------------------------

BAD_CALLS = {
    "alpha above 1": (lambda: overlay(IMG, CAM, alpha=1.5), "alpha"),
    "alpha below 0": (lambda: overlay(IMG, CAM, alpha=-0.1), "alpha"),
    "alpha NaN": (lambda: overlay(IMG, CAM, alpha=float("nan")), "alpha"),
    "grey image": (lambda: overlay(IMG[..., 0], CAM), "image"),
    "float image": (lambda: overlay(IMG / 255.0, CAM), "image"),
    "3-D cam": (lambda: overlay(IMG, CAM[None]), "cam"),
    "NaN cam": (lambda: overlay(IMG, np.full((2, 2), np.nan)), "NaN"),
    "colormap": (lambda: overlay(IMG, CAM, colormap="no-such-map"), "colormap"),
    "fig1 maps per model": (lambda: figure1([IMG], ["a"], [[CAM, CAM]], ["m"]), "cams row 0"),
    "fig1 labels": (lambda: figure1([IMG], [["a", "b", "c"]], [[CAM]], ["m"]), "labels row 0"),
    "fig1 no raw": (lambda: figure1([IMG], ["a"], [[CAM]], ["m"], shared_scale=True),
                    "raw_cams"),
    "fig1 alpha": (lambda: figure1([IMG], ["a"], [[CAM]], ["m"], alpha=2), "alpha"),
    "fig1 no images": (lambda: figure1([], [], [], ["m"]), "image"),
    "fig6 no rows": (lambda: figure6([], []), "at least one row"),
    "fig6 titles": (lambda: figure6([[IMG, IMG]], [["a"]]), "one title per panel"),
    "fig6 title rows": (lambda: figure6([[IMG]], [["a"], ["b"]]), "titles has 2 rows"),
    "fig6 grey panel": (lambda: figure6([[IMG[..., 0]]], [["a"]]), "image"),
    "fig6 scale": (lambda: figure6([[IMG]], [["a"]], scales=[(0.0, float("nan"))]),
                   "scales"),
    "channels C": (lambda: channel_figure(np.zeros((4, 2, 2)), np.zeros(3)), "C means"),
    "channels top_k": (lambda: channel_figure(np.zeros((4, 2, 2)), np.zeros(4), top_k=0),
                       "top_k"),
    "depth empty": (lambda: depth_strip(IMG, {}), "block"),
    "dpi": (lambda: figure_to_png(_fig6(), dpi=0), "dpi"),
    "panel shape": (lambda: panel_png(np.zeros((2, 2, 4), np.uint8)), "image"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_inputs_raise_one_line_value_errors(name: str) -> None:
    call, words = BAD_CALLS[name]
    with pytest.raises(ValueError, match=words) as exc:
        call()
    assert "\n" not in str(exc.value)


# --- Figure 1 ---------------------------------------------------------------------------


def test_shared_scale_keeps_relative_intensity() -> None:
    """Raw maps (2r, r): the weaker model is drawn at half the intensity, not stretched."""
    ramp = np.tile(np.linspace(0.0, 1.0, 40, dtype=np.float32), (32, 1))
    raw = [[2 * ramp, ramp]]
    kw = {"colormap": "gray", "alpha": 1.0}
    shared = figure1([IMG], ["x"], [[ramp, ramp]], ["strong", "weak"], shared_scale=True,
                     raw_cams=raw, **kw)
    _, strong, weak = _pictures(shared)
    np.testing.assert_array_equal(strong[..., 0], _gray(ramp))
    np.testing.assert_array_equal(weak[..., 0], _gray(ramp / 2))
    assert weak.max() == 128 and strong.max() == 255
    bars = [ax for ax in shared.axes if not ax.get_images()]
    assert len(bars) == 1 and bars[0].get_ylim() == pytest.approx((0.0, 2.0))  # raw units
    separate = figure1([IMG], ["x"], [[ramp, ramp]], ["strong", "weak"], raw_cams=raw, **kw)
    _, strong_own, weak_own = _pictures(separate)  # own min-max scaling: both full range
    np.testing.assert_array_equal(strong_own, weak_own)
    np.testing.assert_array_equal(strong_own, strong)


def test_shared_scale_row_of_zeros_draws_nothing() -> None:
    zeros = np.zeros((32, 40), np.float32)
    fig = figure1([IMG], ["x"], [[zeros]], ["m"], shared_scale=True, raw_cams=[[zeros]],
                  colormap="gray", alpha=1.0)
    assert (_pictures(fig)[1] == 0).all()


def test_figure1_labels_under_input_and_models() -> None:
    fig = figure1([IMG, IMG], [["tent", "a 90%", "b 40%"], "whale"], [[CAM, CAM]] * 2,
                  ["A", "B"])
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_xlabel() for ax in panels] == ["tent", "a 90%", "b 40%", "whale", "", ""]
    assert [ax.get_title() for ax in panels[:3]] == ["Input", "A", "B"]
    np.testing.assert_array_equal(_pictures(fig)[0], IMG)


# --- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dpi", [72, 100, 300])
def test_png_sizes_follow_the_formula(dpi: int) -> None:
    row = PANEL + LABEL
    cases = [
        (figure1([IMG] * 2, ["x"] * 2, [[CAM] * 3] * 2, list("ABC")), 4 * PANEL, 2 * row),
        (figure1([IMG], ["x"], [[CAM] * 3], list("ABC"), shared_scale=True,
                 raw_cams=[[CAM] * 3]), 4 * PANEL + CBAR, row),
        (_fig6(2), 4 * PANEL + CBAR, 2 * row),
        (channel_figure(RNG.random((16, 3, 3)), RNG.random(16)), 8 * PANEL + CBAR, 2 * row),
        (channel_figure(RNG.random((3, 3, 3)), RNG.random(3), top_k=1), 2 * PANEL + CBAR,
         2 * row),
        (depth_strip(IMG, {f"b{i}": CAM for i in range(16)}), 8 * PANEL, 2 * row),
        (depth_strip(IMG, {f"b{i}": CAM for i in range(5)}, per_row=4), 4 * PANEL, 2 * row),
    ]
    for fig, width, height in cases:
        expected = (_pixels(width, dpi), _pixels(height + TOP, dpi))
        assert png_size(fig, dpi=dpi) == expected
        assert image_size(figure_to_png(fig, dpi=dpi)) == expected


def test_png_size_truncates_like_matplotlib() -> None:
    fig = figure1([IMG], ["x"], [[CAM] * 3], list("ABC"))  # 8.8 in wide
    assert png_size(fig, dpi=72)[0] == 633  # 633.6 truncated, not rounded
    assert png_size(fig, dpi=300) == (2640, 885)  # exact at the default


# --- Figure 6 ---------------------------------------------------------------------------


def test_figure6_two_rows_have_eight_panels_and_a_bar_per_row() -> None:
    fig = _fig6(2, captions=["dog (layer4.2)", "cat (layer4.2)"])
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 8
    assert [ax.get_title() for ax in panels] == SIMAM_TITLES * 2  # every row is titled
    assert panels[0].get_xlabel() == "dog (layer4.2)" and panels[4].get_xlabel() == "cat (layer4.2)"
    bars = [ax for ax in fig.axes if not ax.get_images()]
    assert len(bars) == 2
    assert bars[0].get_ylim() == pytest.approx((ATT.min(), ATT.max()), abs=1e-6)


def test_figure6_draws_the_given_panels_pixel_for_pixel() -> None:
    """The composite shows exactly the screen's pictures (no second rendering of them)."""
    for drawn, given in zip(_pictures(_fig6()), _simam_row(), strict=True):
        np.testing.assert_array_equal(drawn, given)


def test_figure6_rows_of_different_kinds() -> None:
    """An SE row (before, after) above a CBAM row (and its spatial gate): rows keep their own
    panels and titles; only the row with a weights map gets a colour bar, in its units."""
    se = [overlay(IMG, CAM), overlay(IMG, 1 - CAM)]
    cbam = [*se, overlay(IMG, CAM, colormap="viridis", alpha=1.0)]
    titles = [["Grad-CAM before SE", "Grad-CAM after SE"],
              ["Grad-CAM before CBAM", "Grad-CAM after CBAM", "Spatial gate"]]
    fig = figure6([se, cbam], titles, captions=["SE: dog", "CBAM: dog"],
                  scales=[None, (0.25, 0.75)])
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == titles[0] + titles[1]
    assert [ax.get_xlabel() for ax in panels] == ["SE: dog", "", "CBAM: dog", "", ""]
    bars = [ax for ax in fig.axes if not ax.get_images()]
    assert len(bars) == 1 and bars[0].get_ylim() == pytest.approx((0.25, 0.75))
    row = PANEL + LABEL
    assert png_size(fig, dpi=100) == (_pixels(3 * PANEL + CBAR, 100),
                                      _pixels(2 * row + TOP, 100))
    no_bar = figure6([se], [titles[0]])  # no weights map anywhere: no colour-bar column
    assert png_size(no_bar, dpi=100) == (_pixels(2 * PANEL, 100), _pixels(row + TOP, 100))


# --- channels and depth -----------------------------------------------------------------


def test_channel_figure_picks_top_channels_by_mean() -> None:
    means = np.array([0.1, 0.9, 0.5, 0.95, 0.2], np.float32)
    maps = RNG.random((5, 3, 3)).astype(np.float32)
    fig = channel_figure(maps, means, top_k=3, se_excitation=np.linspace(0, 1, 5), block="l4")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == [
        "ch 3  mean 0.950", "ch 1  mean 0.900", "ch 2  mean 0.500"
    ]
    for ax, channel in zip(panels, (3, 1, 2), strict=True):
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), maps[channel])
    charts = [ax.get_title() for ax in fig.axes if ax.patches]
    assert charts == ["SimAM channel means l4", "SE excitation l4"]
    simam_bars = next(ax for ax in fig.axes if ax.patches).patches
    assert [round(b.get_height(), 2) for b in simam_bars] == [0.95, 0.9, 0.5, 0.2, 0.1]


def test_channel_figure_ties_by_index_and_unsorted_chart() -> None:
    means = np.array([0.5, 0.7, 0.7, 0.6], np.float32)
    fig = channel_figure(np.zeros((4, 2, 2)), means, top_k=10, sort=False)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert [t.split()[1] for t in titles] == ["1", "2", "3", "0"]  # top_k clamps to C
    chart = next(ax for ax in fig.axes if ax.patches)
    assert [round(b.get_height(), 2) for b in chart.patches] == [0.5, 0.7, 0.7, 0.6]
    assert chart.get_title() == "SimAM channel means"


def test_depth_strip_panels_in_block_order() -> None:
    blocks = ["layer1.0", "layer2.3", "layer3.5", "layer4.2"]
    cams = {b: np.full((7, 7), k / 3) for k, b in enumerate(blocks)}
    fig = depth_strip(IMG, cams, colormap="gray", alpha=1.0)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == blocks
    assert [int(p[0, 0, 0]) for p in _pictures(fig)] == [0, 85, 170, 255]


# --- export -----------------------------------------------------------------------------


def test_save_png_writes_and_closes(tmp_path: Path) -> None:
    fig = _fig6()
    expected = png_size(fig, dpi=50)
    path = save_png(fig, tmp_path / "f6.png", dpi=50)
    assert path == tmp_path / "f6.png" and image_size(path.read_bytes()) == expected
    assert fig.axes == []  # cleared: nothing left holding the arrays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f6.png"]  # no temp file left
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode  # ordinary permissions, not 0600


def test_panel_png_native_resolution() -> None:
    decoded = Image.open(io.BytesIO(panel_png(IMG)))
    assert decoded.size == (40, 32) and decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), IMG)
    gray = Image.open(io.BytesIO(panel_png(np.array([[0.5, 1.0, 2.0]]))))
    assert gray.size == (3, 1) and list(np.asarray(gray)[0]) == [128, 255, 255]
    fast = panel_png(IMG, compress_level=1)  # the app's on-screen level: the same pixels
    assert fast != panel_png(IMG)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(fast))), IMG)


def test_write_manifest_sorted_with_versions(tmp_path: Path) -> None:
    data = {"target": np.int64(3), "block": "layer4.2", "lambda": np.float32(0.5),
            "image_sha256": "ab" * 32, "models": ["SimAM-ResNet-50"]}
    path = write_manifest(tmp_path / "m.json", data)
    text = path.read_text()
    loaded = json.loads(text)
    assert list(loaded) == sorted(loaded) and text.startswith('{\n  "')
    assert loaded["target"] == 3 and loaded["lambda"] == 0.5 and loaded["block"] == "layer4.2"
    assert loaded["versions"]["numpy"] == np.__version__
    assert loaded["versions"]["matplotlib"] == matplotlib.__version__
    assert {"python", "torch", "pillow"} <= set(loaded["versions"])
    assert loaded["created"].endswith("+00:00")
    fixed = write_manifest(tmp_path / "n.json", {"created": "then", "versions": {"torch": "x"}})
    again = json.loads(fixed.read_text())
    assert again["created"] == "then" and again["versions"]["torch"] == "x"


# --- threads and purity -----------------------------------------------------------------


def _render_all() -> list[bytes]:
    figs = [
        figure1([IMG], ["x"], [[CAM, 1 - CAM]], ["A", "B"], shared_scale=True,
                raw_cams=[[CAM, 2 * CAM]]),
        _fig6(),
        channel_figure(CH_MAPS, np.linspace(0.5, 1, 6), top_k=3, se_excitation=np.ones(6)),
        depth_strip(IMG, {"layer1.0": CAM, "layer4.2": ATT}),
    ]
    return [figure_to_png(fig, dpi=40) for fig in figs]


def test_rendering_is_thread_safe_and_deterministic() -> None:
    serial = _render_all()
    start = threading.Barrier(4)
    results: list[list[bytes]] = []

    def worker() -> None:
        start.wait()
        for _ in range(2):
            results.append(_render_all())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r == serial for r in results)


def test_module_imports_no_pyplot_torch_or_streamlit() -> None:
    tree = ast.parse(Path(figures.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {n for n in names if n.split(".")[0] in {"torch", "streamlit"}}
    assert "matplotlib.pyplot" not in names


def test_mosaic_places_each_panel_under_its_label() -> None:
    panels = [np.full((20, 30, 3), 10 * i, np.uint8) for i in range(5)]
    out = mosaic(panels, [f"b{i}" for i in range(5)], per_row=3, gap=2)
    band = max(12, 30 // 9)
    assert out.shape == (2 * (band + 20 + 2) - 2, 3 * 32 - 2, 3)
    for i, panel in enumerate(panels):
        top, left = (i // 3) * (band + 22) + band, (i % 3) * 32
        np.testing.assert_array_equal(out[top : top + 20, left : left + 30], panel)
    assert (out[:band, :30] < 128).any()  # the label is drawn in the band (dark text)
    assert (out[-20:, 2 * 32 :] == 255).all()  # the empty sixth cell stays white
    with pytest.raises(ValueError, match="labels"):
        mosaic(panels, ["a"])
    with pytest.raises(ValueError, match="one size"):
        mosaic([panels[0], np.zeros((5, 5, 3), np.uint8)], ["a", "b"])


def test_jpeg_bytes_is_a_close_jpeg_of_the_picture() -> None:
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).resize(
        (160, 160), Image.Resampling.BICUBIC))
    data = jpeg_bytes(smooth)
    back = Image.open(io.BytesIO(data))
    assert back.format == "JPEG" and back.size == (160, 160)
    assert np.abs(np.asarray(back, np.float64) - smooth).mean() < 2.0
    assert len(data) < len(panel_png(smooth))


def test_channel_maps_tiles_the_top_channels_with_their_ids() -> None:
    from simam_viz.rendering import charts

    rng = np.random.default_rng(1)
    weights = rng.random((6, 5, 4)).astype(np.float32)
    means = weights.mean(axis=(1, 2))
    order = np.argsort(-means)[:5]
    fig = charts.channel_maps(weights, means, top_k=5)
    z, ids = np.asarray(fig.data[0].z, np.float64), np.asarray(fig.data[0].customdata)
    assert z.shape == (2 * 6 - 1, 4 * 5 - 1)  # 4 tiles a row, one-cell gaps
    for i, c in enumerate(order):
        top, left = (i // 4) * 6, (i % 4) * 5
        np.testing.assert_allclose(z[top : top + 5, left : left + 4], weights[c], rtol=1e-6)
        assert (ids[top : top + 5, left : left + 4] == c).all()
    assert np.isnan(z[5]).all() and (ids[5] == -1).all()  # the gap row
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"ch {int(c)} (mean {means[c]:.3f})" for c in order]
