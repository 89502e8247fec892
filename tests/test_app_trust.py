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
    faith = faithfulness(model, image, target=top1, **settings)
    steps = sanity_check(model, image, target=top1, **settings)
    shown = _metrics(app)
    assert list(shown) == ["ROAD", "Drop in confidence", "Increase in confidence",
                           "Deletion AUC", "Insertion AUC"]
    for (title, _, _, _), key in zip(trust_figures.score_lines(faith), SCORES, strict=True):
        assert shown[title] == pytest.approx(faith[key], abs=5e-4)  # shown to 3 decimals
    captions = [c.value for c in app.caption]
    assert captions.count("↓ lower is better") == 2 and captions.count("↑ higher is better") == 3
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


def _probabilities(model, image, lam) -> np.ndarray:
    from simam_viz.engine.analysis import analyze

    return analyze(model, image, blocks=("layer4.2",), simam_lambda=lam).probabilities


def test_report_is_strict_json_and_keeps_every_number() -> None:
    faith = {"target": 1, "target_name": "dog", "block": "layer4.2", "where": "output",
             "method": "gradcam", "probability": 0.9, "road": 0.1,
             "drop_in_confidence": 2.5, "increase_in_confidence": 0.0,
             "deletion_auc": 0.2, "insertion_auc": 0.7, "fractions": [0.0, 0.5, 1.0],
             "deletion_curve": [0.9, 0.3, 0.1], "insertion_curve": [0.1, 0.6, 0.9]}
    steps = [{"layer": "fc", "spearman": 0.5, "ssim": 0.4, "hog": float("nan")}]
    text = json.dumps(trust_figures.report(faith, steps, model="m"), allow_nan=False)
    back = json.loads(text)
    assert back["sanity"][0]["hog"] is None and back["sanity"][0]["spearman"] == 0.5
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
