"""Localization metrics of a saliency map against a ground-truth object mask (pure numpy).

- pointing game: is the map's maximum inside the object (Zhang et al., 2016)?
- energy in mask: the share of the map's total mass that falls on the object;
- IoU at a threshold: the map thresholded at 0.5 (of its [0, 1] range) versus the mask.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["energy_in_mask", "iou_at", "mask_from_boxes", "pointing_game"]


def _check(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam, mask = np.asarray(cam, dtype=np.float64), np.asarray(mask, dtype=bool)
    if cam.shape != mask.shape or cam.ndim != 2:
        raise ValueError(f"cam {cam.shape} and mask {mask.shape} must be the same HxW shape")
    return cam, mask


def pointing_game(cam: np.ndarray, mask: np.ndarray) -> bool:
    """True when the (first) maximum of ``cam`` lies inside ``mask``."""
    cam, mask = _check(cam, mask)
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(mask[y, x])


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) map mass inside the mask; 0 for an all-zero map."""
    cam, mask = _check(cam, mask)
    cam = np.clip(cam, 0, None)
    total = cam.sum()
    return float(cam[mask].sum() / total) if total > 0 else 0.0


def iou_at(cam: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``cam >= threshold`` with the mask (1.0 when both are empty)."""
    cam, mask = _check(cam, mask)
    hot = cam >= threshold
    union = np.logical_or(hot, mask).sum()
    return float(np.logical_and(hot, mask).sum() / union) if union else 1.0


def mask_from_boxes(shape: tuple[int, int], boxes: Iterable[Iterable[float]]) -> np.ndarray:
    """A boolean mask from ``[x0, y0, x1, y1]`` boxes (pixel coordinates, end exclusive)."""
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask
