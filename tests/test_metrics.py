"""The detection metrics exactly as DESIGN.md defines them (models/metrics.py): Hungarian
matching within 0.5 nm, RMSE of matched pairs, h correct within 45 degrees, mask IoU."""

from __future__ import annotations

import numpy as np
import pytest

from dislotrack.models.metrics import DetectionTally, mask_iou, match_cores

PX = 0.1  # nm per px: the 0.5 nm radius is 5 px


def _tally(pred_x, true_x, pred_h=None, true_h=None) -> dict:
    pred = np.c_[pred_x, np.full(len(pred_x), 10.0)]
    true = np.c_[true_x, np.full(len(true_x), 10.0)]
    up = np.tile([0.0, -1.0], (len(pred_x), 1))
    tally = DetectionTally()
    tally.add(pred, up if pred_h is None else pred_h, true,
              np.tile([0.0, -1.0], (len(true_x), 1)) if true_h is None else true_h, pixel_size=PX)
    return tally.summary()


@pytest.mark.parametrize("offset_px, matched", [(4.9, True), (5.1, False)])
def test_a_core_matches_within_half_a_nanometre(offset_px, matched):
    s = _tally([10.0 + offset_px], [10.0])
    assert (s["tp"], s["fp"], s["fn"]) == ((1, 0, 0) if matched else (0, 1, 1))


def test_matching_is_hungarian_not_nearest_first():
    # Nearest first pairs 12.5 with 10 (2.5 px) and leaves 5.2 and 16 apart (10.8 px);
    # the optimal assignment matches both: 12.5-16 (3.5 px) and 5.2-10 (4.8 px).
    pi, ti = match_cores([[12.5, 10], [5.2, 10]], [[10, 10], [16, 10]], radius=5.0)
    assert sorted(zip(pi.tolist(), ti.tolist(), strict=True)) == [(0, 1), (1, 0)]
    s = _tally([12.5, 5.2], [10.0, 16.0])
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    assert s["precision"] == s["recall"] == s["f1"] == 1.0


def test_rmse_is_over_the_matched_pairs_in_nm():
    s = _tally([13.0, 10.0, 40.0], [10.0, 14.0])  # 40 is a false core
    # The optimal assignment pairs 13-14 (1 px) and 10-10 (0 px).
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 0)
    assert s["rmse_nm"] == pytest.approx(np.sqrt((0.1**2 + 0.0**2) / 2))
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1))


@pytest.mark.parametrize("angle_deg, correct", [(44.0, True), (46.0, False), (180.0, False)])
def test_h_is_correct_within_45_degrees(angle_deg, correct):
    a = np.radians(angle_deg)
    h = np.array([[np.sin(a), -np.cos(a)]])  # turned from (0, -1) by angle_deg
    s = _tally([10.0], [10.0], pred_h=h)
    assert s["h_accuracy"] == (1.0 if correct else 0.0)


def test_mask_iou_is_intersection_over_union():
    pred, true = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    pred[0:10, 0:10] = True
    true[0:10, 5:15] = True
    assert mask_iou(pred, true) == pytest.approx(50 / 150)  # Dice would give 0.5
    assert mask_iou(pred, pred) == 1.0
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # both empty: nothing missed


def test_an_unknown_true_h_is_not_scored():
    # A lab annotating positions only (h NaN): matched, counted in F1 and RMSE, not in h.
    true_h = np.array([[0.0, -1.0], [np.nan, np.nan]])
    pred_h = np.array([[0.0, -1.0], [1.0, 0.0]])
    s = _tally([10.0, 30.0], [10.0, 30.0], pred_h=pred_h, true_h=true_h)
    assert (s["tp"], s["h_accuracy"]) == (2, 1.0)
    s = _tally([30.0], [30.0], pred_h=pred_h[1:], true_h=true_h[1:])
    assert s["tp"] == 1 and np.isnan(s["h_accuracy"])  # undefined, not 0 or 1
