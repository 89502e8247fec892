"""The "What SimAM adds" view: change the attention's weights, run the model again, compare.

For every selected model whose attention kind takes interventions (asked of ``analysis.kind``,
never of a name), :func:`simam_viz.intervene` runs the model as it is and with every
attention block's weights replaced by the chosen mode's counterfactual, and with each block
changed alone (``per_block=True``), for the class and λ the analysis explains. For models
whose weights come from an energy with λ (SimAM), :func:`lambda_sweep` and
:func:`lambda_regime` show what λ itself does.

The work runs on a button press, as the Trust view's checks do, and not when the tab opens:
``per_block`` on a full-size ResNet-50 is two passes with gradients plus 16 forward passes,
seconds per model on a CPU, times every selected model (and 12 more forward passes per
SimAM model for λ); opening the tab, or moving the overlay alpha, which reruns this
fragment, must never pay that. On the demo models it is well under a second, so the button
costs a visitor one click there. Each piece goes through the shared service (one admission
slot, single flight, its own byte-bounded cache) under the analysis key plus the mode, so a
result is computed once for every session, and a cached one is shown at once, without a
button. Everything drawn after that is a pure function of the cached results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import streamlit as st
from PIL import Image
from screen import Exports, screen_jpeg
from torch import nn
from widgets import kept, remember, session_id

from simam_viz.engine.analysis import Analysis
from simam_viz.engine.intervention import MODES, Intervention, intervene
from simam_viz.engine.simam_lambda import LambdaRegime, LambdaSweep, lambda_regime, lambda_sweep
from simam_viz.rendering import figures, intervention_charts, pictures
from simam_viz.rendering.intervention_figures import (
    FLAT_WEIGHT,
    intervention_figure,
    intervention_report,
)
from simam_viz.serving.service import shared_service

__all__ = ["intervention_key", "regime_key", "sweep_key", "view_interventions"]

WORK = "intervention"
"""The service's kind of work (and cache) for everything this view computes."""
REGIME_LINE = (
    "λ regime: the share of each block's channels where λ / (σ² + λ) > 0.5, i.e. σ² < λ. "
    f"There SimAM's weights are nearly flat at sigmoid(0.5) ≈ {FLAT_WEIGHT:.2f}: the module "
    "scales the channel and selects almost nothing."
)


def intervention_key(analysis_key: str, mode: str) -> tuple[str, ...]:
    """An intervention depends on everything the analysis does (image, model, device, class,
    λ) plus the mode; it always changes every block and has the per-block table."""
    return ("intervention", analysis_key, mode)


def sweep_key(analysis_key: str) -> tuple[str, ...]:
    """A λ sweep depends on the analysis (its class), not on the mode."""
    return ("lambda-sweep", analysis_key)


def regime_key(analysis_key: str) -> tuple[str, ...]:
    """The λ regime at the λ the analysis used, whatever the mode."""
    return ("lambda-regime", analysis_key)


def _mode_label(mode: str) -> str:
    return f"{mode}: {MODES[mode]}"


def _jobs(results: Sequence[Analysis], models: Sequence[nn.Module], keys: Sequence[str],
          image: Callable[[], Image.Image], takes: Sequence[int], simam: Sequence[int],
          mode: str) -> list[tuple[tuple[str, ...], str, Callable[[], object]]]:
    """``(cache key, what it is, work)`` for every result the view shows; each work runs
    for the class and λ of its model's analysis."""
    jobs: list[tuple[tuple[str, ...], str, Callable[[], object]]] = []
    for i in takes:
        r, m = results[i], models[i]
        jobs.append((intervention_key(keys[i], mode), f"{r.model_name}: {mode}",
                     lambda r=r, m=m: intervene(m, image(), mode=mode, per_block=True,
                                                simam_lambda=r.simam_lambda, target=r.target)))
    for i in simam:
        r, m = results[i], models[i]
        jobs.append((sweep_key(keys[i]), f"{r.model_name}: λ sweep",
                     lambda r=r, m=m: lambda_sweep(m, image(), target=r.target)))
        jobs.append((regime_key(keys[i]), f"{r.model_name}: λ regime",
                     lambda r=r, m=m: lambda_regime(m, image(), simam_lambda=r.simam_lambda)))
    return jobs


def view_interventions(results: Sequence[Analysis], models: Sequence[nn.Module],
                       keys: Sequence[str], image: Callable[[], Image.Image],
                       style: dict) -> None:
    """Pick a mode; on request, each model's decision and Grad-CAM with its attention changed,
    block by block, and SimAM's λ sweep and regime; export as PNG + JSON."""
    st.subheader("What SimAM adds: change the attention, run the model again")
    shown = [i for i, r in enumerate(results) if r.kind.interventions]
    if not shown:
        st.info("Select a model with an attention module in the sidebar: this view replaces "
                "its weights by counterfactuals and runs the model again.")
        return
    offered = [m for m in MODES if any(m in results[i].kind.interventions for i in shown)]
    kept("intervention_mode", offered[0])
    if st.session_state["intervention_mode"] not in offered:
        st.session_state["intervention_mode"] = offered[0]
    mode = st.radio("Put in place of every attention module's weights", offered,
                    format_func=_mode_label, key="intervention_mode", on_change=remember,
                    args=("intervention_mode",))
    takes = [i for i in shown if mode in results[i].kind.interventions]
    simam = [i for i in shown if results[i].kind.has_lambda]
    left_out = [results[i].model_name for i in shown if i not in takes]
    if left_out:
        st.caption(f"'{mode}' does not apply to {', '.join(left_out)}: its weights are not "
                   "Eqn (5)'s closed form.")
    service = shared_service()
    cache = service.caches[WORK]
    jobs = _jobs(results, models, keys, image, takes, simam, mode)
    found = {key: cache.get(key) for key, _, _ in jobs}
    if any(value is None for value in found.values()):
        slot = st.empty()  # the button goes once it is pressed, not on the next rerun
        if not slot.button("Run the interventions", key="intervention_run", type="primary"):
            st.info(f"{len(takes)} model(s): two passes with Grad-CAM and one forward pass per "
                    "attention block each"
                    + (", plus 12 forward passes per SimAM model for λ" if simam else "")
                    + ". Well under a second per demo model on a CPU, a few seconds per "
                    "full-size ResNet-50; the result is kept for every session.")
            return
        slot.empty()
        bar = st.progress(0.0, text="Changing the attention…")
        for n, (key, what, work) in enumerate(jobs):
            if found[key] is None:
                bar.progress(n / len(jobs), text=f"{what}…")
                found[key], _ = service.compute(key, work, what=WORK, session=session_id())
        bar.empty()
    done: list[Intervention] = [found[intervention_key(keys[i], mode)] for i in takes]
    sweeps: list[LambdaSweep] = [found[sweep_key(keys[i])] for i in simam]
    regimes: dict[str, LambdaRegime] = {results[i].model_name: found[regime_key(keys[i])]
                                        for i in simam}
    for i, r in zip(takes, done, strict=True):
        show_intervention(r, keys[i], models[i], style)
    st.plotly_chart(intervention_charts.block_change_chart(done), key="intervention_blocks",
                    width="stretch")
    st.caption("Each bar: the target's probability with that one block's attention changed, "
               "minus the unchanged model's. Where the bars are tall, this module matters for "
               "this image; the sum of the bars need not be the all-blocks change, since "
               "blocks interact.")
    if simam:
        show_lambda(results, simam, sweeps, regimes)
    show_export(done, sweeps, regimes, [keys[i] for i in [*takes, *simam]], mode, style)


def show_intervention(r: Intervention, key: str, model: nn.Module, style: dict) -> None:
    """One model: the target's probability before -> after, KL, the top-1 class, and the
    Grad-CAM before and after side by side (the overlay of every other view)."""
    names = model.simam_viz.class_names
    st.markdown(f"**{r.model_name}** · every attention block ({len(r.blocks)}) changed · "
                f"target '{r.target_name}'")
    cols = st.columns([1.1, 1, 0.9, 1.3, 1.3])
    cols[0].metric("p(target) after", f"{r.prob:.3f}",
                   delta=f"{r.prob_change:+.3f} from {r.prob_ref:.3f}",
                   help="The target's softmax probability with every attention block changed; "
                        "below, the change from the unchanged model's.")
    cols[1].metric("KL(p_ref ‖ p), nats", f"{r.kl:.4f}",
                   help="How far the whole distribution over classes moved, not just the "
                        "target's probability.")
    cols[2].metric("Top-1", "flips" if r.flipped else "kept",
                   help=f"{names[r.top1_ref]} → {names[r.top1]}")
    cols[2].caption(f"{names[r.top1_ref]} → {names[r.top1]}")
    blend = {"colormap": style["colormap"], "alpha": style["alpha"]}
    tag = f"{key}|{r.mode}|{style['colormap']}|{style['alpha']}"
    rho = "n/a (flat map)" if math.isnan(r.cam_spearman) else f"{r.cam_spearman:.2f}"
    cols[3].image(screen_jpeg(f"intervention|before|{tag}", lambda: pictures.overlay(
                      r.image, r.cam_ref, **blend)),
                  caption=f"Grad-CAM before ({r.cam_block})", width="stretch",
                  output_format="JPEG")
    cols[4].image(screen_jpeg(f"intervention|after|{tag}", lambda: pictures.overlay(
                      r.image, r.cam, **blend)),
                  caption=f"after ({r.mode}); Spearman {rho}", width="stretch",
                  output_format="JPEG")


def show_lambda(results: Sequence[Analysis], simam: Sequence[int], sweeps: Sequence[LambdaSweep],
                regimes: dict[str, LambdaRegime]) -> None:
    """Per SimAM model: the λ sweep beside the λ regime at the analysis' λ."""
    st.markdown("**SimAM's λ**: what its one hyper-parameter does to this decision")
    for i, sweep in zip(simam, sweeps, strict=True):
        r = results[i]
        regime = regimes[r.model_name]
        left, right = st.columns(2)
        left.plotly_chart(intervention_charts.lambda_sweep_chart(
            sweep, analysis_lambda=r.simam_lambda), key=f"intervention_sweep_{i}",
            width="stretch")
        right.plotly_chart(intervention_charts.lambda_regime_chart({r.model_name: regime}),
                           key=f"intervention_regime_{i}", width="stretch")
        st.caption(f"{REGIME_LINE} {r.model_name} at λ = {regime.lam:g}: "
                   f"{regime.mean_share:.1%} of channels on average over its blocks.")


def show_export(done: Sequence[Intervention], sweeps: Sequence[LambdaSweep],
                regimes: dict[str, LambdaRegime], keys: Sequence[str], mode: str,
                style: dict) -> None:
    """PNG (the composite) and JSON (its numbers), each built once on the first click."""
    exports = Exports(keys, style, mode, "interventions")
    left, right = st.columns(2)
    left.download_button(
        "These results (PNG)", exports("interventions-png", lambda: figures.figure_to_png(
            intervention_figure(done, sweeps=sweeps, regimes=regimes,
                                colormap=style["colormap"], alpha=style["alpha"]), dpi=150)),
        f"interventions_{mode}.png", "image/png", key="dl_interventions_png")
    right.download_button(
        "Their numbers (JSON)", exports("interventions-json", lambda: json.dumps(
            intervention_report(done, sweeps, regimes), indent=2,
            allow_nan=False).encode("utf-8")),
        f"interventions_{mode}.json", "application/json", key="dl_interventions_json")
