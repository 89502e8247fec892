"""Figures: overlay values, composite layouts and exact PNG sizes, thread safety."""

from __future__ import annotations

import io
import json
import threading

import matplotlib
import numpy as np
import pytest
from PIL import Image

from simam_viz import figures
from simam_viz.figures import (
    LABEL,
    PANEL,
    TOP,
    channel_figure,
    depth_strip,
    figure1,
    figure6,
    figure_to_png,
    overlay,
    panel_png,
    write_manifest,
)

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 255, (32, 40, 3), np.uint8)
CAM = RNG.random((32, 40)).astype(np.float32)


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_overlay_equals_independent_blend() -> None:
    zeros = np.zeros((32, 40), np.float32)
    jet0 = np.array(matplotlib.colormaps["jet"](0.0)[:3]) * 255  # dark blue
    expected = np.round(0.7 * IMG + 0.3 * jet0).astype(np.uint8)
    got = overlay(IMG, zeros, alpha=0.3).astype(int)
    np.testing.assert_allclose(got, expected, atol=1)  # float32 vs float64 rounding
    np.testing.assert_array_equal(overlay(IMG, CAM, alpha=0.0), IMG)
    full = overlay(IMG, np.ones((32, 40)), colormap="gray", alpha=1.0)
    assert (full == 255).all()
    small = overlay(IMG, np.full((4, 5), 0.5, np.float32), colormap="gray", alpha=1.0)
    assert small.shape == IMG.shape and np.all(np.abs(small.astype(int) - 128) <= 1)


@pytest.mark.parametrize("bad", [{"alpha": 1.5}, {"alpha": -0.1}])
def test_overlay_rejects_bad_alpha(bad) -> None:
    with pytest.raises(ValueError, match="alpha"):
        overlay(IMG, CAM, **bad)


def test_bad_shapes_are_one_line_errors() -> None:
    for call in (
        lambda: overlay(IMG[..., 0], CAM),
        lambda: overlay(IMG, CAM[None]),
        lambda: figure1([IMG], [["a"]], [[CAM, CAM]], ["m"]),
        lambda: figure6([IMG], [CAM], [CAM], [], [CAM]),
        lambda: channel_figure(np.zeros((4, 2, 2)), np.zeros(3)),
        lambda: figure1([IMG], [["a"]], [[CAM]], ["m"], shared_scale=True),
    ):
        with pytest.raises(ValueError) as exc:
            call()
        assert "\n" not in str(exc.value)


@pytest.mark.parametrize("dpi", [50, 100])
def test_png_sizes_follow_the_formula(dpi: int) -> None:
    fig = figure1([IMG, IMG], [["a", "b", "c"]] * 2, [[CAM] * 3] * 2, ["A", "B", "C"])
    w, h = _size(figure_to_png(fig, dpi=dpi))
    assert (w, h) == (round(4 * PANEL * dpi), round((2 * (PANEL + LABEL) + TOP) * dpi))
    fig6 = figure6([IMG, IMG], [CAM] * 2, [CAM] * 2, [RNG.random((4, 5))] * 2, [CAM] * 2)
    images = [ax for ax in fig6.axes if ax.get_images()]
    assert len(images) == 8  # 4 panels per image
    w6, h6 = _size(figure_to_png(fig6, dpi=dpi))
    assert (w6, h6) == (round((4 * PANEL + figures.CBAR) * dpi),
                        round((2 * (PANEL + LABEL) + TOP) * dpi))
    strip = depth_strip(IMG, {f"layer{i}": CAM for i in range(16)})
    assert _size(figure_to_png(strip, dpi=dpi)) == (
        round(8 * PANEL * dpi), round((2 * (PANEL + LABEL) + TOP) * dpi)
    )


def test_shared_scale_keeps_relative_intensity() -> None:
    """With a shared scale, a map with half the raw values is drawn at half intensity."""
    ones = np.ones((32, 40), np.float32)
    fig = figure1([IMG], [["x", "y"]], [[ones, ones]], ["strong", "weak"], shared_scale=True,
                  raw_cams=[[2 * ones, ones]], colormap="gray", alpha=1.0)
    panels = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    strong, weak = np.asarray(panels[1]), np.asarray(panels[2])
    assert (strong == 255).all() and np.all(np.abs(weak.astype(int) - 128) <= 1)


def test_channel_figure_picks_top_channels() -> None:
    means = np.array([0.1, 0.9, 0.5, 0.95, 0.2], np.float32)
    maps = RNG.random((5, 3, 3)).astype(np.float32)
    fig = channel_figure(maps, means, top_k=3, se_excitation=np.linspace(0, 1, 5), block="l4")
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == ["ch 3", "ch 1", "ch 2"]
    charts = [ax.get_title() for ax in fig.axes if not ax.get_images()]
    assert charts == ["SimAM channel means l4", "SE excitation l4"]


def test_rendering_is_thread_safe_and_deterministic() -> None:
    def render() -> bytes:
        fig = figure6([IMG], [CAM], [CAM], [RNG.random((4, 5)) * 0 + 0.5], [CAM])
        return figure_to_png(fig, dpi=40)

    serial = render()
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.extend(render() for _ in range(3)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12 and all(r == serial for r in results)


def test_panel_png_and_manifest(tmp_path) -> None:
    assert _size(panel_png(IMG)) == (40, 32)
    gray = Image.open(io.BytesIO(panel_png(np.full((2, 3), 0.5))))
    assert gray.size == (3, 2) and gray.getpixel((0, 0)) == 128
    path = write_manifest(tmp_path / "m.json", {"block": "layer4.2", "target": 3})
    data = json.loads(path.read_text())
    assert data["block"] == "layer4.2" and data["target"] == 3
    assert {"numpy", "matplotlib", "torch", "python"} <= set(data["versions"])
    assert "created" in data
