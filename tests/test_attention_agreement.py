"""Figure 6's consistency, measured: Spearman(attention, Grad-CAM after) and its shuffled null.

The reference is independent of the module under test: the Grad-CAM is brought to the
block's grid by an area-weighted average written out here (each output cell the mean of the
input pixels it covers, fractional pixels by their covered length, as a matrix product), and
correlations are ``scipy.stats.spearmanr`` on those arrays. The view's numbers are checked
against analyses run directly on the same tiny model and images.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import DEFAULT_EXAMPLE, EXAMPLES_DIR, run_page, save_tiny_checkpoints
from scipy.stats import spearmanr

from simam_viz import load_model
from simam_viz.engine.analysis import analyze
from simam_viz.engine.attention_agreement import (
    analysis_agreement,
    attention_agreement,
    cam_at_grid,
    map_spearman,
)
from simam_viz.errors import AnalysisError
from simam_viz.images import load_image
from simam_viz.serving.service import AnalysisKey

BLOCK = "layer4.2"


def _area_matrix(n: int, size: int) -> np.ndarray:
    """(n, size): row i averages the input pixels cell i covers, by the length covered."""
    step = size / n
    m = np.zeros((n, size))
    for i in range(n):
        lo, hi = i * step, (i + 1) * step
        for p in range(size):
            m[i, p] = max(0.0, min(hi, p + 1) - max(lo, p)) / step
    return m


def _area_resize(a: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return _area_matrix(grid[0], a.shape[0]) @ a @ _area_matrix(grid[1], a.shape[1]).T


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


@pytest.mark.parametrize(("side", "grid"), [(224, (7, 7)), (161, (11, 11)), (64, (5, 7))])
def test_values_equal_spearmanr_on_independently_resized_maps(side, grid) -> None:
    rng = np.random.default_rng(side)
    cam = rng.random((side, side)).astype(np.float32)
    attention = rng.random(grid)
    small = _area_resize(cam, grid)
    assert np.allclose(cam_at_grid(cam, grid), small, atol=1e-6)
    # whole-number factors: the cells are plain block means
    if side % grid[0] == 0 and side % grid[1] == 0:
        blocks = cam.reshape(grid[0], side // grid[0], grid[1], side // grid[1]).mean((1, 3))
        assert np.allclose(small, blocks, atol=1e-6)
    result = attention_agreement(cam, attention, block="layer3.1")
    assert result.spearman == pytest.approx(_rho(small, attention), abs=1e-12)
    assert result.grid == grid and result.block == "layer3.1"
    assert result.null == () and math.isnan(result.null_mean) and result.rank == 0
    # a map that IS the CAM at the grid agrees perfectly; its reverse perfectly not
    assert attention_agreement(cam, small).spearman == pytest.approx(1.0)
    assert attention_agreement(cam, -small).spearman == pytest.approx(-1.0)


def test_null_is_built_from_the_other_images_attention() -> None:
    rng = np.random.default_rng(1)
    cam = rng.random((64, 64))
    grid = (4, 4)
    small = _area_resize(cam, grid)
    own = small + 0.05 * rng.random(grid)  # close to the CAM: high agreement
    others = [rng.random(grid) for _ in range(5)]
    others.append(small[::-1])  # another image's map, upside down
    result = attention_agreement(cam, own, others, block=BLOCK)
    expected = [_rho(small, o) for o in others]
    assert result.null == pytest.approx(expected, abs=1e-12)
    assert result.null_mean == pytest.approx(np.mean(expected), abs=1e-12)
    assert result.null_std == pytest.approx(np.std(expected), abs=1e-12)
    assert result.n == 6
    observed = _rho(small, own)
    assert result.spearman == pytest.approx(observed, abs=1e-12)
    below = sum(v < observed for v in expected) + 0.5 * sum(v == observed for v in expected)
    assert result.percentile == pytest.approx(100 * below / 6)
    assert result.rank == 1 + sum(v > observed for v in expected)
    assert result.excess == pytest.approx(observed - np.mean(expected))
    # the image's own map among the others: a tie, counted half
    tied = attention_agreement(cam, own, [own, others[0]])
    assert tied.percentile == pytest.approx(100 * (0.5 + (expected[0] < observed)) / 2)
    # each other map is compared at its own grid: a finer one gets the CAM at that grid
    fine = rng.random((8, 8))
    mixed = attention_agreement(cam, own, [fine])
    assert mixed.null[0] == pytest.approx(_rho(_area_resize(cam, (8, 8)), fine), abs=1e-12)


def test_flat_maps_follow_the_trust_checks_rule() -> None:
    rng = np.random.default_rng(2)
    cam = rng.random((32, 32))
    att = rng.random((4, 4))
    flat = np.full((4, 4), 0.62)
    # a flat attention map agrees with nothing: 0, and it counts in the null
    assert map_spearman(_area_resize(cam, (4, 4)), flat) == 0.0
    result = attention_agreement(cam, att, [flat, rng.random((4, 4))])
    assert result.null[0] == 0.0 and result.n == 2
    assert attention_agreement(cam, flat).spearman == 0.0
    # a flat Grad-CAM leaves nothing to agree with: NaN everywhere, no rank
    nothing = attention_agreement(np.zeros((32, 32)), att, [rng.random((4, 4))])
    assert math.isnan(nothing.spearman) and math.isnan(nothing.null[0])
    assert nothing.n == 0 and math.isnan(nothing.null_mean) and math.isnan(nothing.percentile)
    assert nothing.rank == 0
    # a non-finite map is NaN and left out of the null's mean
    broken = att.copy()
    broken[0, 0] = np.nan
    mixed = attention_agreement(cam, att, [broken, att])
    assert math.isnan(mixed.null[0]) and mixed.n == 1
    assert mixed.null_mean == pytest.approx(mixed.spearman)
    with pytest.raises(AnalysisError, match="HxW"):
        map_spearman(np.zeros((4, 4)), np.zeros((3, 4)))
    with pytest.raises(AnalysisError, match="cannot bring"):
        cam_at_grid(np.zeros((4, 4)), (8, 8))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("agreement"))


@pytest.fixture(scope="module")
def simam(tiny_dir: Path):
    return load_model(tiny_dir / "demo" / "simam_resnet50.safetensors")


def _others() -> list[Path]:
    return [p for p in sorted(EXAMPLES_DIR.glob("*"))
            if p.suffix in (".png", ".jpg") and p.name != DEFAULT_EXAMPLE.name]


@pytest.fixture(scope="module")
def expected(simam) -> dict[str, float]:
    """The page's numbers at BLOCK, computed directly: the default image's CAM after SimAM and
    channel-mean attention, and the other examples' attention (their own top-1 targets)."""
    own = analyze(simam, load_image(DEFAULT_EXAMPLE), blocks=(BLOCK,))
    full = own.attention_weights(BLOCK)["full"]
    grid = full.shape[1:]
    cam = _area_resize(own.cam(BLOCK, "after"), grid)
    null = [_rho(cam, analyze(simam, load_image(p), blocks=(BLOCK,))
                 .attention_weights(BLOCK)["full"].mean(axis=0)) for p in _others()]
    return {"spearman": _rho(cam, full.mean(axis=0)), "null_mean": float(np.mean(null)),
            "null_std": float(np.std(null)), "n": len(null)}


def test_analysis_agreement_reads_the_analyses_maps(simam, expected) -> None:
    own = analyze(simam, load_image(DEFAULT_EXAMPLE), blocks=(BLOCK,))
    others = [analyze(simam, load_image(p), blocks=(BLOCK,)) for p in _others()]
    result = analysis_agreement(own, BLOCK, others)
    assert result.spearman == pytest.approx(expected["spearman"], abs=1e-6)
    assert result.null_mean == pytest.approx(expected["null_mean"], abs=1e-6)
    assert result.n == expected["n"] == 6
    se = load_model(simam.simam_viz.path.replace("simam_resnet50", "se_resnet50"))
    with pytest.raises(AnalysisError, match="no 3-D attention weights"):
        analysis_agreement(analyze(se, load_image(DEFAULT_EXAMPLE), blocks=(BLOCK,)), BLOCK)
    with pytest.raises(AnalysisError, match="not analysed"):
        analysis_agreement(own, "layer1.0")


def _analyses(work: list[object]) -> list[AnalysisKey]:
    """The analyses among the service's work (decodes run through it too)."""
    return [k for k in work if isinstance(k, AnalysisKey)]


def _agreement_lines(at) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith("Spearman(attention")]


def test_inside_view_measures_the_agreement_and_its_null_on_demand(
        tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, expected, service_work) -> None:
    from simam_viz.serving.service import shared_service  # after the page's imports

    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tiny_dir))
    for cache in shared_service().caches.values():
        cache.clear()
    at = run_page()
    at.session_state["view"] = "Inside attention"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    lines = _agreement_lines(at)
    assert len(lines) == 1  # the one model with 3-D weights of the demo trio (SE has none)
    assert lines[0].startswith(f"Spearman(attention, Grad-CAM after) = "
                               f"{expected['spearman']:.2f}; with other images' attention: "
                               "not measured yet (6 of the 6 other example images")
    page_analyses = _analyses(service_work)
    buttons = [b for b in at.button if str(b.key).startswith("agreement_")]
    assert len(buttons) == 1
    buttons[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # the six other examples, analysed once each through the service's analysis cache, with
    # the page's own key but for the image
    examples = _analyses(service_work)[len(page_analyses):]
    simam_key = next(k for k in page_analyses if k.model_key == "demo/simam_resnet50")
    assert len(examples) == 6 and len({k.image_sha256 for k in examples}) == 6
    assert {replace(k, image_sha256=simam_key.image_sha256) for k in examples} == {simam_key}
    assert all(shared_service().cache.get(k) is not None for k in examples)
    line = _agreement_lines(at)[0]
    assert line.startswith(
        f"Spearman(attention, Grad-CAM after) = {expected['spearman']:.2f}; with other "
        f"images' attention: mean {expected['null_mean']:.2f} (6 images, "
        f"±{expected['null_std']:.2f};")
    # another block of the same analyses: drawn at once from the cache, no button, no work
    ran = len(_analyses(service_work))
    at.session_state["block4"] = 1
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(_analyses(service_work)) == ran
    assert not [b for b in at.button if str(b.key).startswith("agreement_")]
    assert "mean " in _agreement_lines(at)[0]


def test_agreement_text_says_what_was_measured() -> None:
    import sys

    from helpers import APP_DIR

    sys.path.insert(0, str(APP_DIR))
    from views.inside import agreement_text

    rng = np.random.default_rng(3)
    cam, own = rng.random((32, 32)), rng.random((4, 4))
    others = [rng.random((4, 4)) for _ in range(3)]
    full = attention_agreement(cam, own, others)
    assert agreement_text(full, full) == (
        f"Spearman(attention, Grad-CAM after) = {full.spearman:.2f}; with other images' "
        f"attention: mean {full.null_mean:.2f} (3 images, ±{full.null_std:.2f}; this image's "
        f"attention ranks {full.rank} of 4)")
    alone = attention_agreement(cam, own)
    assert agreement_text(alone, None) == f"Spearman(attention, Grad-CAM after) = " \
                                          f"{alone.spearman:.2f}"
    assert agreement_text(alone, alone).endswith("no other image to compare with")
    flat = attention_agreement(np.ones((32, 32)), own, others)
    assert "not defined here, the Grad-CAM after the module is flat" in agreement_text(
        flat, flat)
