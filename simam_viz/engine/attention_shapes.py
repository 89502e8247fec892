"""How 3-D an attention module's weights are: a two-way decomposition of their variance.

SE and ECA can only weigh channels and CBAM's product can only weigh channels times positions;
SimAM's weights may vary along both at once. On one image the question "how much of SimAM's
freedom does it use?" has a one-line answer: split the total sum of squares of the (C, H, W)
weights about their grand mean into the part the channel means explain, the part the position
means explain and the rest (two-way ANOVA without replication). A tensor that is constant over
positions is all ``channel``; one constant over channels is all ``spatial``; the
``interaction`` share is what neither a channel nor a spatial gate could have produced by
adding, and a product (CBAM) leaves only a little of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["SHARES", "ShapeSummary", "as_full", "shape_summary", "weight_variance"]

SHARES = ("channel", "spatial", "interaction")
"""The keys of :func:`weight_variance`, in the order they stack."""


def as_full(weights: np.ndarray | Mapping[str, np.ndarray],
            spatial_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The (C, H, W) weights a module applies, from an array or an attention-weights dict.

    A dict (``Analysis.attention_weights``) gives ``full`` when it has one, else the product
    of ``channel`` (C,) and ``spatial`` (H, W) the module multiplies in (CBAM); a channel
    vector alone is broadcast over ``spatial_shape`` (1 x 1 when not given), a spatial map
    alone over one channel. A (C,) or (H, W) array is read the same way.
    """
    if isinstance(weights, Mapping):
        if "full" in weights:
            return _finite(weights["full"], 3)
        channel, spatial = weights.get("channel"), weights.get("spatial")
        if channel is None and spatial is None:
            raise ValueError("no attention weights: the model has no attention module")
        if channel is None:
            spatial = _finite(spatial, 2)
            return spatial[None]
        channel = _finite(channel, 1)
        if spatial is None:
            h, w = spatial_shape or (1, 1)
            return np.broadcast_to(channel[:, None, None], (channel.size, h, w))
        return channel[:, None, None] * _finite(spatial, 2)[None]
    array = np.asarray(weights)
    if array.ndim == 1:
        return as_full({"channel": array}, spatial_shape)
    if array.ndim == 2:
        return as_full({"spatial": array})
    return _finite(array, 3)


def _finite(values: np.ndarray, ndim: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D array of weights, got shape {array.shape}")
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError("weights must be a non-empty array of finite numbers")
    return array


def weight_variance(weights: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, float]:
    """Shares of the weights' total sum of squares that channels, positions and the rest explain.

    ``weights`` is a (C, H, W) array or an ``Analysis.attention_weights`` dict (see
    :func:`as_full`). With grand mean m, channel means c_i, position means p_hw::

        SS_total       = sum (w - m)^2
        SS_channel     = H W sum_i (c_i - m)^2
        SS_spatial     = C sum_hw (p_hw - m)^2
        SS_interaction = SS_total - SS_channel - SS_spatial

    and each share is its SS over SS_total, so the three sum to 1. Weights that are all equal
    have no variance to share out: every share is NaN (JSON null), and ``total`` says 0.
    ``total`` is SS_total / (C H W), the weights' variance, to read the shares beside.
    """
    w = as_full(weights)
    mean = float(w.mean())
    total = float(np.square(w - mean).sum())
    c, h, wd = w.shape
    channel = float(h * wd * np.square(w.mean(axis=(1, 2)) - mean).sum())
    spatial = float(c * np.square(w.mean(axis=0) - mean).sum())
    # sums of squares below float64 rounding of the total are exactly zero in real numbers
    if total <= 1e-12 * max(1.0, float(np.square(w).sum())):
        nan = float("nan")
        return {"channel": nan, "spatial": nan, "interaction": nan, "total": 0.0}
    interaction = max(total - channel - spatial, 0.0)
    scale = channel + spatial + interaction
    return {"channel": channel / scale, "spatial": spatial / scale,
            "interaction": interaction / scale, "total": total / w.size}


@dataclass(frozen=True)
class ShapeSummary:
    """What the Attention shapes view and its exports show of one module's weights at one block.

    Every array is in the module's own units (sigmoid weights in (0, 1)), so models compare on
    one scale. ``channel`` is the module's channel gate, or for 3-D weights their mean over
    positions, with ``channel_spread`` their standard deviation over positions (how far a
    channel's neurons are from sharing one weight, which is all SE can give them).
    ``spatial`` is a spatial gate's map (CBAM); ``applied_map`` is the channel mean of the
    weights the module actually multiplies in (3-D weights, or CBAM's channel x spatial
    product), present when they vary over positions. ``low``/``high`` bound the applied
    weights and ``variance`` is :func:`weight_variance`.
    """

    shapes: tuple[str, ...]
    channel: np.ndarray | None
    channel_spread: np.ndarray | None
    spatial: np.ndarray | None
    applied_map: np.ndarray | None
    low: float
    high: float
    variance: dict[str, float]

    def profile(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The channel weights strongest first, for drawing models with different channel
        counts on one axis: (channel order, rank as a fraction in (0, 1), weights, spread or
        None), ties in channel order. Raises ValueError without channel weights."""
        if self.channel is None:
            raise ValueError("these weights have no channel weights")
        order = np.argsort(-self.channel, kind="stable")
        rank = (np.arange(order.size) + 0.5) / order.size
        spread = None if self.channel_spread is None else self.channel_spread[order]
        return order, rank, self.channel[order], spread

    def report(self) -> dict[str, object]:
        """Numbers a reader may cite (the arrays stay in the npz export)."""
        return {
            "shapes": list(self.shapes),
            "channels": None if self.channel is None else int(self.channel.size),
            "positions": None if self.applied_map is None else list(self.applied_map.shape),
            "weight_range": [self.low, self.high],
            "channel_weight_mean": None if self.channel is None else float(self.channel.mean()),
            "mean_channel_spread": (None if self.channel_spread is None
                                    else float(self.channel_spread.mean())),
            "variance_shares": dict(self.variance),
        }


def shape_summary(weights: Mapping[str, np.ndarray]) -> ShapeSummary:
    """Summarise an ``Analysis.attention_weights`` dict for the Attention shapes view."""
    full = as_full(weights)
    native = tuple(s for s in ("channel", "spatial", "full") if s in weights)
    has_full = "full" in weights
    if "channel" in weights:
        channel = np.asarray(weights["channel"], np.float64)
    elif has_full:
        channel = full.mean(axis=(1, 2))
    else:
        channel = None
    varies_over_positions = has_full or "spatial" in weights
    return ShapeSummary(
        shapes=native,
        channel=channel,
        channel_spread=full.std(axis=(1, 2)) if has_full else None,
        spatial=np.asarray(weights["spatial"], np.float64) if "spatial" in weights else None,
        applied_map=full.mean(axis=0) if varies_over_positions else None,
        low=float(full.min()),
        high=float(full.max()),
        variance=weight_variance(full),
    )
