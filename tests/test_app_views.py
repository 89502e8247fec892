"""The views for every attention kind, in AppTest: Figure 6 rows, channel bars, the Explain
view's equations and the Trust view's names.

The page serves five tiny demo models, one per kind (ResNet-50, SE, ECA, CBAM, SimAM), all
selected. What each view shows is checked against the analysis engine run directly on the
same model and image: the panels a kind has, the ranges of its weights, its channel weights.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import APP_DIR, DEFAULT_EXAMPLE, run_page, save_tiny_checkpoints

from simam_viz import load_model
from simam_viz.engine.analysis import Analysis, analyze
from simam_viz.engine.cam_methods import METHODS
from simam_viz.engine.neuron import explain_neuron, record_simam
from simam_viz.images import load_image
from simam_viz.rendering import panels

ARCHS = ("resnet50", "se_resnet50", "eca_resnet50", "cbam_resnet50", "simam_resnet50")
BLOCK = "layer4.2"


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("every_kind"), archs=ARCHS)


@pytest.fixture(scope="module")
def analyses(every_kind: Path) -> dict[str, Analysis]:
    """Each model's analysis of the page's first image at ``BLOCK``, by attention label."""
    image = load_image(DEFAULT_EXAMPLE)
    out = {}
    for arch in ARCHS:
        model = load_model(every_kind / "demo" / f"{arch}.safetensors")
        result = analyze(model, image, blocks=(BLOCK,))
        out[result.kind.label] = result
    return out


def _ok(at):
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


@pytest.fixture()
def page(every_kind: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(every_kind))
    at = _ok(run_page())
    at.multiselect(key="models").set_value([f"demo/{arch}" for arch in ARCHS])
    return _ok(at.run())


def _open(at, view: str):
    at.session_state["view"] = view
    return _ok(at.run())


def _image_captions(at) -> list[str]:
    return [img.caption for element in at.get("image") for img in element.proto.imgs]


def test_figure6_has_a_row_per_attention_model_with_its_kinds_panels(page, analyses) -> None:
    _open(page, "Inside attention")
    expected = []
    for label in ("SE", "ECA", "CBAM", "SimAM"):  # the sidebar's order; ResNet-50 has none
        r = analyses[label]
        for panel in panels.figure6_panels(r.kind):
            values = panels.weights_map(r.attention_weights(BLOCK))
            title = (f"{panel.title} ({values.min():.3f}–{values.max():.3f})"
                     if panel.is_weights else panel.title)
            expected.append(f"{title} · {BLOCK}")
    captions = _image_captions(page)
    assert captions[:-1] == expected  # then the depth strip
    assert "Spatial gate (" in expected[6] and "Grad-CAM after ECA · layer4.2" in expected
    assert len(expected) == 2 + 2 + 3 + 4
    rows = [m.value for m in page.markdown if m.value.startswith("**") and " · " in m.value]
    assert [row.split(" · ")[1].split(",")[0] for row in rows[:4]] == ["SE", "ECA", "CBAM",
                                                                        "SimAM"]
    lines = [c.value for c in page.caption if "explaining" in c.value]
    assert [("λ =" in line) for line in lines] == [False, False, False, True]
    assert lines[2].endswith("weights 1-D (256,), 2-D (4, 4)")  # CBAM: channel then spatial
    # one depth strip, of the model picked under the rows
    assert captions[-1] == "SE-ResNet-50 demo: Grad-CAM after SE"
    page.radio(key="depth_model").set_value(4).run()
    assert _image_captions(_ok(page))[-1] == "SimAM-ResNet-50 demo: Grad-CAM after SimAM"


def test_channels_view_has_bars_for_every_model_with_channel_weights(page, analyses) -> None:
    _open(page, "Channels")
    charts = {c.key: json.loads(c.proto.spec) for c in page.get("plotly_chart")}
    bars = {spec["layout"]["title"]["text"]: spec["data"][0]["y"]
            for key, spec in charts.items() if key and key.startswith("channel_bars_")}
    assert sorted(bars) == sorted([
        f"SE-ResNet-50 demo: SE channel gate · {BLOCK}",
        f"ECA-ResNet-50 demo: ECA channel gate · {BLOCK}",
        f"CBAM-ResNet-50 demo: CBAM channel gate · {BLOCK}",
        f"SimAM-ResNet-50 demo: SimAM channel means · {BLOCK}",
    ])
    for title, values in bars.items():
        label = title.split(": ")[1].split(" ")[0]
        expected = analyses[label].channel_weights(BLOCK)
        np.testing.assert_allclose(_plotly_array(values), expected, atol=1e-6)
    assert len(charts) == len(bars) + 1  # and SimAM's top-k channel maps
    assert page.slider(key="topk").value == 8


def _plotly_array(values) -> np.ndarray:
    """A plotly trace array from its JSON: a list, or numpy's typed-array encoding."""
    if isinstance(values, dict):
        import base64

        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values)


def test_explain_picks_simam_and_folds_a_negative_mean_into_a_sum(page, every_kind) -> None:
    _open(page, "Explain SimAM")
    model = load_model(every_kind / "demo" / "simam_resnet50.safetensors")
    image = load_image(DEFAULT_EXAMPLE)
    lam = page.select_slider(key="lambda::demo/simam_resnet50").value
    means = record_simam(model, image, block=BLOCK, simam_lambda=lam).values.mean(axis=(1, 2))
    channel = int(np.argmin(means))
    assert means[channel] < 0  # a channel whose mean is negative exists in this model
    _ok(page.selectbox(key="neuron_channel").set_value(channel).run())
    y, x = page.session_state["neuron_yx"]
    ex = explain_neuron(model, image, block=BLOCK, channel=channel, y=y, x=x, simam_lambda=lam)
    assert ex["mean"] < 0
    latex = [e.value for e in page.get("latex")]
    text = "\n".join(latex)
    assert f"({ex['t']:.4f} + {-ex['mean']:.4f})^2" in text
    assert not re.search(r"[-+]\s*-\d", text)  # never "0.3063 - -0.4038" nor "+ -"
    assert all(r"\begin{aligned}" in equation for equation in latex)  # short lines each
    assert f"= {ex['energy']:.4f}" in text


def test_explain_formats_numbers_for_latex() -> None:
    sys.path.insert(0, str(APP_DIR))
    from views.explain import tex_difference, tex_number

    assert tex_difference(0.30634, -0.40381) == "0.3063 + 0.4038"
    assert tex_difference(0.30634, 0.40381) == "0.3063 - 0.4038"
    assert tex_difference(-0.5, -0.25) == "-0.5000 + 0.2500"
    assert tex_number(1e-5) == r"1\times 10^{-5}" and tex_number(1e-4) == "0.0001"
    assert tex_number(-0.25, 4) == "-0.2500"


def test_trust_offers_the_sidebars_method_names(page) -> None:
    titles = [m.title for m in METHODS.values()]
    assert page.selectbox(key="method").options == titles
    _open(page, "Trust")
    method = page.selectbox(key="trust_method")
    assert method.options == titles and method.value == "gradcam"
    caption = next(c.value for c in page.caption if "explaining" in c.value)
    assert " · Grad-CAM · " in caption and "gradcam" not in caption


def test_export_offers_every_attention_models_figure6_panels(page, analyses) -> None:
    _open(page, "Export")
    labels = [b.label for b in page.get("download_button")]
    for label in ("SE", "ECA", "CBAM", "SimAM"):
        for panel in panels.figure6_panels(analyses[label].kind):
            assert f"{panel.title} · {BLOCK}" in labels
    assert "Spatial gate · layer4.2" in labels
    assert {"Figure 1 (PNG)", "Figure 6 (PNG)", "Attention shapes (PNG)"} <= set(labels)


def test_export_payloads_cover_every_kind(every_kind: Path) -> None:
    """What the Export view's composite and zip buttons build (called directly: AppTest does
    not click downloads): Figure 6 with a row per attention model, the shapes composite,
    and a zip with each kind's figures and the shapes numbers."""
    import io
    import zipfile

    from PIL import Image

    sys.path.insert(0, str(APP_DIR))
    from views.export import _composite, _zip

    from simam_viz.rendering.export import ExportRequest, figure6_figure

    image = load_image(DEFAULT_EXAMPLE)
    models = [load_model(every_kind / "demo" / f"{arch}.safetensors") for arch in ARCHS]
    results = [analyze(m, image, blocks="all") for m in models]
    fig = figure6_figure(results, BLOCK)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == [p.title for r in results for p in panels.figure6_panels(r.kind)]
    request = ExportRequest(block=BLOCK)
    assert Image.open(io.BytesIO(_composite(results, request, "shapes"))).format == "PNG"
    names = zipfile.ZipFile(io.BytesIO(_zip(results, models, request, "dog", "0" * 64))).namelist()
    for r in results:
        stem = r.model_name.replace(" ", "-")
        assert (f"dog_figure6_{stem}.png" in names) == r.kind.has_attention
        assert (f"dog_channels_{stem}.png" in names) == r.kind.has_attention
    assert {"dog_shapes_layer4.2.png", "dog_shapes_layer4.2.json", "dog_figure1.png"} <= set(names)
