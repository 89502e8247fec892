"""The "Explain SimAM" view in AppTest: a clicked neuron's numbers, and no model for display.

AppTest has no plotly interaction, so a click is sent the way the browser sends it: a widget
state for the chart's id holding the selection JSON that ``st.plotly_chart(on_select=...)``
receives from plotly.js (``selection.points`` with ``x`` and ``y``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simam_viz import load_model
from simam_viz.engine.neuron import explain_neuron
from simam_viz.images import load_image

EXAMPLE = Path(__file__).resolve().parents[1] / "app" / "examples" / "scene_dog_3.png"


def _ok(at):
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _text(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption]
                     + [x.value for x in at.get("latex")])


def _click(at, chart_key: str, y: int, x: int):
    """Send a click on point (x, y) of the plotly chart ``chart_key``, as the browser does."""
    chart = next(c for c in at.get("plotly_chart") if c.key == chart_key)
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = chart.proto.id
    state.string_value = json.dumps({"selection": {
        "points": [{"x": x, "y": y, "curve_number": 0, "point_index": 0}],
        "point_indices": [0], "box": [], "lasso": []}})
    return _ok(at._run(states))


def test_click_shows_the_neurons_numbers_and_lambda_runs_no_model(tiny_app, service_work,
                                                                  tiny_checkpoints):
    app = tiny_app
    app.session_state["view"] = "Explain SimAM"
    _ok(app.run())
    assert [k[0] for k in service_work] == ["simam-record"]  # one forward pass for the block
    block = "layer4.2"
    channel = app.selectbox(key="neuron_channel").value
    model = load_model(tiny_checkpoints / "demo" / "simam_resnet50.safetensors")
    lam = app.select_slider(key="lambda::demo/simam_resnet50").value
    image = load_image(EXAMPLE)

    _click(app, f"neuron_map_{block}_{channel}", y=1, x=0)
    ex = explain_neuron(model, image, block=block, channel=channel, y=1, x=0, simam_lambda=lam)
    text = _text(app)
    assert f"Neuron** (1, 0) of channel {channel}" in text
    assert f"t = {ex['t']:.4f}" in text
    assert f"= {ex['energy']:.4f}" in text and f"{ex['weight']:.6f}" in text
    assert f"{ex['energy_exact']:.4f}" in text
    assert abs(ex["module_weight"] - ex["weight"]) < 1e-6

    before = list(service_work)
    shown = app.select_slider(key="neuron_lambda")
    other = next(v for v in shown.options if float(v) != float(lam))
    _ok(shown.set_value(float(other)).run())
    assert service_work == before  # the curve moved, no model ran
    names = [t.get("name") for c in app.get("plotly_chart")
             for t in json.loads(c.proto.spec)["data"]]
    assert f"sigmoid(1/e*), λ = {float(other):g}" in names  # the curve at the slider's λ
    assert f"model's λ = {float(lam):g}" in names  # and the model's, for comparison
    assert f"Neuron** (1, 0) of channel {channel}" in _text(app)  # the neuron is kept

    picks = app.selectbox(key=f"neuron_pick_{block}_{channel}")
    lowest = next(o for o in picks.options if o.startswith("lowest"))
    _ok(picks.select(lowest).run())
    y, x = (int(v) for v in lowest.split("(")[1].split(")")[0].split(","))
    assert f"Neuron** ({y}, {x}) of channel {channel}" in _text(app)
    weights = np.asarray(ex["weights"])
    assert weights[y, x] == pytest.approx(weights.min())
    assert service_work == before
