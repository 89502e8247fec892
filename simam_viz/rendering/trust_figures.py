"""A trust check for export: the matplotlib composite, its score lines and its JSON report.

Inputs are what :func:`simam_viz.engine.trust.faithfulness` and
:func:`simam_viz.engine.trust.sanity_check` return; nothing here runs a model. The app's
Trust view draws the same numbers as plotly charts (:mod:`simam_viz.rendering.trust_charts`)
through the helpers and colours below, and the sanity strip, on screen and in the composite,
is one picture (:func:`simam_viz.rendering.pictures.sanity_strip`). Nothing here imports
plotly, so an export does not load it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simam_viz.engine.trust import SANITY_SCORES, SCORES, SanityStep
from simam_viz.rendering import pictures
from simam_viz.rendering.jsonsafe import to_json_safe

__all__ = [
    "CURVE_COLOURS",
    "FAITHFULNESS_KEYS",
    "SANITY_COLOURS",
    "report",
    "sanity_rows",
    "sanity_series",
    "score_lines",
    "trust_figure",
]

FAITHFULNESS_KEYS: tuple[str, ...] = tuple(SCORES)
SANITY_COLOURS = {"spearman": "#1f77b4", "ssim": "#2ca02c", "hog": "#d62728"}
CURVE_COLOURS = {"deletion": "#d62728", "insertion": "#1f77b4"}
_SCORE_TITLES = {"road": "ROAD", "drop_in_confidence": "Drop in confidence",
                 "increase_in_confidence": "Increase in confidence",
                 "deletion_auc": "Deletion AUC", "insertion_auc": "Insertion AUC"}


def score_lines(faith: Mapping[str, Any]) -> list[tuple[str, float, str, str]]:
    """``(title, value, direction, meaning)`` per score, in :data:`SCORES`'s order."""
    return [(_SCORE_TITLES[k], float(faith[k]), SCORES[k][0], SCORES[k][1])
            for k in FAITHFULNESS_KEYS]


def sanity_rows(steps: Sequence[SanityStep | Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The cascade as mappings (layer and scores), from steps or from a report's ``sanity``."""
    return [s.scores() if isinstance(s, SanityStep) else s for s in steps]


def sanity_series(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """Score ``key`` of each cascade step as floats, NaN where it is undefined (a flat map;
    None in a report read back from JSON), for a chart to draw as a gap."""
    return [math.nan if r[key] is None else float(r[key]) for r in rows]


def report(faith: Mapping[str, Any], steps: Sequence[SanityStep | Mapping[str, Any]],
           **context: Any) -> dict[str, Any]:
    """A strict-JSON record of one check: scores with their direction and meaning, curves,
    the cascade's similarities (maps left out, NaN as null), and ``context`` (model,
    image, ...)."""
    return to_json_safe({
        **context,
        "faithfulness": dict(faith),
        "sanity": sanity_rows(steps),
        "directions": {k: v[0] for k, v in {**SCORES, **SANITY_SCORES}.items()},
        "meanings": {k: v[1] for k, v in {**SCORES, **SANITY_SCORES}.items()},
    })


def trust_figure(image: np.ndarray, reference: np.ndarray, faith: Mapping[str, Any],
                 steps: Sequence[SanityStep], *, title: str = "", colormap: str = "jet",
                 alpha: float = 0.5) -> Figure:
    """The export composite: scores, the two curves, the similarity chart and the strip."""
    fig = Figure(figsize=(12.0, 8.2))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 1.15], hspace=0.45, wspace=0.3,
                            left=0.05, right=0.98, top=0.9, bottom=0.03)
    fig.suptitle(title or f"Trust check: {faith['block']} {faith['where']}, {faith['method']}",
                 fontsize=11)
    text = fig.add_subplot(grid[0, 0])
    text.axis("off")
    lines = [f"{t}: {v:.3f}  ({d})" for t, v, d, _ in score_lines(faith)]
    lines.append(f"target: {faith['target_name']}  p = {faith['probability']:.3f}")
    text.text(0.0, 1.0, "\n".join(lines), va="top", fontsize=8.5, family="monospace")
    ax = fig.add_subplot(grid[0, 1])
    fractions = np.asarray(faith["fractions"])
    for name in ("deletion", "insertion"):
        ax.plot(fractions, faith[f"{name}_curve"], marker=".", color=CURVE_COLOURS[name],
                label=f"{name} AUC {faith[f'{name}_auc']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="fraction of pixels", ylabel="probability")
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    ax2 = fig.add_subplot(grid[0, 2])
    rows = sanity_rows(steps)
    x = np.arange(len(rows))
    for key, colour in SANITY_COLOURS.items():
        ax2.plot(x, sanity_series(rows, key), marker=".", color=colour, label=key)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks(x, [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax2.set(ylim=(-1.02, 1.02), ylabel="similarity to trained map")
    ax2.legend(fontsize=7)
    ax2.tick_params(axis="y", labelsize=7)
    strip = fig.add_subplot(grid[1, :])
    strip.imshow(pictures.sanity_strip(image, reference, steps, colormap=colormap, alpha=alpha))
    strip.axis("off")
    strip.set_title("Cascading randomization: the map after each step", fontsize=9)
    return fig
