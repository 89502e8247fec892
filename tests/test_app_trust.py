"""The Trust view (AppTest) and the pictures it draws and exports
(``simam_viz.rendering.trust_charts``, ``trust_figures`` and ``pictures.sanity_strip``).

The view's numbers must be exactly those of ``faithfulness`` and ``sanity_check`` called
directly on the same model, image, target and lambda; the check runs only on request, once
for every session, and never as a side effect of opening a view.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import run_page

from simam_viz import load_model
from simam_viz.engine.trust import SANITY_LAYERS, SCORES, faithfulness, sanity_check
from simam_viz.images import load_image
from simam_viz.rendering import trust_charts, trust_figures
from simam_viz.rendering.pictures import sanity_strip

EXAMPLE = Path(__file__).resolve().parents[1] / "app" / "examples" / "scene_dog_3.png"
FAITH = {"target": 1, "target_name": "dog", "block": "layer4.2", "where": "output",
         "method": "gradcam", "probability": 0.9, "road": 0.1, "drop_in_confidence": 2.5,
         "increase_in_confidence": 0.0, "deletion_auc": 0.2, "insertion_auc": 0.7,
         "fractions": [0.0, 0.5, 1.0], "deletion_curve": [0.9, 0.3, 0.1],
         "insertion_curve": [0.1, 0.6, 0.9]}
"""A faithfulness result written by hand, for the report, reading and export tests."""


def _open_trust(at):
    at.session_state["view"] = "Trust"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _metrics(at) -> dict[str, float]:
    return {m.label: float(m.value) for m in at.metric}


def test_trust_view_checks_on_request_with_the_engines_numbers(tiny_app, service_work,
                                                               tiny_checkpoints):
    app = tiny_app
    _open_trust(app)
    assert service_work == []  # opening the view runs nothing
    assert [b.label for b in app.button if b.key == "trust_run"] == ["Check this map"]
    app.selectbox(key="trust_model").set_value(2).run()  # the SimAM model
    app.selectbox(key="trust_where").set_value("after").run()
    assert service_work == []
    app.button(key="trust_run").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert len(service_work) == 1 and service_work[0][0] == "trust"

    model = load_model(tiny_checkpoints / "demo" / "simam_resnet50.safetensors")
    image = load_image(EXAMPLE)
    lam = app.select_slider(key="lambda::demo/simam_resnet50").value
    settings = {"block": "layer4.2", "where": "after", "method": "gradcam", "simam_lambda": lam}
    top1 = int(np.argmax(_probabilities(model, image, lam)))
    faith = faithfulness(model, image, target=top1, **settings, baselines=True)
    steps = sanity_check(model, image, target=top1, **settings)
    shown = _metrics(app)
    assert list(shown) == ["ROAD", "Drop in confidence", "Increase in confidence",
                           "Deletion AUC", "Insertion AUC"]
    for (title, _, _, _), key in zip(trust_figures.score_lines(faith), SCORES, strict=True):
        assert shown[title] == pytest.approx(faith[key], abs=5e-4)  # shown to 3 decimals
    captions = [c.value for c in app.caption]
    assert captions.count("↓ lower is better") == 2 and captions.count("↑ higher is better") == 3
    # each score beside the random and the centre map's, and the one-line reading
    table = next(m.value for m in app.markdown if m.value.startswith("| score | this map |"))
    base = faith["baselines"]
    for key, (title, _, _, _) in zip(SCORES, trust_figures.score_lines(faith), strict=True):
        arrow = "↑" if SCORES[key][0].startswith("higher") else "↓"
        line = (f"| {title} {arrow} | **{faith[key]:.3f}** | {base['random'][key]:.3f} | "
                f"{base['center'][key]:.3f} |")
        assert line in table.splitlines(), (line, table)
    reading = f"ROAD {faith['road']:.2f} vs {base['random']['road']:.2f} random and "
    assert any(c.startswith(reading) for c in captions), captions
    expected = f"Spearman {steps[0].spearman:.2f} after randomising fc"
    assert any(c.startswith(expected) for c in captions), captions
    assert len(app.get("plotly_chart")) == 2

    # a second visitor with the same image and settings sees the cached check, no button
    other = run_page()
    other.session_state["trust_model"] = 2
    other.session_state["trust_where"] = "after"
    _open_trust(other)
    assert len(service_work) == 1 and not [b for b in other.button if b.key == "trust_run"]
    assert _metrics(other) == shown

    app.session_state["view"] = "Export"
    app.run()
    assert any("1 trust check(s)" in c.value for c in app.caption)


def test_trust_view_independent_mode_is_its_own_check(tiny_app, service_work, tiny_checkpoints,
                                                      monkeypatch) -> None:
    """The sanity mode is a choice of the view: independent runs its own check (cached under
    its own key), labels the chart, the strip and the export by mode, and the caption gives
    the engine's numbers, the flat-map rule and the ResNet identity-block caveat."""
    from views.trust import IDENTITY_BLOCKS, MODE_LABELS

    from simam_viz.engine.trust import SANITY_FLAT_RULE

    app = tiny_app
    _open_trust(app)
    assert app.radio(key="trust_mode").value == "cascade"
    assert app.radio(key="trust_mode").options == [MODE_LABELS[m] for m in MODE_LABELS]
    app.radio(key="trust_mode").set_value("independent").run()
    app.button(key="trust_run").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert len(service_work) == 1 and service_work[0][-1] == "independent"

    model = load_model(tiny_checkpoints / "demo" / "resnet50.safetensors")
    image = load_image(EXAMPLE)
    top1 = int(np.argmax(_probabilities(model, image, None)))  # a ResNet has no lambda
    steps = sanity_check(model, image, target=top1, block="layer4.2", mode="independent")
    flat = sum(s.flat for s in steps)
    captions = [c.value for c in app.caption]
    expected = (f"Spearman {steps[0].spearman:.2f} after randomising fc, "
                f"{steps[-1].spearman:.2f} with the stem alone")
    assert any(c.startswith(expected) and f"{flat} of 18 maps flat: {SANITY_FLAT_RULE}." in c
               for c in captions), captions
    assert IDENTITY_BLOCKS in captions
    chart = json.loads(app.get("plotly_chart")[1].proto.spec)
    assert "one layer randomised at a time" in chart["layout"]["title"]["text"]
    (strip,) = app.get("image")
    assert strip.captions == [trust_figures.SANITY_MODE_LABELS["independent"]["strip"]]

    # back to the cascade: a check of its own, which reuses the faithfulness scores (they do
    # not depend on the mode) instead of computing them again
    import views.trust

    calls: list[object] = []
    real = views.trust.faithfulness
    monkeypatch.setattr(views.trust, "faithfulness", lambda *a, **k: calls.append(k) or real(
        *a, **k))
    shown = _metrics(app)
    app.radio(key="trust_mode").set_value("cascade").run()
    assert [b.label for b in app.button if b.key == "trust_run"] == ["Check this map"]
    app.button(key="trust_run").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert len(service_work) == 2 and calls == [] and _metrics(app) == shown
    cascade = sanity_check(model, image, target=top1, block="layer4.2")
    assert any(c.value.startswith(f"Spearman {cascade[0].spearman:.2f} after randomising fc, "
                                  f"{cascade[-1].spearman:.2f} with every layer randomised")
               for c in app.caption)


def test_reading_and_export_carry_the_baselines() -> None:
    faith = {**FAITH, "road": 0.43, "drop_in_confidence": 0.1}
    assert trust_figures.baseline_rows(faith) == [] and trust_figures.baseline_reading(faith) \
        is None
    plain = trust_figures.report(faith, [])
    assert "reading" not in plain and "baseline_meanings" not in plain

    def entry(road: float, deletion: float) -> dict:
        return {"road": road, "drop_in_confidence": 0.3, "increase_in_confidence": 0.0,
                "deletion_auc": deletion, "insertion_auc": 0.6,
                "deletion_curve": [0.9, 0.5, 0.1], "insertion_curve": [0.1, 0.5, 0.9]}

    faith["baselines"] = {"random": entry(0.41, 0.5), "center": entry(0.30, 0.1)}
    rows = trust_figures.baseline_rows(faith)
    assert rows[0] == ("ROAD", "higher is better", 0.43, 0.41, 0.30)
    assert rows[3] == ("Deletion AUC", "lower is better", 0.2, 0.5, 0.1)
    reading = trust_figures.baseline_reading(faith)
    # ROAD and drop in confidence beat both; increase ties, deletion loses to the centre
    assert reading == ("ROAD 0.43 vs 0.41 random and 0.30 centre: the map does barely better "
                       "than a map that knows nothing; it beats both on 3 of 5 scores (one "
                       "image, no interval).")
    faith["baselines"]["random"]["road"] = 0.5
    assert "a map that knows nothing does as well" in trust_figures.baseline_reading(faith)
    faith["baselines"]["random"]["road"] = 0.2
    assert "clearly better" in trust_figures.baseline_reading(faith)
    back = json.loads(json.dumps(trust_figures.report(faith, [], model="m"), allow_nan=False))
    assert back["faithfulness"]["baselines"]["center"]["deletion_auc"] == 0.1
    assert back["reading"] == trust_figures.baseline_reading(faith)
    assert set(back["baseline_meanings"]) == {"random", "center"}
    chart = trust_charts.curves_chart(faith)
    assert [t.name for t in chart.data][2:] == [
        "deletion, random map (AUC 0.500)", "insertion, random map (AUC 0.600)",
        "deletion, centre map (AUC 0.100)", "insertion, centre map (AUC 0.600)"]
    assert list(chart.data[4].y) == [0.9, 0.5, 0.1]
    figure = trust_figures.trust_figure(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32)),
                                        faith, [])
    text = "\n".join(t.get_text() for ax in figure.axes for t in ax.texts)
    assert "ROAD ↑" in text and " 0.430   0.200   0.300" in text and "random" in text
    assert "Deletion AUC ↓" in text and "beats both on" in text.replace("\n", " ")


def _probabilities(model, image, lam) -> np.ndarray:
    from simam_viz.engine.analysis import analyze

    return analyze(model, image, blocks=("layer4.2",), simam_lambda=lam).probabilities


def test_report_is_strict_json_and_keeps_every_number() -> None:
    faith = dict(FAITH)
    steps = [{"layer": "fc", "spearman": 0.5, "ssim": 0.4, "hog": float("nan")}]
    text = json.dumps(trust_figures.report(faith, steps, model="m"), allow_nan=False)
    back = json.loads(text)
    assert back["sanity"][0]["hog"] is None and back["sanity"][0]["spearman"] == 0.5
    assert back["mode"] == "cascade" and "Spearman 0" in back["flat_rule"]
    independent = trust_figures.report(faith, steps, mode="independent")
    assert independent["mode"] == "independent"
    assert back["faithfulness"]["deletion_curve"] == [0.9, 0.3, 0.1]
    assert back["directions"]["deletion_auc"] == "lower is better"
    assert back["model"] == "m"


def test_charts_carry_the_curves_and_the_cascade(tiny_model_and_image) -> None:
    model, image = tiny_model_and_image
    faith = faithfulness(model, image)
    steps = sanity_check(model, image)
    curves = trust_charts.curves_chart(faith)
    assert [t.name for t in curves.data] == [f"deletion (AUC {faith['deletion_auc']:.3f})",
                                             f"insertion (AUC {faith['insertion_auc']:.3f})"]
    assert np.allclose(curves.data[0].y, faith["deletion_curve"])
    assert np.allclose(curves.data[1].x, np.linspace(0, 1, 21))
    cascade = trust_charts.sanity_chart(steps)
    assert list(cascade.data[0].x) == list(SANITY_LAYERS)
    spearman = [s.spearman for s in steps]
    assert all((a is None and math.isnan(b)) or a == pytest.approx(b)
               for a, b in zip(cascade.data[0].y, spearman, strict=True))
    strip = sanity_strip(np.zeros((32, 32, 3), np.uint8), steps[0].cam, steps)
    band = max(12, 32 // 9)
    assert strip.shape == (2 * (band + 32 + 3) - 3, 10 * 35 - 3, 3)  # 19 panels, 10 a row
    png = trust_figures.trust_figure(np.zeros((32, 32, 3), np.uint8), steps[0].cam, faith, steps)
    assert png.get_size_inches().tolist() == [12.0, 8.2]


@pytest.fixture()
def tiny_model_and_image():
    from helpers import noise_image, tiny_model

    return tiny_model(), noise_image()
