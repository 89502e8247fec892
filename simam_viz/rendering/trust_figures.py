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
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simam_viz.engine.trust import BASELINES, SANITY_FLAT_RULE, SANITY_SCORES, SCORES, SanityStep
from simam_viz.rendering import pictures
from simam_viz.rendering.jsonsafe import to_json_safe

__all__ = [
    "BASELINE_TITLES",
    "CURVE_COLOURS",
    "FAITHFULNESS_KEYS",
    "SANITY_COLOURS",
    "SANITY_MODE_LABELS",
    "baseline_reading",
    "baseline_rows",
    "flat_steps",
    "report",
    "sanity_rows",
    "sanity_series",
    "score_lines",
    "trust_figure",
]

FAITHFULNESS_KEYS: tuple[str, ...] = tuple(SCORES)
SANITY_COLOURS = {"spearman": "#1f77b4", "ssim": "#2ca02c", "hog": "#d62728"}
CURVE_COLOURS = {"deletion": "#d62728", "insertion": "#1f77b4"}
SANITY_MODE_LABELS: dict[str, dict[str, str]] = {
    "cascade": {
        "title": "Similarity to the trained model's map as layers are randomised "
                 "(cascade, logits down)",
        "axis": "randomised down to",
        "strip": "Cascading randomization: the trained map, then the map after each step "
                 "(cumulative)",
    },
    "independent": {
        "title": "Similarity to the trained model's map with one layer randomised at a time "
                 "(independent)",
        "axis": "randomised alone",
        "strip": "Independent randomization: the trained map, then the map with each layer "
                 "alone randomised",
    },
}
"""Chart title, axis and strip caption of each :data:`~simam_viz.engine.trust.SANITY_MODES`,
the same on screen and in the export."""
_SCORE_TITLES = {"road": "ROAD", "drop_in_confidence": "Drop in confidence",
                 "increase_in_confidence": "Increase in confidence",
                 "deletion_auc": "Deletion AUC", "insertion_auc": "Insertion AUC"}


def score_lines(faith: Mapping[str, Any]) -> list[tuple[str, float, str, str]]:
    """``(title, value, direction, meaning)`` per score, in :data:`SCORES`'s order."""
    return [(_SCORE_TITLES[k], float(faith[k]), SCORES[k][0], SCORES[k][1])
            for k in FAITHFULNESS_KEYS]


BASELINE_TITLES = {"random": "random map", "center": "centre map"}
READING_MARGIN = 0.05
"""ROAD ahead of the better baseline by less than this (probability) reads as "barely"."""


def baseline_rows(faith: Mapping[str, Any]) -> list[tuple[str, str, float, float, float]]:
    """``(title, direction, this map, random map, centre map)`` per score, in :data:`SCORES`'s
    order; empty when the check ran without ``baselines=True``."""
    base = faith.get("baselines")
    if not base:
        return []
    return [(title, direction, value, float(base["random"][key]), float(base["center"][key]))
            for key, (title, value, direction, _) in zip(FAITHFULNESS_KEYS, score_lines(faith),
                                                         strict=True)]


def _beats(direction: str, value: float, *others: float) -> bool:
    """Strictly better than every one of ``others`` in ``direction``."""
    higher = direction.startswith("higher")
    return all(value > o if higher else value < o for o in others)


def baseline_reading(faith: Mapping[str, Any]) -> str | None:
    """One line that reads the map's ROAD against the two maps that know nothing, and counts
    the scores on which the map beats both (None without baselines).

    ROAD leads the line because its noisy linear imputation leaves no sharp-edged hole from
    which the model could read the mask's shape (Rong et al. 2022's point), as deletion's
    mean-colour holes can; :data:`READING_MARGIN` separates "barely" from "clearly". One image
    gives no interval, so the line says so rather than judge.
    """
    rows = baseline_rows(faith)
    if not rows:
        return None
    _, _, road, random_map, centre = rows[FAITHFULNESS_KEYS.index("road")]
    best = max(random_map, centre)
    if road <= best:
        verdict = "a map that knows nothing does as well"
    elif road - best < READING_MARGIN:
        verdict = "the map does barely better than a map that knows nothing"
    else:
        verdict = "the map does clearly better than a map that knows nothing"
    wins = sum(_beats(direction, value, r, c) for _, direction, value, r, c in rows)
    return (f"ROAD {road:.2f} vs {random_map:.2f} random and {centre:.2f} centre: {verdict}; "
            f"it beats both on {wins} of {len(rows)} scores (one image, no interval).")


def _score_text(faith: Mapping[str, Any]) -> list[str]:
    """The composite's score lines: value and direction, or a table beside the baselines."""
    rows = baseline_rows(faith)
    if not rows:
        return [f"{t}: {v:.3f}  ({d})" for t, v, d, _ in score_lines(faith)]
    arrow = {True: "↑", False: "↓"}
    lines = [f"{'':<25}{'map':>6}{'random':>8}{'centre':>8}"]
    lines += [f"{title + ' ' + arrow[d.startswith('higher')]:<25}{v:6.3f}{r:8.3f}{c:8.3f}"
              for title, d, v, r, c in rows]
    return [*lines, *textwrap.wrap(baseline_reading(faith) or "", 50)]


def sanity_rows(steps: Sequence[SanityStep | Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The cascade as mappings (layer and scores), from steps or from a report's ``sanity``."""
    return [s.scores() if isinstance(s, SanityStep) else s for s in steps]


def sanity_series(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """Score ``key`` of each step as floats, NaN where it is undefined (a flat *trained* map
    or a non-finite one; None in a report read back from JSON), for a chart to draw as a gap.
    A flat randomised map is 0 by the flat-map rule (:func:`flat_steps` says which)."""
    return [math.nan if r[key] is None else float(r[key]) for r in rows]


def flat_steps(rows: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Whether each step's map was flat (False for a report written before steps said so)."""
    return [bool(r.get("flat", False)) for r in rows]


def report(faith: Mapping[str, Any], steps: Sequence[SanityStep | Mapping[str, Any]],
           *, mode: str = "cascade", **context: Any) -> dict[str, Any]:
    """A strict-JSON record of one check: scores with their direction and meaning, curves,
    the sanity check's ``mode`` and similarities with each step's ``flat`` (maps left out, NaN
    as null), the flat-map rule, and ``context`` (model, image, ...)."""
    return to_json_safe({
        **context,
        "faithfulness": dict(faith),
        "mode": mode,
        "sanity": sanity_rows(steps),
        "flat_rule": SANITY_FLAT_RULE,
        "directions": {k: v[0] for k, v in {**SCORES, **SANITY_SCORES}.items()},
        "meanings": {k: v[1] for k, v in {**SCORES, **SANITY_SCORES}.items()},
        **({"baseline_meanings": dict(BASELINES), "reading": baseline_reading(faith)}
           if faith.get("baselines") else {}),
    })


def trust_figure(image: np.ndarray, reference: np.ndarray, faith: Mapping[str, Any],
                 steps: Sequence[SanityStep], *, title: str = "", colormap: str = "jet",
                 alpha: float = 0.5, mode: str = "cascade") -> Figure:
    """The export composite: scores, the two curves, the similarity chart and the strip.

    ``mode`` is the sanity check's (it labels the chart and the strip); flat maps are marked
    with a grey x on the zero line, where the flat-map rule puts their Spearman and HOG.
    """
    labels = SANITY_MODE_LABELS[mode]
    fig = Figure(figsize=(12.0, 8.2))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 1.15], hspace=0.45, wspace=0.3,
                            left=0.05, right=0.98, top=0.9, bottom=0.03)
    fig.suptitle(title or f"Trust check: {faith['block']} {faith['where']}, {faith['method']}",
                 fontsize=11)
    text = fig.add_subplot(grid[0, 0])
    text.axis("off")
    lines = _score_text(faith)
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
    flat = np.flatnonzero(flat_steps(rows))
    if flat.size:
        ax2.plot(flat, np.zeros(flat.size), "x", color="grey", label="flat map")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks(x, [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax2.set(ylim=(-1.02, 1.02), ylabel="similarity to trained map", xlabel=labels["axis"])
    ax2.xaxis.label.set_fontsize(7)
    ax2.legend(fontsize=7)
    ax2.tick_params(axis="y", labelsize=7)
    strip = fig.add_subplot(grid[1, :])
    strip.imshow(pictures.sanity_strip(image, reference, steps, colormap=colormap, alpha=alpha))
    strip.axis("off")
    strip.set_title(labels["strip"], fontsize=9)
    return fig
