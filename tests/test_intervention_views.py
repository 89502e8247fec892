"""The "What SimAM adds" view (AppTest) and what it draws and exports
(``simam_viz.rendering.intervention_charts`` and ``intervention_figures``).

Every number a chart, the composite or the JSON carries must be the number of the
``Intervention`` / ``LambdaSweep`` / ``LambdaRegime`` it was drawn from, and those numbers
are checked once more against another route to them: the forward-only
``intervention_effects`` for the per-block bars, ``intervene``'s own reference pass for the
sweep at the model's λ. The view's numbers must be those of ``intervene`` called directly on
the same model, image, class and λ; it runs only on request, once for every session.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math

import numpy as np
import plotly.io
import pytest
import torch
from helpers import DEFAULT_EXAMPLE, run_page, tiny_model

from simam_viz import intervene, load_model
from simam_viz.engine.analysis import analyze
from simam_viz.engine.intervention import MODES, intervened, intervention_effects
from simam_viz.engine.simam_lambda import lambda_regime, lambda_sweep
from simam_viz.errors import AnalysisError, SimamVizError
from simam_viz.images import load_image
from simam_viz.rendering import intervention_charts as charts
from simam_viz.rendering import intervention_figures as figs
from simam_viz.rendering.figures import figure_to_png, png_size
from simam_viz.rendering.pictures import overlay

VIEW = "What SimAM adds"


# ---- charts, figure and report against the engine's numbers ------------------------------------


@pytest.fixture(scope="module")
def computed():
    """A SimAM and an SE tiny model on one image: identity interventions with the per-block
    table, SimAM's sweep and regime."""
    simam = tiny_model("simam_resnet50", 2, width=0.25, num_classes=4, random_bn=True).eval()
    se = tiny_model("se_resnet50", 1, width=0.25, num_classes=4, random_bn=True).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    return {
        "models": (simam, se), "x": x,
        "results": [intervene(m, x, mode="identity", per_block=True) for m in (simam, se)],
        "sweep": lambda_sweep(simam, x), "regime": lambda_regime(simam, x),
    }


def _spec_array(values) -> np.ndarray:
    """A trace array as the browser receives it: a list, or numpy's typed-array encoding."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values)


def _sent(fig) -> dict:
    """The figure as the JSON plotly sends to the browser."""
    return json.loads(plotly.io.to_json(fig))


def test_block_chart_bars_are_each_blocks_change_in_probability(computed) -> None:
    results = computed["results"]
    sent = _sent(charts.block_change_chart(results))
    assert [t["name"] for t in sent["data"]] == [f"{r.model_name} (identity)" for r in results]
    for trace, r, model in zip(sent["data"], results, computed["models"], strict=True):
        assert trace["type"] == "bar" and list(trace["x"]) == list(r.blocks)
        bars = _spec_array(trace["y"])
        assert len(bars) == 16
        # another route to the same numbers: forward passes only, one block changed at a time
        effects = intervention_effects(model, computed["x"], mode="identity",
                                       block_sets={b: (b,) for b in r.blocks}, target=r.target)
        assert effects["reference"]["prob"] == pytest.approx(r.prob_ref, abs=1e-6)
        expected = [effects[b]["prob"] - effects["reference"]["prob"] for b in r.blocks]
        np.testing.assert_allclose(bars, expected, atol=1e-6)
        flips = [row[2] for row in trace["customdata"]]
        assert flips == ["top-1 flips" if effects[b]["top1"] != r.top1_ref else "top-1 kept"
                         for b in r.blocks]
        np.testing.assert_allclose([float(row[1]) for row in trace["customdata"]],
                                   [effects[b]["kl"] for b in r.blocks], atol=1e-6)
        # and by hand for the first and the last block: a whole forward pass of the model
        # with that one module's weights replaced (no shortened pass, no table)
        for b in ("layer1.0", "layer4.2"):
            with intervened(model, (b,), "identity"), torch.no_grad():
                p = torch.softmax(model(computed["x"])[0].double(), dim=0)
            assert bars[r.blocks.index(b)] == pytest.approx(float(p[r.target]) - r.prob_ref,
                                                            abs=1e-6)
    assert sent["layout"]["barmode"] == "group"
    # a result without the table is left out; none with one is a one-line error
    bare = dataclasses.replace(results[1], per_block=None)
    assert len(charts.block_change_chart([results[0], bare]).data) == 1
    with pytest.raises(ValueError, match="per-block table"):
        charts.block_change_chart([bare])


def test_sweep_chart_is_the_sweep_on_a_log_axis_with_the_models_lambda(computed) -> None:
    sweep, r = computed["sweep"], computed["results"][0]
    sent = _sent(charts.lambda_sweep_chart(sweep))
    prob, low, high, mark, flat = sent["data"]
    np.testing.assert_allclose(_spec_array(prob["x"]), sweep.lambdas)
    np.testing.assert_allclose(_spec_array(prob["y"]), sweep.prob)
    np.testing.assert_allclose(_spec_array(low["y"]), sweep.low)
    np.testing.assert_allclose(_spec_array(high["y"]), sweep.high)
    assert low["yaxis"] == high["yaxis"] == "y2" and high["fill"] == "tonexty"
    assert sent["layout"]["xaxis"]["type"] == "log"
    assert list(mark["x"]) == [0.1, 0.1] and mark["name"] == "model's λ 0.1"
    assert list(flat["y"]) == pytest.approx([1 / (1 + math.exp(-0.5))] * 2)
    # at the model's own λ the sweep's probability is intervene's reference probability
    own = int(np.argmin(np.abs(np.log(sweep.lambdas / 0.1))))
    assert sweep.target == r.target and sweep.prob[own] == pytest.approx(r.prob_ref, abs=1e-6)
    # the λ the analysis used is marked too, when it is another
    names = [t.name for t in charts.lambda_sweep_chart(sweep, analysis_lambda=1e-3).data]
    assert "analysis λ 0.001" in names
    assert len(charts.lambda_sweep_chart(sweep, analysis_lambda=0.1).data) == 5


def test_regime_chart_is_the_share_per_block(computed) -> None:
    sweep, regime = computed["sweep"], computed["regime"]
    sent = _sent(charts.lambda_regime_chart({sweep.model_name: regime}))
    (trace,) = sent["data"]
    assert list(trace["x"]) == list(regime.share)
    np.testing.assert_allclose(_spec_array(trace["y"]), list(regime.share.values()))
    # the regime at the model's λ is the sweep's at that λ (two passes, one number)
    own = int(np.argmin(np.abs(np.log(sweep.lambdas / regime.lam))))
    assert regime.lam == pytest.approx(0.1)
    assert regime.share == pytest.approx(sweep.regimes[own].share)
    assert 0 < regime.mean_share < 1  # some channels flat at 0.1 on this model, not all
    with pytest.raises(ValueError, match="no lambda regime"):
        charts.lambda_regime_chart({})


def test_report_is_strict_json_with_the_results_numbers(computed) -> None:
    results, sweep, regime = computed["results"], computed["sweep"], computed["regime"]
    flat = dataclasses.replace(results[1], cam_spearman=math.nan)
    report = figs.intervention_report([results[0], flat], [sweep],
                                      {sweep.model_name: regime})
    back = json.loads(json.dumps(report, allow_nan=False))
    first, second = back["interventions"]
    r = results[0]
    assert (first["model"], first["mode"], first["target"]) == (r.model_name, "identity",
                                                                r.target)
    assert first["prob_ref"] == r.prob_ref and first["prob"] == r.prob and first["kl"] == r.kl
    assert first["flipped"] == r.flipped and first["blocks"] == list(r.blocks)
    assert first["per_block_change"] == {
        b: pytest.approx(row["prob"] - r.prob_ref) for b, row in r.per_block.items()}
    assert second["cam_spearman"] is None  # NaN as null
    (swept,) = back["lambda_sweeps"]
    assert swept["prob"] == sweep.prob.tolist() and swept["weight_high"] == sweep.high.tolist()
    assert back["lambda_regimes"][sweep.model_name] == {
        "lambda": regime.lam, "share": regime.share, "mean_share": regime.mean_share}
    assert back["modes"] == MODES and "sigmoid(0.5)" in back["regime_rule"]


def test_figure_draws_the_maps_the_bars_and_the_lambda_panels(computed) -> None:
    results, sweep, regime = computed["results"], computed["sweep"], computed["regime"]
    fig = figs.intervention_figure(results, sweeps=[sweep], regimes={sweep.model_name: regime},
                                   colormap="viridis", alpha=0.4)
    assert fig.get_size_inches().tolist() == pytest.approx([11.0, 0.85 + 3 * 2.9])
    assert fig.dpi == 150 and png_size(fig, dpi=100) == (1100, 955)
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    expected = [overlay(r.image, cam, colormap="viridis", alpha=0.4)
                for r in results for cam in (r.cam_ref, r.cam)]
    assert len(images) == 4
    for got, want in zip(images, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    bars = [ax for ax in fig.axes if ax.containers]
    assert len(bars) == 3  # one per model, then the regime
    for ax, r in zip(bars[:2], results, strict=True):
        heights = [p.get_height() for p in ax.containers[0].patches]
        np.testing.assert_allclose(heights, figs.block_changes(r)[1])
        assert [t.get_text() for t in ax.get_xticklabels()] == list(r.blocks)
    np.testing.assert_allclose([p.get_height() for p in bars[2].containers[0].patches],
                               list(regime.share.values()))
    sweep_ax = next(ax for ax in fig.axes if ax.get_xscale() == "log")
    np.testing.assert_allclose(sweep_ax.lines[0].get_ydata(), sweep.prob)
    assert figure_to_png(fig, dpi=60)[:8] == b"\x89PNG\r\n\x1a\n"
    # without a sweep or a table: the maps alone; nothing at all is a one-line error
    bare = figs.intervention_figure([dataclasses.replace(results[1], per_block=None)])
    assert sum(bool(ax.images) for ax in bare.axes) == 2 and not any(
        ax.containers for ax in bare.axes)
    with pytest.raises(ValueError, match="nothing to draw"):
        figs.intervention_figure([])
    with pytest.raises(SimamVizError, match="dpi must be between"):
        figs.intervention_figure(results, dpi=5)


# ---- the view ---------------------------------------------------------------------------------


def _ok(at):
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _open(at):
    at.session_state["view"] = VIEW
    return _ok(at.run())


def _metrics(at) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for m in at.metric:
        found.setdefault(m.label, []).append(m.value)
    return found


def test_view_runs_on_request_with_intervenes_numbers(tiny_app, service_work,
                                                      tiny_checkpoints) -> None:
    app = _open(tiny_app)
    labels = [t.label for t in app.tabs]
    assert labels[labels.index("Explain SimAM") + 1] == VIEW
    assert service_work == []  # opening the view runs nothing
    assert app.radio(key="intervention_mode").options == [f"{m}: {t}" for m, t in MODES.items()]
    assert [b.label for b in app.button if b.key == "intervention_run"] == [
        "Run the interventions"]
    app.button(key="intervention_run").click().run()
    _ok(app)
    # SE and SimAM intervened (the plain ResNet-50 has nothing to change), SimAM's λ twice
    assert sorted(k[0] for k in service_work) == ["intervention", "intervention",
                                                  "lambda-regime", "lambda-sweep"]

    image = load_image(DEFAULT_EXAMPLE)
    lam = app.select_slider(key="lambda::demo/simam_resnet50").value
    shown = _metrics(app)
    direct = {}
    for arch, model_lam in (("se_resnet50", None), ("simam_resnet50", lam)):
        model = load_model(tiny_checkpoints / "demo" / f"{arch}.safetensors")
        target = analyze(model, image, blocks=("layer4.2",), simam_lambda=model_lam).target
        direct[arch] = intervene(model, image, mode="identity", per_block=True,
                                 simam_lambda=model_lam, target=target)
    results = list(direct.values())
    assert shown["p(target) after"] == [f"{r.prob:.3f}" for r in results]
    assert [m.delta for m in app.metric if m.label.startswith("p(target)")] == [
        f"{r.prob_change:+.3f} from {r.prob_ref:.3f}" for r in results]
    assert shown["KL(p_ref ‖ p), nats"] == [f"{r.kl:.4f}" for r in results]
    assert shown["Top-1"] == ["flips" if r.flipped else "kept" for r in results]
    specs = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    assert len(specs) == 3  # per-block bars, then SimAM's sweep and regime
    for trace, r in zip(specs[0]["data"], results, strict=True):
        assert trace["name"].endswith(" (identity)")
        np.testing.assert_allclose(_spec_array(trace["y"]), figs.block_changes(r)[1],
                                   atol=1e-6)
    simam = load_model(tiny_checkpoints / "demo" / "simam_resnet50.safetensors")
    sweep = lambda_sweep(simam, image, target=results[1].target)
    np.testing.assert_allclose(_spec_array(specs[1]["data"][0]["y"]), sweep.prob, atol=1e-6)
    regime = lambda_regime(simam, image, simam_lambda=lam)
    np.testing.assert_allclose(_spec_array(specs[2]["data"][0]["y"]),
                               list(regime.share.values()))
    assert any(c.value.startswith("λ regime: the share of each block's channels") and
               f"{regime.mean_share:.1%} of channels" in c.value for c in app.caption)
    captions = [img.caption for element in app.get("image") for img in element.proto.imgs]
    assert captions.count("Grad-CAM before (layer4.2)") == 2
    assert [b.label for b in app.get("download_button")] == ["These results (PNG)",
                                                            "Their numbers (JSON)"]

    # exact is SimAM's alone: SE is left out and said so; one new job, no λ work again
    app.radio(key="intervention_mode").set_value("exact").run()
    app.button(key="intervention_run").click().run()
    _ok(app)
    assert len(service_work) == 5 and service_work[-1][0] == "intervention"
    assert any(c.value.startswith("'exact' does not apply to SE-ResNet-50") for c in app.caption)
    assert len(_metrics(app)["Top-1"]) == 1

    # a second visitor with the same image and settings sees the cached results, no button
    other = run_page()
    other.session_state["intervention_mode"] = "identity"
    _open(other)
    assert len(service_work) == 5 and not [b for b in other.button
                                           if b.key == "intervention_run"]
    assert _metrics(other) == shown


@pytest.mark.parametrize("error, shown", [
    (AnalysisError("mode 'identity' does not apply here"), "mode 'identity' does not apply here"),
    (RuntimeError("boom"), "intervention failed (RuntimeError: boom)"),
])
def test_view_failure_is_one_line_not_a_traceback(tiny_app, monkeypatch, error,
                                                  shown) -> None:
    import views.interventions

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(views.interventions, "intervene", fail)
    app = _open(tiny_app)
    app.button(key="intervention_run").click().run()
    assert not app.exception
    assert [e.value for e in app.error] == [shown]
    assert not app.get("plotly_chart")
    # the session stays usable: another view draws
    app.session_state["view"] = "Compare models"
    _ok(app.run())


def test_view_without_attention_says_what_to_select(tiny_app, service_work) -> None:
    app = tiny_app
    app.multiselect(key="models").set_value(["demo/resnet50"])
    app = _open(app.run())
    assert [i.value for i in app.info][-1].startswith("Select a model with an attention module")
    assert not [b for b in app.button if b.key == "intervention_run"] and service_work == []

