"""The Attention shapes export: the paper's Figure 2 on one image, as a matplotlib figure.

One row per model with attention, four panels a row: its channel weights strongest first
(with the spread over positions for 3-D weights), its spatial gate (CBAM), the channel mean
of the weights it applies, and the shares of their variance. Maps share one colour range and
weights one axis, so rows compare. Pure: arrays in, ``Figure`` (own Agg canvas) out; no
plotly, no pyplot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from simam_viz.engine.attention_shapes import SHARES, ShapeSummary, shape_summary
from simam_viz.networks.kinds import SHAPES
from simam_viz.rendering.jsonsafe import to_json_safe

__all__ = ["COLUMNS", "SHARE_COLOURS", "shapes_figure", "shapes_report", "summaries"]

COLUMNS = ("Channel weights", "Spatial gate", "Applied weights (channel mean)",
           "Variance shares")
SHARE_COLOURS = {"channel": "#1f77b4", "spatial": "#ff7f0e", "interaction": "#2ca02c"}
"""One colour per variance share, the same in the export and the app's chart."""
PANEL_W, PANEL_H = 2.6, 2.2  # inches per panel
TOP = 0.35  # inches above the first row for column titles
BOTTOM = 0.6  # inches under the last row for its axis label and the shares' legend
ModelWeights = Sequence[tuple[str, Mapping[str, np.ndarray]]]


def summaries(models: ModelWeights) -> list[tuple[str, ShapeSummary]]:
    """``(name, ShapeSummary)`` for every model that has weights (others are left out)."""
    return [(name, shape_summary(w)) for name, w in models if w]


def shapes_figure(models: ModelWeights, *, block: str) -> Figure:
    """Rows = models with weights, 4 columns (:data:`COLUMNS`); size (4 x 2.6) x
    (rows x 2.2 + 0.95) inches. Raises ValueError when no model has attention weights."""
    rows = summaries(models)
    if not rows:
        raise ValueError("no model with attention weights to draw")
    maps = [m for _, s in rows for m in (s.spatial, s.applied_map) if m is not None]
    norm = Normalize(min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)) \
        if maps else None
    height = len(rows) * PANEL_H + TOP + BOTTOM
    fig = Figure(figsize=(4 * PANEL_W, height))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), 4, left=0.06, right=0.9, bottom=BOTTOM / height,
                            top=1 - TOP / height, hspace=0.55,
                            wspace=0.3)
    image = None
    for i, (name, s) in enumerate(rows):
        axes = [fig.add_subplot(grid[i, j]) for j in range(4)]
        if i == 0:
            for ax, title in zip(axes, COLUMNS, strict=True):
                ax.set_title(title, fontsize=9)
        _channel_panel(axes[0], s)
        axes[0].set_ylabel(name, fontsize=8)
        for ax, values in ((axes[1], s.spatial), (axes[2], s.applied_map)):
            if values is None:
                _blank(ax, "none: " + ("no spatial gate" if ax is axes[1] else "one weight\n"
                                       "per channel"))
            else:
                image = ax.imshow(values, cmap="viridis", norm=norm)
                ax.set_xticks([])
                ax.set_yticks([])
        _shares_panel(axes[3], s)
        axes[3].set_xlabel(", ".join(SHAPES[k].split(":")[0] for k in s.shapes) + " weights"
                           f" at {block}", fontsize=7)
    handles, labels = fig.axes[3].get_legend_handles_labels()
    fig.legend(handles, [f"variance share: {label}" for label in labels], loc="lower right",
               bbox_to_anchor=(0.9, 0.0), ncol=3, fontsize=7, frameon=False)
    if image is not None:
        cax = fig.add_axes((0.92, 0.25, 0.015, 0.5))
        fig.colorbar(image, cax=cax, label="weight (maps, one scale)")
    return fig


def _blank(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, color="0.4")
    ax.set_axis_off()


def _channel_panel(ax, s: ShapeSummary) -> None:
    if s.channel is None:
        _blank(ax, "none: no channel weights")
        return
    _, rank, mean, spread = s.profile()
    if spread is not None:
        ax.fill_between(rank, mean - spread, mean + spread, alpha=0.25, linewidth=0)
    ax.plot(rank, mean, linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=6)


def _shares_panel(ax, s: ShapeSummary) -> None:
    left = 0.0
    for share in SHARES:
        value = s.variance[share]
        value = 0.0 if np.isnan(value) else value
        ax.barh([0], [value], left=left, color=SHARE_COLOURS[share], label=share)
        if value >= 0.12:
            ax.text(left + value / 2, 0, f"{value:.0%}", ha="center", va="center", fontsize=7,
                    color="white")
        left += value
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.tick_params(labelsize=6)



def shapes_report(models: ModelWeights, *, block: str) -> dict[str, object]:
    """The Attention shapes numbers as JSON-safe values (NaN shares become None)."""
    return to_json_safe({"block": block, "shape_meanings": dict(SHAPES),
                         "models": {name: s.report() for name, s in summaries(models)}})
