"""Figure 6's consistency, measured: does SimAM's attention map agree with the Grad-CAM?

The paper's Figure 6 puts SimAM's channel-mean attention beside the Grad-CAM maps and says
they agree. Agreement is a number here: the Spearman rank correlation between the channel
mean of a block's 3-D weights (h x w, the block's grid) and the Grad-CAM *after* the module at
that block. A correlation alone cannot say whether the attention knows anything of *this*
image: both maps may share a bias all images have (a centre, the border effects of padding).
So the same correlation is computed with the attention of *other* images at the same block
(a shuffled null): an attention map that agrees with its own image's Grad-CAM clearly more
than other images' attention does is about the image; one that agrees as much is not.

Pure functions of arrays (and of :class:`~simam_viz.engine.analysis.Analysis` results that
already hold them): no model runs here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.stats import spearmanr

from simam_viz.engine.analysis import Analysis
from simam_viz.errors import AnalysisError

__all__ = [
    "Agreement",
    "analysis_agreement",
    "attention_agreement",
    "cam_at_grid",
    "map_spearman",
]

WHERE = "after"
"""The Grad-CAM compared with the attention: the one computed on the module's output."""


@dataclass(frozen=True)
class Agreement:
    """Spearman(attention, Grad-CAM after) at one block, beside the shuffled null.

    ``null`` holds the same correlation of this image's Grad-CAM with each other image's
    attention (in the order given); ``null_mean`` and ``null_std`` (population, ``ddof=0``)
    are over its finite values. ``percentile`` is the share of finite null values below
    ``spearman`` (ties count half), in percent: 100 when the own attention agrees better than
    every other image's. ``rank`` is 1 plus the number of null values above ``spearman``
    (1: best). Both are NaN (rank 0) when ``spearman`` is NaN or the null is empty.
    """

    block: str
    grid: tuple[int, int]
    spearman: float
    null: tuple[float, ...]
    null_mean: float
    null_std: float
    percentile: float
    rank: int

    @property
    def n(self) -> int:
        """How many other images' attention maps gave a finite null value."""
        return sum(1 for v in self.null if math.isfinite(v))

    @property
    def excess(self) -> float:
        """``spearman - null_mean``: agreement beyond what any image's attention would give."""
        return self.spearman - self.null_mean

    def summary(self) -> dict[str, object]:
        """Every field as plain Python, for JSON exports (NaN stays NaN: see jsonsafe)."""
        return {"block": self.block, "grid": list(self.grid), "spearman": self.spearman,
                "null": list(self.null), "null_mean": self.null_mean, "null_std": self.null_std,
                "null_n": self.n, "percentile": self.percentile, "rank": self.rank,
                "excess": self.excess}


def cam_at_grid(cam: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The input-resolution Grad-CAM ``cam`` brought down to the block's ``grid`` (h, w).

    Area averaging (``cv2.INTER_AREA``), because the comparison belongs at the grid where the
    attention exists: the Grad-CAM *is* a block-grid map that pytorch-grad-cam upsampled
    bilinearly to the input, so averaging each cell's pixels gives back (nearly) the values it
    was made from, with every pixel counted once. Comparing at input resolution instead would
    upsample the attention too (inventing values by an interpolation of our choosing) and
    rank tens of thousands of pixels that are interpolations of a few dozen numbers, which
    inflates ties and makes the correlation look more certain than its h x w values allow.
    Point sampling (nearest, bilinear at the cell centres) would depend on where the
    sampling grid falls.
    """
    a = np.asarray(cam, dtype=np.float32)
    if a.ndim != 2:
        raise AnalysisError(f"a Grad-CAM must be an HxW map, got shape {a.shape}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1 or h > a.shape[0] or w > a.shape[1]:
        raise AnalysisError(f"cannot bring a {a.shape[0]}x{a.shape[1]} map down to {h}x{w}")
    if (h, w) == a.shape:
        return a.astype(np.float64)
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA).astype(np.float64)


def map_spearman(cam: np.ndarray, attention: np.ndarray) -> float:
    """Spearman correlation of a block-grid Grad-CAM and an attention map of the same shape.

    The trust checks' flat-map rule (:func:`simam_viz.engine.trust.compare_maps`), with the
    Grad-CAM as the reference (it is what the attention is asked to agree with, and it stays
    fixed in the null): a flat attention map has no ranks and agrees with nothing, 0; a flat
    Grad-CAM leaves nothing to agree with, NaN; any non-finite value, NaN.
    """
    a = np.asarray(cam, dtype=np.float64)
    b = np.asarray(attention, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise AnalysisError(f"maps must be two HxW arrays of one shape, got {a.shape}, {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or np.ptp(a) == 0:
        return math.nan
    if np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def attention_agreement(cam: np.ndarray, attention: np.ndarray,
                        others: Sequence[np.ndarray] = (), *, block: str = "") -> Agreement:
    """Spearman(``attention``, ``cam``) and the null from ``others``' attention maps.

    ``cam``: this image's Grad-CAM after the module (input resolution); ``attention``: this
    image's channel-mean attention (h x w); ``others``: other images' channel-mean attention
    at the same block. Each comparison brings ``cam`` to the grid of the attention map it is
    compared with (:func:`cam_at_grid`), so another model's or size's grid cannot be compared
    by accident at the wrong resolution.
    """
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 2:
        raise AnalysisError(f"an attention map must be h x w, got shape {att.shape}")
    grid = (int(att.shape[0]), int(att.shape[1]))
    observed = map_spearman(cam_at_grid(cam, grid), att)
    null = []
    for other in others:
        o = np.asarray(other, dtype=np.float64)
        if o.ndim != 2:
            raise AnalysisError(f"an attention map must be h x w, got shape {o.shape}")
        null.append(map_spearman(cam_at_grid(cam, o.shape), o))
    values = np.array([v for v in null if math.isfinite(v)], dtype=np.float64)
    nan = math.nan
    mean = float(values.mean()) if values.size else nan
    std = float(values.std()) if values.size else nan
    if values.size and math.isfinite(observed):
        below = float(np.sum(values < observed)) + 0.5 * float(np.sum(values == observed))
        percentile = 100.0 * below / values.size
        rank = 1 + int(np.sum(values > observed))
    else:
        percentile, rank = nan, 0
    return Agreement(block=block, grid=grid, spearman=observed, null=tuple(null),
                     null_mean=mean, null_std=std, percentile=percentile, rank=rank)


def analysis_agreement(result: Analysis, block: str, others: Sequence[Analysis] = ()
                       ) -> Agreement:
    """:func:`attention_agreement` at ``block`` from analyses that already hold the maps.

    ``result`` gives the Grad-CAM after the module and its own attention; each of ``others``
    (other images, the same model and lambda) gives its attention only, so their target class
    and CAM method do not matter. Raises :class:`~simam_viz.errors.AnalysisError` (one line)
    for a model without 3-D weights or a block not analysed.
    """
    cam = result.cam(block, WHERE)  # first: its error names a block that was not analysed
    _, mean = result.attention(block)
    return attention_agreement(cam, mean, [o.attention(block)[1] for o in others], block=block)
