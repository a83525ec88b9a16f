"""Metrics of DESIGN.md, defined once for validation, evaluate and benchmarks.

Core detection: per frame, Hungarian matching of predicted to true cores within
``radius`` (0.5 nm); precision, recall and F1 over all frames; RMSE of matched
pairs [nm]; half-plane direction accuracy (angle error < 45 deg) of matched pairs.
Rock-salt: IoU of masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

MATCH_RADIUS_NM = 0.5
H_ANGLE_TOL_DEG = 45.0


def match_cores(pred_xy: np.ndarray, true_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of two point sets within ``radius`` (same unit as the points).

    Returns
    -------
    pred_idx, true_idx : ndarray of int
        Indices of the matched pairs.
    """
    pred_xy = np.asarray(pred_xy, float).reshape(-1, 2)
    true_xy = np.asarray(true_xy, float).reshape(-1, 2)
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = cdist(pred_xy, true_xy)
    cost = np.where(d <= radius, d, 1e6)
    pi, ti = linear_sum_assignment(cost)
    ok = d[pi, ti] <= radius
    return pi[ok], ti[ok]


@dataclass
class DetectionTally:
    """Running counts for detection metrics over many frames."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    sq_err_nm2: float = 0.0
    h_ok: int = 0
    h_scored: int = 0  # matched cores whose true h is known (lab annotations may omit it)

    def add(self, pred_xy: np.ndarray, pred_h: np.ndarray, true_xy: np.ndarray,
            true_h: np.ndarray, *, pixel_size: float) -> None:
        """Add one frame; positions in px, h as direction vectors (any length)."""
        pi, ti = match_cores(pred_xy, true_xy, MATCH_RADIUS_NM / pixel_size)
        n_pred, n_true = len(np.reshape(pred_xy, (-1, 2))), len(np.reshape(true_xy, (-1, 2)))
        self.tp += len(pi)
        self.fp += n_pred - len(pi)
        self.fn += n_true - len(ti)
        if len(pi):
            diff = (np.reshape(pred_xy, (-1, 2))[pi] - np.reshape(true_xy, (-1, 2))[ti]) * pixel_size
            self.sq_err_nm2 += float((diff**2).sum())
            ph, th = np.reshape(pred_h, (-1, 2))[pi], np.reshape(true_h, (-1, 2))[ti]
            known = np.isfinite(th).all(axis=1)  # an unknown true h (NaN) is not scored
            # Directions: a vector of any length (a NaN or zero predicted one counts as wrong).
            with np.errstate(invalid="ignore", divide="ignore"):
                cosang = (ph * th).sum(axis=1) / (np.hypot(*ph.T) * np.hypot(*th.T))
            self.h_scored += int(known.sum())
            self.h_ok += int((known & (cosang > np.cos(np.radians(H_ANGLE_TOL_DEG)))).sum())

    def merge(self, other: DetectionTally) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.sq_err_nm2 += other.sq_err_nm2
        self.h_ok += other.h_ok
        self.h_scored += other.h_scored

    def summary(self) -> dict[str, float]:
        """precision, recall, f1, rmse_nm, h_accuracy (NaN where undefined)."""
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else np.nan
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else np.nan
        denom = 2 * self.tp + self.fp + self.fn
        f1 = 2 * self.tp / denom if denom else np.nan
        rmse = np.sqrt(self.sq_err_nm2 / self.tp) if self.tp else np.nan
        hacc = self.h_ok / self.h_scored if self.h_scored else np.nan
        return {"precision": p, "recall": r, "f1": f1, "rmse_nm": rmse, "h_accuracy": hacc,
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty, where
    DESIGN.md leaves it undefined: callers that report it skip such images)."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0
