"""Localization metrics on hand-built maps with values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from simam_viz.studies.localization import energy_in_mask, iou_at, mask_from_boxes, pointing_game


def test_hand_built_values() -> None:
    mask = mask_from_boxes((4, 4), [[0, 0, 2, 2]])  # top-left 2x2 = 4 pixels
    assert mask.sum() == 4 and mask[1, 1] and not mask[2, 2]
    cam = np.zeros((4, 4))
    cam[0, 0], cam[3, 3] = 1.0, 0.5  # mass 1.5, of which 1.0 inside
    assert pointing_game(cam, mask)
    assert energy_in_mask(cam, mask) == pytest.approx(1.0 / 1.5)
    # hot pixels (>= 0.5): (0,0) and (3,3); intersection 1, union 4 + 1 = 5
    assert iou_at(cam, mask) == pytest.approx(1 / 5)
    cam[3, 3] = 2.0
    assert not pointing_game(cam, mask)
    assert energy_in_mask(cam, mask) == pytest.approx(1.0 / 3.0)
    assert energy_in_mask(np.zeros((4, 4)), mask) == 0.0
    assert iou_at(np.zeros((4, 4)), np.zeros((4, 4), bool)) == 1.0
    perfect = mask.astype(float)
    assert iou_at(perfect, mask) == 1.0 and energy_in_mask(perfect, mask) == 1.0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="same HxW"):
        pointing_game(np.zeros((3, 3)), np.zeros((4, 4), bool))
