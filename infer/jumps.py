"""Stage jumps: the whole field shifting at once between two frames, found from the cores.

Image registration follows drift a fraction of a lattice period per frame: a lattice
repeats, so a sudden shift of the stage by several periods (a bump, a refocus, the
holder settling) correlates as well at the wrong period as at the right one. Cores do
not repeat. When most cores of two frames, after the registered drift, are displaced
alike by more than cores move on their own, that common shift is the stage's, and it is
added to the drift from that frame on.

Cores that move together (a wall of them gliding) are told from a jump in two ways: a
jump moves nearly all cores (`MIN_SHARE`), and it happens once, whereas such motion
goes on, so the same shift found between the next two frames as well is not a jump.
Cores that repeat at the shift within each frame (a periodic row: a grain boundary, a
misfit array) cannot show a jump by that shift: another run of them detected looks alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

#: A jump moves at least this many cores alike ...
MIN_CORES = 3
#: ... and at least this share of the cores seen in both frames (the fewer of the two).
MIN_SHARE = 2 / 3
#: Cores agree on a common shift within this distance [nm]: detections of one core in
#: consecutive HRTEM frames scatter by up to 0.4–0.6 nm.
AGREE_NM = 0.6
#: Most cores shifting alike by more than this fraction of the farthest a core can move
#: in a frame is a jump: cores move independently, rarely near that limit.
JUMP_REACH_FRACTION = 0.5
#: Candidate shifts are tried from at most this many cores of the earlier frame, those
#: nearest its centre (the last to leave the field in a jump), each to at most
#: `MAX_CANDIDATE_TARGETS` cores of the later one; the support of a shift is counted over
#: at most `MAX_SUPPORT_CORES` central cores. These bound the cost in crowded frames
#: (e.g. a low threshold's flickering false cores) to about 0.2 s per frame.
MAX_CANDIDATE_CORES = 40
MAX_CANDIDATE_TARGETS = 50
MAX_SUPPORT_CORES = 200


def common_shift(before: np.ndarray, after: np.ndarray, *, reach_px: float, agree_px: float,
                 max_shift_px: float) -> tuple[np.ndarray, int] | None:
    """The shift that most cores of ``before`` share to ``after``, if a jump explains them.

    Parameters
    ----------
    before, after : ndarray, shape (n, 2) and (m, 2)
        Core positions ``(x, y)`` [px] in two frames, drift removed.
    reach_px : float
        How far a core can move between the two frames [px]: shifts within
        `JUMP_REACH_FRACTION` of it, or within ``agree_px``, are taken for the cores' own
        motion.
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
        `JUMP_REACH_FRACTION` of ``reach_px`` and beyond ``agree_px``; else None.

    Examples
    --------
    >>> before = np.array([[10.0, 10.0], [40.0, 12.0], [25.0, 60.0], [70.0, 70.0]])
    >>> shift, n = common_shift(before, before + (17.0, 9.0), reach_px=20, agree_px=3,
    ...                         max_shift_px=100)
    >>> shift.round(1).tolist(), n
    ([17.0, 9.0], 4)
    >>> common_shift(before, before + (1.0, 0.5), reach_px=20, agree_px=3, max_shift_px=100) is None
    True
    """
    central = np.argsort(np.hypot(*(before - np.median(before, axis=0)).T))
    before = before[central[:MAX_SUPPORT_CORES]]  # nearest the centre first
    n = min(len(before), len(after))
    if n < MIN_CORES:
        return None
    tree = cKDTree(after)
    need = max(MIN_CORES, MIN_SHARE * n)
    stayed, _ = tree.query(before, distance_upper_bound=agree_px)
    if np.isfinite(stayed).sum() >= need:  # most cores are where they were: no jump to find
        return None
    # Every shift from a core to a core is a candidate, small ones too: a jump must
    # explain more cores than the best shift that the cores' own motion could be.
    k = min(MAX_CANDIDATE_TARGETS, len(after))
    _, targets = tree.query(before[:MAX_CANDIDATE_CORES], k=k, distance_upper_bound=max_shift_px)
    targets = np.asarray(targets).reshape(len(before[:MAX_CANDIDATE_CORES]), k)
    pairs = np.nonzero(targets < len(after))  # beyond max_shift_px: index len(after)
    diffs = after[targets[pairs]] - before[:MAX_CANDIDATE_CORES][pairs[0]]
    diffs = np.vstack([np.zeros((1, 2)), diffs])
    best, best_score = np.zeros(2), (-1, 0.0)
    for shift in diffs:
        agreeing, spread = _support(tree, before, shift, agree_px)
        if (agreeing, -spread) > best_score:  # ties (a dipole's close cores): the tighter fit
            best, best_score = shift, (agreeing, -spread)
    for _ in range(2):  # the median shift of the cores that agree, refined once more
        dist, j = tree.query(before + best, distance_upper_bound=agree_px)
        hit = np.isfinite(dist)
        if hit.any():
            best = np.median(after[j[hit]] - before[hit], axis=0)
    agreeing, _ = _support(tree, before, best, agree_px)  # counted at the refined shift
    # A shift within the detections' own scatter (``agree_px``) is no jump, however small
    # the reach (a user's low speed limit): it had made false jumps of 0.45 nm.
    if np.hypot(*best) <= max(JUMP_REACH_FRACTION * reach_px, agree_px) or agreeing < need:
        return None
    # Cores that repeat at that shift within their own frame (a row of them along a grain
    # boundary or interface, one period apart) cannot tell a jump from a different run of
    # them being detected: only cores without that repeat confirm it, at least MIN_CORES.
    landed, _ = tree.query(before + best, distance_upper_bound=agree_px)
    repeated, _ = cKDTree(before).query(before + best, distance_upper_bound=agree_px)
    if int((np.isfinite(landed) & ~np.isfinite(repeated)).sum()) < MIN_CORES:
        return None
    return best, agreeing


def _support(tree: cKDTree, before: np.ndarray, shift: np.ndarray, agree_px: float) -> tuple[int, float]:
    """Cores of ``before`` that ``shift`` puts within ``agree_px`` of a core of the tree
    (each of those counted once), and their summed distance [px]."""
    dist, j = tree.query(before + shift, distance_upper_bound=agree_px)
    hit = np.isfinite(dist)
    return min(int(hit.sum()), len(np.unique(j[hit]))), float(dist[hit].sum())


def stage_jumps(detections: pd.DataFrame, drift: pd.DataFrame, *, pixel_size_nm: float,
                reach_px: float, image_shape: tuple[int, int]) -> pd.DataFrame:
    """Jumps of the whole field between frames that the drift misses.

    Each frame is compared with the last earlier frame holding at least `MIN_CORES`
    cores (a jump often comes with blanked or empty frames), with the reach scaled by
    the frames between them. A shift found between two frames and again between the
    next two (within ``AGREE_NM``) is cores moving together, not a jump.

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
        content moves by ``+(dx, dy)``, as for drift) and ``n_cores`` (cores that agree,
        counted among at most `MAX_SUPPORT_CORES`).
    """
    shift_of = drift.set_index("frame")[["dx", "dy"]]
    by_frame = {f: g[["x", "y"]].to_numpy(float) - shift_of.loc[f].to_numpy()
                for f, g in detections.groupby("frame") if len(g) >= MIN_CORES and f in shift_of.index}
    agree_px, max_shift_px = AGREE_NM / pixel_size_nm, 0.5 * min(image_shape)
    frames = sorted(by_frame)
    # A jump between two frames does not change how the frames after it compare with each
    # other, so each pair is judged on the registered drift alone.
    found: list[tuple[int, np.ndarray, int] | None] = [None]
    for prev, f in zip(frames, frames[1:], strict=False):
        shift = common_shift(by_frame[prev], by_frame[f], reach_px=reach_px * (f - prev),
                             agree_px=agree_px, max_shift_px=max_shift_px)
        found.append(None if shift is None else (int(f), *shift))
    jumps = []
    for k, here in enumerate(found):
        if here is None:
            continue
        again = [o for o in (found[k - 1] if k else None, found[k + 1] if k + 1 < len(found) else None)
                 if o is not None and np.hypot(*(o[1] - here[1])) < agree_px]
        if not again:  # the same shift twice running: cores moving together
            jumps.append((here[0], float(here[1][0]), float(here[1][1]), here[2]))
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
