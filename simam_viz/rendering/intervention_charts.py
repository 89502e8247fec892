"""Interactive plotly charts of interventions on the attention, for the "What SimAM adds" view.

Pure functions of what :func:`simam_viz.engine.intervention.intervene`,
:func:`simam_viz.engine.simam_lambda.lambda_sweep` and
:func:`~simam_viz.engine.simam_lambda.lambda_regime` return; nothing here runs a model. The
numbers are read through the helpers of :mod:`simam_viz.rendering.intervention_figures` (the
exported composite), in the same colours, so a bar on screen and the same bar in the PNG are
one number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from simam_viz.engine.intervention import Intervention
from simam_viz.engine.simam_lambda import LambdaRegime, LambdaSweep
from simam_viz.rendering.intervention_figures import (
    FLAT_WEIGHT,
    SWEEP_COLOURS,
    block_changes,
    block_flips,
    model_colour,
    regime_bars,
)

__all__ = ["block_change_chart", "lambda_regime_chart", "lambda_sweep_chart"]

_MARGIN = {"l": 10, "r": 10, "t": 50, "b": 10}


def block_change_chart(results: Sequence[Intervention]) -> go.Figure:
    """A bar per block of the change in the target's probability when that block's attention
    alone is changed, one trace per model (grouped): where in the network the module matters
    for this image. Hover gives the probability, KL and whether the top-1 class flips.
    Models without a per-block table are left out; ValueError when none has one."""
    shown = [(i, r) for i, r in enumerate(results) if r.per_block]
    if not shown:
        raise ValueError("no intervention with a per-block table to chart")
    fig = go.Figure()
    for i, r in shown:
        blocks, changes = block_changes(r)
        table = r.per_block or {}
        custom = np.asarray([[float(table[b]["prob"]), float(table[b]["kl"]),
                              "top-1 flips" if flip else "top-1 kept"]
                             for b, flip in zip(blocks, block_flips(r), strict=True)],
                            dtype=object)
        fig.add_trace(go.Bar(
            x=blocks, y=changes, name=f"{r.model_name} ({r.mode})",
            marker={"color": model_colour(i)}, customdata=custom,
            hovertemplate="%{x} alone: Δp = %{y:+.4f}<br>p = %{customdata[0]:.4f}, "
                          "KL %{customdata[1]:.4f}<br>%{customdata[2]}<extra>"
                          + r.model_name + "</extra>"))
    modes = sorted({r.mode for _, r in shown})
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(
        height=340, margin=_MARGIN, barmode="group",
        title=f"Change in the target's probability with one block's attention changed "
              f"({', '.join(modes)})",
        xaxis={"title": "block changed alone", "tickangle": -45},
        yaxis={"title": "p(target) − p(target) unchanged"},
        legend={"orientation": "h", "y": -0.35})
    return fig


def lambda_sweep_chart(sweep: LambdaSweep, *, analysis_lambda: float | None = None
                       ) -> go.Figure:
    """The target's probability (left axis) and the SimAM weights' range over all blocks
    (right axis, a band from min to max) against λ on a log axis, with the model's own λ as a
    dashed vertical line (a trace, so it sits at its data value on the log axis) and, when it
    differs, the λ the analysis used. The dotted line is sigmoid(0.5), where a flat channel's
    weights sit."""
    lams = np.asarray(sweep.lambdas, np.float64)
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=lams, y=np.asarray(sweep.prob, np.float64), mode="lines+markers",
        name=f"p('{sweep.target_name}')", line={"color": SWEEP_COLOURS["prob"]},
        hovertemplate="λ = %{x:.3g}<br>p = %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=lams, y=np.asarray(sweep.low, np.float64), mode="lines", name="lowest weight",
        yaxis="y2", line={"color": SWEEP_COLOURS["weights"], "width": 1},
        hovertemplate="λ = %{x:.3g}<br>lowest weight %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=lams, y=np.asarray(sweep.high, np.float64), mode="lines", name="highest weight",
        yaxis="y2", fill="tonexty", line={"color": SWEEP_COLOURS["weights"], "width": 1},
        hovertemplate="λ = %{x:.3g}<br>highest weight %{y:.4f}<extra></extra>"))
    marks = [("model's λ", sweep.model_lambda, "dash")]
    if analysis_lambda is not None and not np.isclose(analysis_lambda, sweep.model_lambda):
        marks.append(("analysis λ", float(analysis_lambda), "dot"))
    for label, value, dash in marks:
        fig.add_trace(go.Scatter(
            x=[value, value], y=[0.0, 1.02], mode="lines", name=f"{label} {value:g}",
            line={"color": SWEEP_COLOURS["model_lambda"], "dash": dash, "width": 1},
            hovertemplate=f"{label} {value:g}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[lams.min(), lams.max()], y=[FLAT_WEIGHT, FLAT_WEIGHT], mode="lines", yaxis="y2",
        name=f"sigmoid(0.5) ≈ {FLAT_WEIGHT:.2f}",
        line={"color": "grey", "dash": "dot", "width": 1}, hoverinfo="skip"))
    fig.update_layout(
        height=340, margin=_MARGIN,
        title=f"{sweep.model_name}: every SimAM block at each λ",
        xaxis={"title": "λ (log scale)", "type": "log", "exponentformat": "power"},
        yaxis={"title": "p(target)", "range": [0, 1.02]},
        yaxis2={"title": "SimAM weight (min–max)", "range": [0, 1.02], "overlaying": "y",
                "side": "right", "showgrid": False},
        legend={"orientation": "h", "y": -0.3})
    return fig


def lambda_regime_chart(regimes: Mapping[str, LambdaRegime]) -> go.Figure:
    """Per block, the share of channels where λ / (σ² + λ) > 0.5: there SimAM's weights are
    nearly flat at sigmoid(0.5) and the module selects almost nothing. One trace per model
    (``regimes``: model name -> regime); ValueError when empty."""
    if not regimes:
        raise ValueError("no lambda regime to chart")
    fig = go.Figure()
    for i, (name, regime) in enumerate(regimes.items()):
        blocks, shares = regime_bars(regime)
        fig.add_trace(go.Bar(
            x=blocks, y=shares, name=f"{name} (λ = {regime.lam:g})",
            marker={"color": SWEEP_COLOURS["weights"] if len(regimes) == 1
                    else model_colour(i)},
            hovertemplate="%{x}: %{y:.0%} of channels flat<extra>" + name + "</extra>"))
    fig.update_layout(
        height=340, margin=_MARGIN, barmode="group",
        title="Where λ switches SimAM off: share of channels with σ² < λ",
        xaxis={"title": "block", "tickangle": -45},
        yaxis={"title": "share of channels", "range": [0, 1], "tickformat": ".0%"},
        legend={"orientation": "h", "y": -0.35}, showlegend=len(regimes) > 1)
    return fig
