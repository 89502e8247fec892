"""The "What SimAM adds" export: interventions on the attention as one figure and its JSON.

Inputs are what :func:`simam_viz.engine.intervention.intervene`,
:func:`simam_viz.engine.simam_lambda.lambda_sweep` and
:func:`~simam_viz.engine.simam_lambda.lambda_regime` return; nothing here runs a model. The
app's view draws the same numbers as plotly charts
(:mod:`simam_viz.rendering.intervention_charts`), read through the helpers and colours below,
so a chart on screen and the exported panel cannot disagree; the Grad-CAM panels are
:func:`~simam_viz.rendering.pictures.overlay`'s pixels, the ones the view shows. Nothing here
imports plotly or pyplot: the CLI's export loads neither.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simam_viz.engine.intervention import MODES, Intervention
from simam_viz.engine.simam_lambda import LambdaRegime, LambdaSweep
from simam_viz.rendering.figures import check_dpi
from simam_viz.rendering.jsonsafe import to_json_safe
from simam_viz.rendering.pictures import Colour, overlay

__all__ = [
    "FLAT_WEIGHT",
    "MODEL_COLOURS",
    "REGIME_RULE",
    "SWEEP_COLOURS",
    "block_changes",
    "block_flips",
    "intervention_figure",
    "intervention_report",
    "lambda_rows",
    "model_colour",
    "regime_bars",
]

FLAT_WEIGHT = 1.0 / (1.0 + math.exp(-0.5))
"""sigmoid(0.5) ~ 0.622: every SimAM weight of a channel whose variance lambda dominates."""
REGIME_RULE = (
    "share of channels where lambda / (sigma^2 + lambda) > 0.5 (sigma^2 < lambda): there "
    f"SimAM's weights are nearly flat at sigmoid(0.5) = {FLAT_WEIGHT:.2f} and the module "
    "scales the channel but selects almost nothing"
)
"""What the lambda regime measures, the same words in the view, the figure and the JSON."""
MODEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
"""One colour per model (in the order given), the same in the charts and the export."""
SWEEP_COLOURS = {"prob": "#1f77b4", "weights": "#ff7f0e", "model_lambda": "#555555"}

WIDTH = 11.0  # inches
TOP = 0.85  # inches above the first row for the title and the first titles
ROW_H = 2.9  # inches per model row (Grad-CAM before | after | per-block bars)
LAMBDA_H = 2.9  # inches per lambda row (sweep | regime)


def model_colour(i: int) -> str:
    """The colour of the ``i``-th model (cycling)."""
    return MODEL_COLOURS[i % len(MODEL_COLOURS)]


def block_changes(result: Intervention) -> tuple[list[str], np.ndarray]:
    """``(blocks, prob - prob_ref)`` for each block changed alone, in the table's (network)
    order: how much that block's attention, changed by the mode, moves the target's
    probability. Empty without ``per_block``."""
    table = result.per_block or {}
    blocks = list(table)
    return blocks, np.asarray([float(table[b]["prob"]) - result.prob_ref for b in blocks],
                              np.float64)


def block_flips(result: Intervention) -> list[bool]:
    """Whether changing each block alone changes the top-1 class (order of
    :func:`block_changes`)."""
    table = result.per_block or {}
    return [int(table[b]["top1"]) != result.top1_ref for b in table]


def regime_bars(regime: LambdaRegime) -> tuple[list[str], np.ndarray]:
    """``(blocks, share of flat channels)`` of a regime, in its (network) order."""
    return list(regime.share), np.asarray(list(regime.share.values()), np.float64)


def lambda_rows(sweeps: Sequence[LambdaSweep], regimes: Mapping[str, LambdaRegime] | None
                ) -> list[tuple[str, LambdaSweep | None, LambdaRegime | None]]:
    """``(model, sweep, regime)`` per model that has either, sweeps' order first: one lambda
    row each in the export."""
    regimes = dict(regimes or {})
    by_model = {s.model_name: s for s in sweeps}
    names = list(dict.fromkeys([*by_model, *regimes]))
    return [(n, by_model.get(n), regimes.get(n)) for n in names]


def _all_blocks_text(r: Intervention) -> str:
    flip = f", top-1 flips to class {r.top1}" if r.flipped else ", top-1 kept"
    return (f"all {len(r.blocks)} blocks changed: p {r.prob_ref:.3f} -> {r.prob:.3f} "
            f"({r.prob_change:+.3f}), KL {r.kl:.3f}{flip}")


def intervention_report(results: Sequence[Intervention], sweeps: Sequence[LambdaSweep] = (),
                        regimes: Mapping[str, LambdaRegime] | None = None) -> dict[str, Any]:
    """A strict-JSON record of an export: every intervention's numbers (its ``summary()``
    plus the per-block change in probability the bars show), every sweep and every regime
    with what the modes and the regime mean (NaN as null, maps left out)."""
    return to_json_safe({
        "modes": dict(MODES),
        "regime_rule": REGIME_RULE,
        "flat_weight": FLAT_WEIGHT,
        "interventions": [
            {**r.summary(), "per_block_change": dict(zip(*block_changes(r), strict=True))}
            for r in results],
        "lambda_sweeps": [s.summary() for s in sweeps],
        "lambda_regimes": {name: {"lambda": reg.lam, "share": dict(reg.share),
                                  "mean_share": reg.mean_share}
                           for name, reg in (regimes or {}).items()},
    })


def intervention_figure(results: Sequence[Intervention], *,
                        sweeps: Sequence[LambdaSweep] = (),
                        regimes: Mapping[str, LambdaRegime] | None = None, dpi: int = 150,
                        colormap: Colour = "jet", alpha: float = 0.5) -> Figure:
    """The export composite: a row per intervention (Grad-CAM before | after on the crop,
    then the per-block bars when present), then a row per model with a sweep or a regime.

    Size: 11 x (0.85 + 2.9 per intervention + 2.9 per lambda row) inches, at ``dpi`` (the
    figure's own; a PNG writer may render at another). Raises a one-line ValueError when
    there is nothing to draw.
    """
    fig_dpi = check_dpi(dpi)
    rows = lambda_rows(sweeps, regimes)
    if not results and not rows:
        raise ValueError("nothing to draw: no intervention, lambda sweep or regime given")
    height = TOP + len(results) * ROW_H + len(rows) * LAMBDA_H
    fig = Figure(figsize=(WIDTH, height), dpi=fig_dpi)
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(len(results) + len(rows), 1, left=0.06, right=0.94,
                             bottom=0.6 / height, top=1 - TOP / height, hspace=0.62)
    modes = sorted({r.mode for r in results})
    fig.suptitle("What the attention adds: " + (", ".join(f"{m} ({MODES[m]})" for m in modes)
                                                if modes else "SimAM's lambda"),
                 fontsize=10, y=1 - 0.12 / height, va="top")
    for i, r in enumerate(results):
        cells = outer[i].subgridspec(1, 3, width_ratios=[1.0, 1.0, 2.6], wspace=0.32)
        _model_row(fig, cells, r, colormap, alpha, model_colour(i))
    for j, (name, sweep, regime) in enumerate(rows):
        cells = outer[len(results) + j].subgridspec(1, 2, width_ratios=[1.0, 1.0], wspace=0.4)
        if sweep is not None:
            _sweep_panel(fig.add_subplot(cells[0, 0]), sweep)
        if regime is not None:
            _regime_panel(fig.add_subplot(cells[0, 1]), name, regime)
    return fig


def _model_row(fig: Figure, cells: Any, r: Intervention, colormap: Colour, alpha: float,
               colour: str) -> None:
    """One intervention: Grad-CAM before and after side by side, and its per-block bars."""
    for col, (cam, title) in enumerate(((r.cam_ref, f"before: p = {r.prob_ref:.3f}"),
                                        (r.cam, f"after ({r.mode}): p = {r.prob:.3f}"))):
        ax = fig.add_subplot(cells[0, col])
        ax.imshow(overlay(r.image, cam, colormap=colormap, alpha=alpha))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)
        if col == 0:
            ax.set_ylabel(r.model_name, fontsize=8)
        else:
            rho = "n/a" if math.isnan(r.cam_spearman) else f"{r.cam_spearman:.2f}"
            ax.set_xlabel(f"Grad-CAM at {r.cam_block}, Spearman {rho}", fontsize=7)
    ax = fig.add_subplot(cells[0, 2])
    blocks, changes = block_changes(r)
    ax.set_title(f"{r.model_name}, target '{r.target_name}', each block alone\n"
                 f"{_all_blocks_text(r)}", fontsize=7.5)
    if not blocks:
        ax.text(0.5, 0.5, "each block alone: not computed", ha="center", va="center",
                fontsize=8, color="0.4")
        ax.set_axis_off()
        return
    x = np.arange(len(blocks))
    ax.bar(x, changes, color=colour)
    flips = np.flatnonzero(block_flips(r))
    if flips.size:
        ax.plot(flips, changes[flips], "x", color="black", label="top-1 flips")
        ax.legend(fontsize=6, loc="best")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, blocks, rotation=90, fontsize=6)
    ax.set_ylabel("change in p(target)\n(this block alone)", fontsize=7)
    ax.tick_params(axis="y", labelsize=6)


def _sweep_panel(ax: Axes, sweep: LambdaSweep) -> None:
    """The target's probability (left axis) and the weights' range (right axis) against
    lambda on a log axis, the model's own lambda dashed."""
    lams = np.asarray(sweep.lambdas, np.float64)
    ax.plot(lams, sweep.prob, "o-", ms=3, color=SWEEP_COLOURS["prob"],
            label=f"p('{sweep.target_name}')")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("lambda (every SimAM block)", fontsize=7)
    ax.set_ylabel("p(target)", fontsize=7, color=SWEEP_COLOURS["prob"])
    ax.axvline(sweep.model_lambda, ls="--", color=SWEEP_COLOURS["model_lambda"],
               label=f"model's lambda {sweep.model_lambda:g}")
    ax.tick_params(labelsize=6)
    right = ax.twinx()
    right.fill_between(lams, sweep.low, sweep.high, color=SWEEP_COLOURS["weights"], alpha=0.25,
                       linewidth=0)
    right.plot(lams, sweep.low, color=SWEEP_COLOURS["weights"], lw=1, label="weights' range")
    right.plot(lams, sweep.high, color=SWEEP_COLOURS["weights"], lw=1)
    right.axhline(FLAT_WEIGHT, ls=":", color="grey", lw=0.8)
    right.set_ylim(0, 1.02)
    right.set_ylabel("SimAM weight (min / max)", fontsize=7, color=SWEEP_COLOURS["weights"])
    right.tick_params(labelsize=6)
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, fontsize=6, loc="lower left")
    ax.set_title(f"{sweep.model_name}: lambda sweep", fontsize=8)


def _regime_panel(ax: Axes, name: str, regime: LambdaRegime) -> None:
    """The share of flat channels per block at the regime's lambda."""
    blocks, shares = regime_bars(regime)
    x = np.arange(len(blocks))
    ax.bar(x, shares, color=SWEEP_COLOURS["weights"])
    ax.set_ylim(0, 1.0)
    ax.set_xticks(x, blocks, rotation=90, fontsize=6)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_ylabel("share of flat channels\n(sigma^2 < lambda)", fontsize=7)
    ax.set_title(f"{name}: lambda regime at lambda = {regime.lam:g} "
                 f"(mean share {regime.mean_share:.2f})", fontsize=8)
