"""Stage jumps: the whole field shifting at once between two frames, found from the cores.

Image registration follows drift a fraction of a lattice period per frame: a lattice
repeats, so a sudden shift of the stage by several periods (a bump, a refocus, the
holder settling) correlates as well at the wrong period as at the right one. Cores do
not repeat. When most cores of two consecutive frames, after the registered drift, are
displaced alike by more than a core can move in a frame, that common shift is the
stage's, and it is added to the drift from that frame on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

#: A jump moves at least this many cores alike ...
MIN_CORES = 3
#: ... and at least this share of the cores seen in both frames (the fewer of the two).
MIN_SHARE = 0.5
#: Cores agree on a common shift within this distance [nm]: detections of one core in
#: consecutive HRTEM frames scatter by up to 0.4–0.6 nm.
AGREE_NM = 0.6
#: Most cores shifting alike by more than this fraction of the farthest a core can move
#: in a frame is a jump: cores move independently, rarely near that limit, never together.
JUMP_REACH_FRACTION = 0.5
#: Candidate shifts are tried from at most this many cores of the earlier frame.
MAX_CANDIDATE_CORES = 40


def common_shift(before: np.ndarray, after: np.ndarray, *, reach_px: float, agree_px: float,
                 max_shift_px: float) -> tuple[np.ndarray, int] | None:
    """The shift that most cores of ``before`` share to ``after``, if a jump explains them.

    Parameters
    ----------
    before, after : ndarray, shape (n, 2) and (m, 2)
        Core positions ``(x, y)`` [px] in two consecutive frames, drift removed.
    reach_px : float
        How far a core can move in one frame [px]: shifts within `JUMP_REACH_FRACTION`
        of it are taken for the cores' own motion.
    agree_px : float
        Cores agree on a shift when their own shifts differ by less than this [px].
    max_shift_px : float
        Largest shift considered [px].

    Returns
    -------
    (ndarray, int) or None
        The median shift ``(dx, dy)`` [px] of the agreeing cores and their number, when at
        least `MIN_CORES` and `MIN_SHARE` of the cores agree on it, fewer stayed where
        they were, it explains more cores than any other shift, and it lies beyond
        `JUMP_REACH_FRACTION` of ``reach_px``; else None.

    Examples
    --------
    >>> before = np.array([[10.0, 10.0], [40.0, 12.0], [25.0, 60.0], [70.0, 70.0]])
    >>> shift, n = common_shift(before, before + (17.0, 9.0), reach_px=5, agree_px=3,
    ...                         max_shift_px=100)
    >>> shift.round(1).tolist(), n
    ([17.0, 9.0], 4)
    >>> common_shift(before, before + (1.0, 0.5), reach_px=5, agree_px=3, max_shift_px=100) is None
    True
    """
    n = min(len(before), len(after))
    if n < MIN_CORES:
        return None
    tree = cKDTree(after)
    need = max(MIN_CORES, MIN_SHARE * n)
    stayed, _ = tree.query(before, distance_upper_bound=agree_px)
    if np.isfinite(stayed).sum() >= need:  # most cores are where they were: no jump to find
        return None
    # Every shift from a core to a core is a candidate, small ones too: a jump must
    # explain more cores than the best shift that linking could follow anyway.
    diffs = (after[None, :, :] - before[:MAX_CANDIDATE_CORES, None, :]).reshape(-1, 2)
    diffs = np.vstack([np.zeros((1, 2)), diffs[np.hypot(*diffs.T) <= max_shift_px]])
    best, best_score = np.zeros(2), (-1, 0.0)
    for shift in diffs:
        dist, j = tree.query(before + shift, distance_upper_bound=agree_px)
        hit = np.isfinite(dist)
        agreeing = min(int(hit.sum()), len(np.unique(j[hit])))  # each core of `after` once
        # Ties (e.g. a dipole's two cores, close together) go to the tighter fit.
        score = (agreeing, -float(dist[hit].sum()))
        if score > best_score:
            best, best_score = shift, score
    # The median shift of the cores that agree with it, refined once more on those.
    for _ in range(2):
        dist, j = tree.query(before + best, distance_upper_bound=agree_px)
        hit = np.isfinite(dist)
        if hit.any():
            best = np.median(after[j[hit]] - before[hit], axis=0)
    best_n = best_score[0]
    if np.hypot(*best) <= JUMP_REACH_FRACTION * reach_px or best_n < need:
        return None
    return best, best_n


def stage_jumps(detections: pd.DataFrame, drift: pd.DataFrame, *, pixel_size_nm: float,
                reach_px: float, image_shape: tuple[int, int]) -> pd.DataFrame:
    """Jumps of the whole field between consecutive frames that the drift misses.

    Parameters
    ----------
    detections : DataFrame
        ``frame``, ``x``, ``y`` [px] of the cores (those that will be tracked).
    drift : DataFrame
        ``frame``, ``dx``, ``dy`` [px] as measured on the images (`measure_drift`).
    pixel_size_nm : float
        [nm/px].
    reach_px : float
        How far a core can move in one frame [px] (the linking search range).
    image_shape : (int, int)
        Frame size (H, W) [px]: shifts up to half the smaller side are considered.

    Returns
    -------
    DataFrame
        One row per jump: ``frame`` (the first frame after it), ``dx``, ``dy`` [px] (the
        content moves by ``+(dx, dy)``, as for drift) and ``n_cores`` (cores that agree).
    """
    jumps = []
    extra = np.zeros(2)  # jumps found so far, added to the drift of later frames
    shift_of = drift.set_index("frame")[["dx", "dy"]]
    by_frame = {f: g[["x", "y"]].to_numpy(float) for f, g in detections.groupby("frame")}
    agree_px, max_shift_px = AGREE_NM / pixel_size_nm, 0.5 * min(image_shape)
    for f in sorted(by_frame):
        if f - 1 not in by_frame or f not in shift_of.index or f - 1 not in shift_of.index:
            continue
        before = by_frame[f - 1] - shift_of.loc[f - 1].to_numpy() - extra
        after = by_frame[f] - shift_of.loc[f].to_numpy() - extra
        found = common_shift(before, after, reach_px=reach_px, agree_px=agree_px,
                             max_shift_px=max_shift_px)
        if found is not None:
            (dx, dy), n = found
            jumps.append((int(f), float(dx), float(dy), n))
            extra = extra + (dx, dy)
    return pd.DataFrame(jumps, columns=["frame", "dx", "dy", "n_cores"])


def with_jumps(drift: pd.DataFrame, jumps: pd.DataFrame) -> pd.DataFrame:
    """``drift`` with each jump added from its frame on.

    >>> drift = pd.DataFrame({"frame": range(4), "dx": 0.5, "dy": 0.0})
    >>> jumps = pd.DataFrame({"frame": [2], "dx": [10.0], "dy": [-4.0], "n_cores": [5]})
    >>> with_jumps(drift, jumps)[["dx", "dy"]].to_numpy().tolist()
    [[0.5, 0.0], [0.5, 0.0], [10.5, -4.0], [10.5, -4.0]]
    """
    out = drift.copy()
    for j in jumps.itertuples():
        later = out.frame >= j.frame
        out.loc[later, "dx"] += j.dx
        out.loc[later, "dy"] += j.dy
    out.attrs = dict(drift.attrs)
    return out
