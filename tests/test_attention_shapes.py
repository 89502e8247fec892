"""The Attention shapes view and its pictures: summaries, plotly charts, the export figure.

Values are checked against the weights the analysis recorded (``Analysis.attention_weights``,
itself checked against hook-recorded references in test_attention_kinds.py) by direct numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from simam_viz import analyze, build_model, weight_variance
from simam_viz.engine.attention_shapes import shape_summary
from simam_viz.rendering.shape_charts import channel_profiles, position_maps, variance_bars
from simam_viz.rendering.shape_figures import shapes_figure, shapes_report, summaries

BLOCK = "layer2.0"
ARCHS = ("resnet50", "se_resnet50", "eca_resnet50", "cbam_resnet50", "simam_resnet50")


@pytest.fixture(scope="module")
def results():
    x = torch.randn(1, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    return {arch: analyze(build_model(arch, width=0.25, num_classes=4), x, blocks=(BLOCK,))
            for arch in ARCHS}


def test_summaries_follow_each_kind(results) -> None:
    se = shape_summary(results["se_resnet50"].attention_weights(BLOCK))
    assert se.shapes == ("channel",) and se.applied_map is None and se.spatial is None
    assert se.variance["channel"] == pytest.approx(1.0)
    cbam_w = results["cbam_resnet50"].attention_weights(BLOCK)
    cbam = shape_summary(cbam_w)
    np.testing.assert_allclose(cbam.spatial, cbam_w["spatial"])
    np.testing.assert_allclose(cbam.applied_map, cbam_w["channel"].mean() * cbam_w["spatial"],
                               rtol=1e-6)
    product = cbam_w["channel"][:, None, None] * cbam_w["spatial"][None]
    assert (cbam.low, cbam.high) == pytest.approx((product.min(), product.max()))
    full = results["simam_resnet50"].attention_weights(BLOCK)["full"]
    simam = shape_summary({"full": full})
    np.testing.assert_allclose(simam.channel, full.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(simam.channel_spread, full.std(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(simam.applied_map, full.mean(axis=0), rtol=1e-6)
    assert simam.variance == pytest.approx(weight_variance(full), nan_ok=True)


def test_charts_put_models_on_one_scale(results) -> None:
    rows = summaries([(r.model_name, r.attention_weights(BLOCK)) for r in results.values()])
    assert [name for name, _ in rows] == ["SE-ResNet-50", "ECA-ResNet-50", "CBAM-ResNet-50",
                                          "SimAM-ResNet-50"]  # ResNet-50 has nothing to show
    bars = variance_bars(rows)
    by_share = {trace.name.split(" ")[0]: list(trace.x) for trace in bars.data}
    for i, (_, s) in enumerate(rows):
        for share in ("channel", "spatial", "interaction"):
            assert by_share[share][i] == pytest.approx(s.variance[share])
    maps = position_maps(rows)
    heat = [t for t in maps.data if t.type == "heatmap"]
    assert len(heat) == 3  # CBAM's spatial gate and product, SimAM's channel mean
    assert len({(t.zmin, t.zmax) for t in heat}) == 1
    lows = [float(np.min(t.z)) for t in heat]
    assert heat[0].zmin == pytest.approx(min(lows))
    assert position_maps(rows[:2]) is None  # SE and ECA weigh no positions
    profiles = channel_profiles(rows)
    se_line = next(t for t in profiles.data if t.name == "SE-ResNet-50")
    np.testing.assert_allclose(se_line.y, np.sort(rows[0][1].channel)[::-1])


def test_export_figure_size_and_report_are_strict(results) -> None:
    models = [(r.model_name, r.attention_weights(BLOCK)) for r in results.values()]
    fig = shapes_figure(models, block=BLOCK)
    width, height = fig.get_size_inches()
    assert (width, height) == pytest.approx((4 * 2.6, 4 * 2.2 + 0.95))
    report = shapes_report(models, block=BLOCK)
    text = json.dumps(report, allow_nan=False)
    assert set(report["models"]) == {"SE-ResNet-50", "ECA-ResNet-50", "CBAM-ResNet-50",
                                     "SimAM-ResNet-50"}
    assert report["models"]["CBAM-ResNet-50"]["shapes"] == ["channel", "spatial"]
    flat = shapes_report([("flat", {"full": np.full((2, 3, 3), 0.6)})], block=BLOCK)
    assert flat["models"]["flat"]["variance_shares"]["channel"] is None
    assert "NaN" not in text
    with pytest.raises(ValueError, match="no model with attention"):
        shapes_figure([("ResNet-50", {})], block=BLOCK)


def test_export_figure_does_not_import_plotly() -> None:
    code = ("import sys; import simam_viz.rendering.shape_figures; "
            "print('plotly' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def _shapes_page(arch_list: list[str]) -> None:
    import sys as _sys
    from pathlib import Path as _Path

    import torch as _torch

    from simam_viz import analyze as _analyze
    from simam_viz import build_model as _build

    _sys.path.insert(0, str(_Path.cwd() / "app"))
    from views.attention_shapes import view_attention_shapes

    x = _torch.randn(1, 3, 64, 64, generator=_torch.Generator().manual_seed(1))
    view_attention_shapes([_analyze(_build(a, width=0.25, num_classes=4), x,
                                    blocks=("layer3.1",)) for a in arch_list], "layer3.1")


def test_view_shows_every_kind_in_its_shape() -> None:
    at = AppTest.from_function(_shapes_page, args=(list(ARCHS),), default_timeout=60).run()
    assert not at.exception
    text = "\n".join(m.value for m in at.markdown)
    for label, meaning in (("SE", "1-D: one weight per channel"),
                           ("ECA", "1-D: one weight per channel"),
                           ("CBAM", "2-D: one weight per position"),
                           ("SimAM", "3-D: one weight per neuron")):
        line = next(s for s in text.splitlines() if f"({label}," in s)
        assert meaning in line and "variance: channel" in line
    assert "ResNet-50: no attention module" in " ".join(c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 3


def test_view_without_attention_says_what_to_add() -> None:
    at = AppTest.from_function(_shapes_page, args=(["resnet50"],), default_timeout=60).run()
    assert not at.exception
    assert "add SE, ECA, CBAM or SimAM" in at.info[0].value
