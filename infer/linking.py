"""Link per-frame dislocation cores into tracks with trackpy.

Cores are linked in a four-dimensional space: the drift-corrected position
``(y, x)`` [px] and the half-plane direction ``(hy, hx)`` (unit vector), with an
anisotropic trackpy search range ``(r, r, r_h, r_h)``. trackpy rescales each axis
by its range, so a link is allowed only if

    (|dp| / r)**2 + (|dh| / r_h)**2 <= 1,

where ``r`` is the largest plausible displacement per frame and
``r_h = 2 sin(max_h_change_deg / 2)`` is the chord between two unit vectors
``max_h_change_deg`` apart. Cores of opposite **h** (``|dh| = 2``) are therefore
never linked, whatever their distance: an annihilated core is never spliced onto a
newborn core of the other sign. The price is that a core which moves the full
``r`` must keep its **h** exactly; at the default `MAX_H_CHANGE_DEG` a 20 deg change
of **h** shrinks the allowed step to 0.89 ``r``.

References
----------
Crocker, J. C. & Grier, D. G. J. Colloid Interface Sci. 179, 298 (1996), as
implemented by trackpy (Allan et al., doi:10.5281/zenodo.1226458).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import trackpy

from dislotrack.data_gen.conventions import nm_to_px, unit
from dislotrack.infer.drift import position_columns
from dislotrack.infer.interface import option

logger = logging.getLogger(__name__)

#: Default largest plausible core speed [nm/s] (``max_speed_nm_s``, ``--max-speed``).
DEFAULT_MAX_SPEED_NM_S = 2.0

#: Frame interval [s] assumed for the speed limit where the movie's is unknown (the usual
#: in-situ rate): ``max_speed_nm_s`` then limits the step per frame to its value in nm.
ASSUMED_FRAME_INTERVAL_S = 1.0

#: Largest core displacement per frame [nm] by default when the frame interval is
#: unknown: the default speed at `ASSUMED_FRAME_INTERVAL_S`.
DEFAULT_MAX_STEP_NM = DEFAULT_MAX_SPEED_NM_S * ASSUMED_FRAME_INTERVAL_S

#: Smallest search range [nm]. A still core's detections scatter by up to 0.22 nm RMS
#: (the network's localisation error), so frame-to-frame steps reach 0.5-0.7 nm from the
#: scatter alone (3.5 sigma of the step at 0.75 nm); a lower speed limit (e.g. 2 nm/s at
#: 25 frames/s, 0.08 nm) would cut every track into stubs.
MIN_SEARCH_RANGE_NM = 0.75

#: Smallest search range [px], for pixels coarser than `MIN_SEARCH_RANGE_NM`.
MIN_SEARCH_RANGE_PX = 1.0

#: Largest change of **h** between linked detections [deg]. The network's **h** scatters
#: by 4 deg (median; 12 deg at the 99th percentile) on the tracking benchmark's movies, so
#: 45 deg keeps a core's track whole; 90 deg also let an unresolved dipole blob's odd **h**
#: start a track a frame early, off its core (measured: one event lost on one benchmark set
#: and one identity switch on another). A reading is compared with its track's mean h
#: (`TrackVelocityPredict`), and tracks that took turns at one core are joined
#: (`merge_interleaved`): a scatter of 20 deg SD keeps a core's track whole.
MAX_H_CHANGE_DEG = 45.0

_LINK_COLUMNS = ["_link_y", "_link_x", "_link_hy", "_link_hx"]


def require_columns(table: object, columns: Iterable[str], *, name: str) -> None:
    """Refuse an argument that is not a DataFrame with ``columns``.

    Parameters
    ----------
    table : object
        The argument to check.
    columns : iterable of str
        Column names it must have.
    name : str
        The argument's name, for the message.

    Raises
    ------
    TypeError
        If ``table`` is not a `pandas.DataFrame`.
    ValueError
        Naming the missing columns (and those present).
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        have = ", ".join(map(str, table.columns)) or "none"
        raise ValueError(f"{name} lacks column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} (it has: {have})")


def search_range_px(
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None = None,
    max_speed_nm_s: float = DEFAULT_MAX_SPEED_NM_S,
    max_step_nm: float | None = None,
) -> float:
    """Largest plausible core displacement between consecutive frames [px].

    Parameters
    ----------
    pixel_size_nm : float
        Pixel size [nm/px].
    frame_interval_s : float or None
        Time between frames [s]; ``None`` if unknown.
    max_speed_nm_s : float
        Largest plausible core speed [nm/s]; at `ASSUMED_FRAME_INTERVAL_S` when the
        frame interval is unknown.
    max_step_nm : float or None
        Largest displacement per frame [nm]. Overrides the speed.

    Returns
    -------
    float
        The range [px], at least `MIN_SEARCH_RANGE_NM` and `MIN_SEARCH_RANGE_PX`.

    Examples
    --------
    >>> search_range_px(pixel_size_nm=0.1, frame_interval_s=1.0, max_speed_nm_s=1.5)
    15.0
    >>> search_range_px(pixel_size_nm=0.1, frame_interval_s=0.04, max_speed_nm_s=2.0)  # the floor
    7.5
    """
    if pixel_size_nm <= 0:
        raise ValueError(f"pixel_size_nm must be positive [nm/px], got {pixel_size_nm}")
    if max_step_nm is None:
        if frame_interval_s is None:
            if max_speed_nm_s <= 0:  # said alone: the caller gave no interval
                raise ValueError(f"max_speed_nm_s [nm/s] must be positive, got {max_speed_nm_s}")
            frame_interval_s = ASSUMED_FRAME_INTERVAL_S
        if frame_interval_s <= 0 or max_speed_nm_s <= 0:
            raise ValueError(
                f"frame_interval_s [s] and max_speed_nm_s [nm/s] must be positive, got "
                f"{frame_interval_s} and {max_speed_nm_s}"
            )
        max_step_nm = max_speed_nm_s * frame_interval_s
    floor_nm = max(max_step_nm, MIN_SEARCH_RANGE_NM)
    return max(float(nm_to_px(floor_nm, pixel_size_nm)), MIN_SEARCH_RANGE_PX)


def link_cores(
    detections: pd.DataFrame,
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None = None,
    max_speed_nm_s: float = DEFAULT_MAX_SPEED_NM_S,
    max_step_nm: float | None = None,
    memory: int = 2,
    min_length: int = 3,
    max_h_change_deg: float = MAX_H_CHANGE_DEG,
    max_gap: int = 12,
    min_mean_score: float = 0.0,
    repair: bool = True,
    predict: bool = True,
    frame_times_s: np.ndarray | None = None,
) -> pd.DataFrame:
    """Link detected cores into tracks; cores of opposite **h** are never linked.

    trackpy links frame to frame (allowing ``memory`` missed frames), searching
    where each track's velocity predicts the core (``predict``); `close_gaps` then
    joins track fragments that a longer gap split, where a core moving at its fitted
    velocity would reappear, `absorb_flipped_runs` gives a track back the
    detections whose **h** flipped for a few frames, and `merge_interleaved` joins
    tracks that took turns at one core.

    Parameters
    ----------
    detections : DataFrame
        One row per core: ``frame``, ``x``, ``y`` [px], ``hx``, ``hy``. If
        ``x_corr`` and ``y_corr`` (drift-corrected [px], see
        `dislotrack.infer.drift.apply_drift`) are present they are linked instead
        of ``x`` and ``y``.
    pixel_size_nm : float
        Pixel size [nm/px].
    frame_interval_s, max_speed_nm_s, max_step_nm
        Set the search range, see `search_range_px` (``max_speed_nm_s`` times the
        interval, or times `ASSUMED_FRAME_INTERVAL_S` when the interval is unknown).
    memory : int
        Number of frames a core may go undetected and still keep its track.
    min_length : int
        Tracks with fewer detections are dropped (after gap closing).
    max_h_change_deg : float
        Largest change of **h** between linked detections [deg], in (0, 180).
    max_gap : int
        Longest gap [frames] `close_gaps` bridges, and longest run of flipped **h**
        `absorb_flipped_runs` gives back; 0 disables both.
    min_mean_score : float
        Tracks whose detections' mean ``score`` is lower are dropped (0 keeps all).
    repair : bool
        Undo identity swaps of crossing cores (`repair_crossings`).
    predict : bool
        Search for each core where its track, moving on at its fitted velocity,
        would be (`TrackVelocityPredict`); otherwise where it was last seen.
    frame_times_s : ndarray, optional
        The acquisition clock [s] of every frame (uneven steps): `close_gaps` moves
        cores on by the time elapsed, so a track broken at a long step is joined again.

    Returns
    -------
    DataFrame
        The kept detections with an added integer ``particle`` column (0, 1, ...
        in order of first appearance), sorted by particle and frame, new index.
    """
    pos = position_columns(detections) if isinstance(detections, pd.DataFrame) else []
    require_columns(detections, ["frame", *pos, "hx", "hy"], name="detections")
    if min_mean_score > 0:
        require_columns(detections, ["score"], name="detections (with min_mean_score)")
    if not 0 < max_h_change_deg < 180:
        raise ValueError(f"max_h_change_deg must be in (0, 180) [deg], got {max_h_change_deg}")
    if memory < 0 or min_length < 1:
        raise ValueError(f"need memory >= 0 and min_length >= 1, got {memory} and {min_length}")
    reach = search_range_px(
        pixel_size_nm=pixel_size_nm,
        frame_interval_s=frame_interval_s,
        max_speed_nm_s=max_speed_nm_s,
        max_step_nm=max_step_nm,
    )
    h_reach = 2 * np.sin(np.deg2rad(max_h_change_deg) / 2)
    if detections.empty:
        return detections.assign(particle=pd.Series(dtype=int)).reset_index(drop=True)
    # Row-major order within each frame: track ids then do not depend on the input's row order.
    table = _linking_space(detections).sort_values(["frame", *_LINK_COLUMNS[:2]], kind="stable")
    sr = (reach, reach, h_reach, h_reach)

    def link(**adaptive: Any) -> pd.DataFrame:
        with _quiet_trackpy():
            if predict:
                # Every frame number, empty ones included: trackpy's memory counts frames fed.
                by_frame = dict(list(table.groupby("frame")))
                frames = (by_frame.get(f, table.iloc[:0])
                          for f in range(int(table["frame"].min()), int(table["frame"].max()) + 1))
                return pd.concat(list(TrackVelocityPredict().wrap(
                    trackpy.link_df_iter, frames, sr, pos_columns=_LINK_COLUMNS, memory=memory,
                    **adaptive)))
            return trackpy.link(table, sr, pos_columns=_LINK_COLUMNS, memory=memory, **adaptive)

    try:
        linked = link()
    except trackpy.linking.utils.SubnetOversizeException:
        # Crowded frames (many cores, or a low threshold): subnetworks too large to solve
        # exactly. trackpy then narrows the search range where they arise, down to a tenth.
        logger.warning("cores too crowded to link within %.3g nm in some frames: the search "
                       "range was narrowed there (down to %.3g nm); check for false cores "
                       "(%s)", reach * pixel_size_nm, 0.1 * reach * pixel_size_nm, option("threshold"))
        linked = link(adaptive_stop=0.1 * np.array(sr), adaptive_step=0.9)
    kept = linked.reset_index(drop=True).drop(columns=_LINK_COLUMNS)
    if max_gap > 0:
        # Single detections are mostly false positives: never bridge from or to them.
        kept = _drop_short(kept, min(2, min_length))
        kept = close_gaps(kept, pixel_size_nm=pixel_size_nm, max_gap=max_gap,
                          max_h_change_deg=max_h_change_deg, frame_times_s=frame_times_s)
        kept = absorb_flipped_runs(kept, pixel_size_nm=pixel_size_nm, max_frames=max_gap,
                                   max_h_change_deg=max_h_change_deg)
        kept = merge_interleaved(kept, pixel_size_nm=pixel_size_nm, max_h_change_deg=max_h_change_deg)
    kept = _drop_short(kept, min_length)
    if repair:  # a swap may shorten a track below min_length: drop short ones again
        kept = _drop_short(repair_crossings(kept, pixel_size_nm=pixel_size_nm,
                                            max_h_change_deg=max_h_change_deg), min_length)
    if min_mean_score > 0:
        kept = kept[kept.groupby("particle")["score"].transform("mean") >= min_mean_score]
    kept = kept.sort_values(["frame", "particle"], kind="stable")
    kept["particle"] = pd.factorize(kept["particle"])[0]
    return kept.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)


class TrackVelocityPredict(trackpy.predict.NullPredict):
    """trackpy predictor: each track moves on at its own velocity.

    trackpy's own velocity predictors take the velocity from the two most recent
    frames (noisy for cores located to about a pixel) and from the *nearest* track
    (which, where two cores pass each other, is the other core). Here each track's
    velocity is a straight-line fit to its last ``n_fit`` detections (none from
    fewer than ``n_min``), applied to the position columns. Its **h** is predicted as the
    mean of those detections' (a dislocation's **h** does not change): a reading is
    compared with the track's **h**, not with the last reading, whose own scatter would
    double the difference.

    Use through ``wrap``: ``observe`` is fed each linked frame.
    """

    def __init__(self, n_fit: int = 5, n_min: int = 3) -> None:
        self.n_fit, self.n_min = n_fit, n_min
        self._recent: dict[int, list[tuple[float, ...]]] = {}
        self._velocity: dict[int, np.ndarray] = {}
        self._h: dict[int, np.ndarray] = {}

    def observe(self, frame: pd.DataFrame) -> None:
        """Record a linked frame and refit the velocities and mean **h** of its tracks."""
        t = frame[self.t_column].to_numpy(dtype=float)
        points = frame[_LINK_COLUMNS].to_numpy(dtype=float)  # y, x, hy, hx
        for p, ti, point in zip(frame["particle"].to_numpy(), t, points, strict=True):
            recent = self._recent.setdefault(int(p), [])
            recent.append((ti, *point))
            del recent[:-self.n_fit]
            a = np.asarray(recent)
            mean_h = a[:, 3:].mean(axis=0)
            if np.hypot(*mean_h) > 1e-6:  # readings that cancel: keep the last estimate
                self._h[int(p)] = unit(mean_h)
            if len(recent) >= self.n_min:
                self._velocity[int(p)] = np.polyfit(a[:, 0], a[:, 1:3], 1)[0]

    def predict(self, t1: float, particles: list) -> np.ndarray:
        """Positions of ``particles`` (trackpy points) extrapolated to frame ``t1``, with
        their tracks' mean **h**."""
        out = np.array([p.pos for p in particles], dtype=float)
        for k, p in enumerate(particles):
            v = self._velocity.get(p.track.id)
            if v is not None:
                out[k, :2] += v * (t1 - p.t)
            h = self._h.get(p.track.id)
            if h is not None:
                out[k, 2:] = h
        return out


def _drop_short(tracks: pd.DataFrame, min_length: int) -> pd.DataFrame:
    """Tracks with at least ``min_length`` detections (`trackpy.filter_stubs`)."""
    if tracks.empty:
        return tracks
    return trackpy.filter_stubs(tracks, threshold=min_length).reset_index(drop=True)


#: Gap closing tolerance: a fragment may start this far [nm] from where the previous one,
#: extrapolated at its velocity, predicts, plus `GAP_TOLERANCE_PER_FRAME_NM` per missed frame.
GAP_TOLERANCE_NM = 0.8
GAP_TOLERANCE_PER_FRAME_NM = 0.05


def close_gaps(
    tracks: pd.DataFrame,
    *,
    pixel_size_nm: float,
    max_gap: int = 12,
    max_h_change_deg: float = MAX_H_CHANGE_DEG,
    tolerance_nm: float = GAP_TOLERANCE_NM,
    tolerance_per_frame_nm: float = GAP_TOLERANCE_PER_FRAME_NM,
    frame_times_s: np.ndarray | None = None,
) -> pd.DataFrame:
    """Join track fragments split by missed detections.

    Fragment B continues fragment A when B starts 1 to ``max_gap`` frames after A
    ends, their mean **h** differ by less than ``max_h_change_deg``, and B's first
    position lies within ``tolerance_nm + tolerance_per_frame_nm * gap`` of A's last
    position moved on for the gap at the mean of the two fragments' fitted velocities
    (a fragment of fewer than 3 detections has none: the other's alone, or standing
    still if neither has one). Candidate joins are accepted
    closest first, each fragment continuing and being continued at most once.

    Parameters
    ----------
    tracks : DataFrame
        Linked detections: ``particle``, ``frame``, ``x``, ``y`` [px] (or the
        drift-corrected ``x_corr``, ``y_corr``), ``hx``, ``hy``.
    pixel_size_nm : float
        Pixel size [nm/px].
    frame_times_s : ndarray, optional
        The acquisition clock [s], one time per frame of the movie: velocities, the
        move across a gap and its tolerance then count the time elapsed, in median
        steps (a gap of one frame over a 10 s pause in a 1 s movie moves a core as 10
        would); ``max_gap`` still counts frames (missed detections).

    Returns
    -------
    DataFrame
        ``tracks`` with the ``particle`` of joined fragments set to their first one's.
    """
    if tracks.empty:
        return tracks
    xcol, ycol = position_columns(tracks)
    cos_max = np.cos(np.deg2rad(max_h_change_deg))
    # Time in median frame steps: frame numbers, or the clock's times where it steps unevenly.
    clock = None
    if frame_times_s is not None and len(frame_times_s) > 1:
        times = np.asarray(frame_times_s, dtype=float)
        clock = times / np.median(np.diff(times))
    merged: dict[int, int] = {}
    frags = []
    for p, g in tracks.groupby("particle", sort=True):
        f = g["frame"].to_numpy(dtype=float)
        xy = g[[xcol, ycol]].to_numpy(dtype=float) * pixel_size_nm
        order = np.argsort(f)
        f, xy = f[order], xy[order]
        t = f if clock is None else clock[f.astype(int)]
        v = _velocity(t, xy)
        h = _mean_h(g)
        frags.append((int(p), f[0], f[-1], t[0], t[-1], xy[0], xy[-1], v, h))
    candidates = []
    for a, _, a_stop, _, ta_stop, _, a_end, va, ha in frags:
        for b, b_start, _, tb_start, _, b_begin, _, vb, hb in frags:
            gap = b_start - a_stop
            if a == b or not 1 <= gap <= max_gap or float(ha @ hb) < cos_max:
                continue
            # The fitted velocities (a fragment too short for a fit has none, not zero).
            known = [v for v in (va, vb) if v is not None]
            v = np.mean(known, axis=0) if known else np.zeros(2)
            elapsed = tb_start - ta_stop  # = gap without a clock
            miss = np.linalg.norm(b_begin - (a_end + v * elapsed))
            if miss <= tolerance_nm + tolerance_per_frame_nm * elapsed:
                candidates.append((float(miss), a, b))
    continued, continuing = set(), set()
    for _, a, b in sorted(candidates):
        if a in continued or b in continuing:
            continue
        continued.add(a)
        continuing.add(b)
        merged[b] = a

    return _renumbered(tracks, merged)


#: How far [frames] a run of flipped **h** may reach past its host track's last (before its
#: first) detection and still be given back to it (`absorb_flipped_runs`).
END_SLACK_FRAMES = 2


def absorb_flipped_runs(tracks: pd.DataFrame, *, pixel_size_nm: float,
                        tolerance_nm: float = GAP_TOLERANCE_NM, max_frames: int = 12,
                        max_h_change_deg: float = MAX_H_CHANGE_DEG) -> pd.DataFrame:
    """Give a track back the detections whose **h** flipped for a few frames.

    A shorter track spanning at most ``max_frames`` frames, whose mean **h** differs from
    a longer track's by more than linking allows (``max_h_change_deg``), seen only in
    frames that track (with what it absorbed) lacks, within its span (or up to
    `END_SLACK_FRAMES` past either end, touching it), and never further
    than ``tolerance_nm`` from its path (interpolated between its own detections) is
    the same core: a second core of the other sign born and annihilated on the first
    one's path, exactly while it went unseen, is not physics. A dipole partner lies
    beside the core, in the frames it is seen.

    Parameters
    ----------
    tracks : DataFrame
        Linked detections (``particle``, ``frame``, ``x``, ``y`` [px] or ``x_corr``,
        ``y_corr``, ``hx``, ``hy``).
    pixel_size_nm : float
        Pixel size [nm/px].
    tolerance_nm, max_frames, max_h_change_deg
        See above.

    Returns
    -------
    DataFrame
        ``tracks`` with the ``particle`` of absorbed runs set to the longer track's.
    """
    if tracks.empty:
        return tracks
    particles, frames, paths, h = _per_track(tracks)
    n = np.array([len(f) for f in frames])
    first, last = np.array([f[0] for f in frames]), np.array([f[-1] for f in frames])
    opposite = h @ h.T < np.cos(np.deg2rad(max_h_change_deg))
    taken = [set(f.tolist()) for f in frames]  # frames each root holds, runs absorbed included
    merged: dict[int, int] = {}
    for s in np.argsort(n, kind="stable"):
        if last[s] - first[s] + 1 > max_frames:
            continue
        # Within the host's span, or past its end (start) by up to `END_SLACK_FRAMES`: a
        # reading flipped as the core fades out is no second core born on its path.
        hosts = np.flatnonzero(opposite[s] & (n > n[s]) & (first <= first[s] + END_SLACK_FRAMES)
                               & (last >= last[s] - END_SLACK_FRAMES)
                               & (first <= last[s] + 1) & (last >= first[s] - 1))
        for p in hosts[np.argsort(-n[hosts], kind="stable")]:
            if p in merged or taken[p] & taken[s]:
                continue
            on_path = np.c_[np.interp(frames[s], frames[p], paths[p][:, 0]),
                            np.interp(frames[s], frames[p], paths[p][:, 1])]
            if np.hypot(*(paths[s] - on_path).T).max() * pixel_size_nm <= tolerance_nm:
                merged[int(particles[s])] = int(particles[p])
                taken[p] |= taken[s]
                break
    return _renumbered(tracks, merged)


def merge_interleaved(tracks: pd.DataFrame, *, pixel_size_nm: float,
                      tolerance_nm: float = GAP_TOLERANCE_NM,
                      max_h_change_deg: float = MAX_H_CHANGE_DEG) -> pd.DataFrame:
    """Join tracks that took turns at one core.

    Where a core's **h** reads alternately either side of its own (each reading within
    ``max_h_change_deg`` of it, consecutive ones further apart), each link is refused
    and memory keeps two tracks that claim alternate detections: the core counted twice.
    Two tracks are one core when their mean **h** are within ``max_h_change_deg`` of
    their joint mean,
    their spans overlap, no frame holds both, and in the frames they share each one's
    detections lie within ``tolerance_nm`` of the other's path (interpolated). Two
    cores, however close, are seen in the same frames.

    Parameters
    ----------
    tracks : DataFrame
        Linked detections (``particle``, ``frame``, ``x``, ``y`` [px] or ``x_corr``,
        ``y_corr``, ``hx``, ``hy``).
    pixel_size_nm : float
        Pixel size [nm/px].
    tolerance_nm, max_h_change_deg
        See above.

    Returns
    -------
    DataFrame
        ``tracks`` with the ``particle`` of joined tracks set to the longest one's.
    """
    if tracks.empty:
        return tracks
    merged: dict[int, int] = {}
    tolerance_px = tolerance_nm / pixel_size_nm
    while True:  # joined tracks may join others: repeat until nothing changes
        heads, by_track, by_path, by_h = _per_track(_renumbered(tracks, merged))
        order = sorted(range(len(heads)), key=lambda k: (-len(by_track[k]), heads[k]))  # longest first
        ids, h = heads[order], by_h[order]
        frames, paths = [by_track[k] for k in order], [by_path[k] for k in order]
        # Candidates a row at a time (crowded movies hold hundreds of tracks): agreeing h,
        # overlapping spans, bounding boxes within the tolerance.
        n = np.array([len(f) for f in frames], dtype=float)
        first, last = np.array([f[0] for f in frames]), np.array([f[-1] for f in frames])
        low, high = np.array([q.min(axis=0) for q in paths]), np.array([q.max(axis=0) for q in paths])
        cos = np.cos(np.deg2rad(max_h_change_deg))
        joined: set[int] = set()
        for i in range(len(ids)):  # one row at a time: memory linear in the tracks
            rest = np.arange(i + 1, len(ids))
            joint = n[i] * h[i] + n[rest, None] * h[rest]
            joint /= np.maximum(np.linalg.norm(joint, axis=1, keepdims=True), 1e-12)
            gap = np.maximum(np.maximum(low[i] - high[rest], low[rest] - high[i]), 0.0)
            ok = ((joint @ h[i] >= cos) & ((joint * h[rest]).sum(axis=1) >= cos)
                  & (np.hypot(*gap.T) <= tolerance_px)
                  & (np.maximum(first[i], first[rest]) < np.minimum(last[i], last[rest])))
            for j in rest[ok]:
                if i in joined or j in joined:
                    continue  # next round, with the joined track's path
                if _interleaved(paths[i], paths[j], frames[i], frames[j], tolerance_px):
                    merged[int(ids[j])] = int(ids[i])
                    joined |= {i, int(j)}
        if not joined:
            return _renumbered(tracks, merged)


def _per_track(tracks: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Each track's particle id, frames, path ((n, 2) [px], drift-corrected where given)
    and unit mean **h**, in order of particle."""
    ordered = tracks.sort_values(["particle", "frame"], kind="stable")
    ids = ordered["particle"].to_numpy()
    cuts = np.flatnonzero(np.diff(ids)) + 1
    frames = np.split(ordered["frame"].to_numpy(dtype=float), cuts)
    paths = np.split(ordered[position_columns(tracks)].to_numpy(dtype=float), cuts)
    h = np.split(unit(ordered[["hx", "hy"]].to_numpy(dtype=float)), cuts)
    return ids[np.r_[0, cuts]], frames, paths, unit(np.array([g.mean(axis=0) for g in h]))


def _interleaved(a: np.ndarray, b: np.ndarray, fa: np.ndarray, fb: np.ndarray,
                 tolerance_px: float) -> bool:
    """Whether tracks with paths ``a`` and ``b`` ((n, 2) [px]) in frames ``fa``, ``fb``
    (sorted) overlap in time without sharing a frame, each on the other's path where both
    are seen."""
    lo, hi = max(fa[0], fb[0]), min(fa[-1], fb[-1])
    if lo >= hi or np.intersect1d(fa, fb).size:
        return False
    for (f1, t1), (f2, t2) in (((fa, a), (fb, b)), ((fb, b), (fa, a))):
        inside = (f1 >= lo) & (f1 <= hi)
        if not inside.any():  # all of it in the other's gap: the other side decides
            continue
        xy = t1[inside]
        path = np.c_[np.interp(f1[inside], f2, t2[:, 0]), np.interp(f1[inside], f2, t2[:, 1])]
        if np.hypot(*(xy - path).T).max() > tolerance_px:
            return False
    return True


def _renumbered(tracks: pd.DataFrame, merged: dict[int, int]) -> pd.DataFrame:
    """``tracks`` with each particle merged into another (``merged``: child -> parent, in
    chains) set to its root's id."""
    def root(p: int) -> int:
        while p in merged:
            p = merged[p]
        return p

    return tracks.assign(particle=tracks["particle"].map(lambda p: root(int(p)))) if merged else tracks


#: Crossing repair: tracks this close [nm] somewhere in the window may swap tails; a swap
#: is kept when it cuts the straight-line misfit of the two tracks by this factor.
CROSSING_DISTANCE_NM = 1.5
CROSSING_IMPROVEMENT = 0.5


def repair_crossings(
    tracks: pd.DataFrame,
    *,
    pixel_size_nm: float,
    window: int = 4,
    distance_nm: float = CROSSING_DISTANCE_NM,
    improvement: float = CROSSING_IMPROVEMENT,
    max_h_change_deg: float = MAX_H_CHANGE_DEG,
) -> pd.DataFrame:
    """Undo identity swaps where two cores of like **h** cross.

    Frame-to-frame nearest-neighbour linking swaps two cores whose paths cross
    (most often when one of them is missed at the crossing): each track then turns
    sharply onto the other core's path. For every two tracks of like **h** and every
    frame ``f`` both have detections on each side of, the tails from ``f`` on are
    exchanged if that makes both tracks straighter: the summed squared residuals
    of straight-line fits (position against frame) over ``window`` detections on
    each side of ``f`` fall below ``improvement`` times their present value. Only
    where the two tracks are seen within ``distance_nm`` of each other (in frames at
    most ``window`` apart) near ``f``.
    The best swap is applied first and the search repeated.

    Parameters
    ----------
    tracks : DataFrame
        Linked detections (``particle``, ``frame``, ``x``, ``y`` [px] or ``x_corr``,
        ``y_corr``, ``hx``, ``hy``).
    pixel_size_nm : float
        Pixel size [nm/px].
    window, distance_nm, improvement, max_h_change_deg
        See above.

    Returns
    -------
    DataFrame
        ``tracks`` with ``particle`` reassigned after each swap (same rows).
    """
    if tracks.empty:
        return tracks
    xcol, ycol = position_columns(tracks)
    out = tracks.copy()
    cos_max = np.cos(np.deg2rad(max_h_change_deg))
    reach_px = distance_nm / pixel_size_nm

    def path(p: int) -> pd.DataFrame:
        return out[out["particle"] == p].sort_values("frame")

    paths = {int(p): g.sort_values("frame") for p, g in out.groupby("particle")}
    h = {p: _mean_h(g) for p, g in paths.items()}
    ids = sorted(paths)
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:] if float(h[a] @ h[b]) >= cos_max]
    best = {(a, b): _best_swap(paths[a], paths[b], xcol, ycol, window, reach_px, improvement)
            for a, b in pairs}
    # Each pass applies the best swap; only the pairs with a changed track are re-scored.
    # A swap exchanges like-h tails, so the mean h of either track hardly moves.
    for _ in range(len(out)):
        found = [(swap, pair) for pair, swap in best.items() if swap is not None]
        if not found:
            break
        (_, frame), (a, b) = min(found)
        tail_a = (out["particle"] == a) & (out["frame"] >= frame)
        tail_b = (out["particle"] == b) & (out["frame"] >= frame)
        out.loc[tail_a, "particle"] = b
        out.loc[tail_b, "particle"] = a
        paths[a], paths[b] = path(a), path(b)
        for pair in best:
            if a in pair or b in pair:
                best[pair] = _best_swap(paths[pair[0]], paths[pair[1]], xcol, ycol, window,
                                        reach_px, improvement)
    return out


def _best_swap(a: pd.DataFrame, b: pd.DataFrame, xcol: str, ycol: str, window: int,
               reach_px: float, improvement: float) -> tuple[float, int] | None:
    """(relative misfit, frame) of the best tail swap of tracks ``a`` and ``b``, or None."""
    fa, fb = a["frame"].to_numpy(), b["frame"].to_numpy()
    pa, pb = a[[xcol, ycol]].to_numpy(dtype=float), b[[xcol, ycol]].to_numpy(dtype=float)
    # Far apart throughout (bounding boxes): nothing to repair.
    box_gap = np.maximum(np.maximum(pa.min(0) - pb.max(0), pb.min(0) - pa.max(0)), 0.0)
    if np.hypot(*box_gap) > reach_px:
        return None
    # Frames of a with a detection of b within reach_px and `window` frames: only near
    # them is a swap considered (keeps long movies cheap).
    near = np.zeros(len(fa), dtype=bool)
    for lag in range(-window, window + 1):
        j = np.minimum(np.searchsorted(fb, fa + lag), len(fb) - 1)
        same = fb[j] == fa + lag
        near[same] |= np.hypot(*(pa[same] - pb[j[same]]).T) <= reach_px
    close = fa[near]
    if not len(close):
        return None
    first = max(fa[0] + 1, fb[0] + 1, close[0] - window)  # a swap needs a head in both
    last = min(fa[-1], fb[-1], close[-1] + window)
    best = None
    for f in range(first, last + 1):
        ia, ib = np.searchsorted(fa, f), np.searchsorted(fb, f)
        # `window` detections on each side of f, in both tracks.
        if min(ia, ib) < window or min(len(fa) - ia, len(fb) - ib) < window:
            continue
        if not np.any(np.abs(close - f) <= window):
            continue
        sa, sb = slice(ia - window, ia + window), slice(ib - window, ib + window)
        now = _line_misfit(fa[sa], pa[sa]) + _line_misfit(fb[sb], pb[sb])
        swapped = (_line_misfit(np.r_[fa[ia - window:ia], fb[ib:ib + window]],
                                np.r_[pa[ia - window:ia], pb[ib:ib + window]])
                   + _line_misfit(np.r_[fb[ib - window:ib], fa[ia:ia + window]],
                                  np.r_[pb[ib - window:ib], pa[ia:ia + window]]))
        ratio = swapped / max(now, 1e-9)
        if ratio < improvement and (best is None or ratio < best[0]):
            best = (float(ratio), int(f))
    return best


def _line_misfit(frames: np.ndarray, xy: np.ndarray) -> float:
    """Summed squared residuals [px^2] of straight-line fits of x and y against frame."""
    design = np.c_[np.ones(len(frames)), frames.astype(float)]
    _, res, rank, _ = np.linalg.lstsq(design, xy, rcond=None)
    if rank < 2 or not len(res):
        return 0.0
    return float(res.sum())


#: Extension of track ends with weak detections: the largest distance [nm] from the
#: position extrapolated at the track's velocity, and the most frames added per end.
EXTEND_TOLERANCE_NM = 0.5
EXTEND_MAX_FRAMES = 5
#: Frames without a weak peak an extension may step over (the detector misses some).
EXTEND_MAX_SKIP = 1


def extend_tracks(
    tracks: pd.DataFrame,
    weak: pd.DataFrame,
    *,
    pixel_size_nm: float,
    tolerance_nm: float = EXTEND_TOLERANCE_NM,
    max_frames: int = EXTEND_MAX_FRAMES,
    max_h_change_deg: float = MAX_H_CHANGE_DEG,
    n_fit: int = 5,
    max_skip: int = EXTEND_MAX_SKIP,
) -> pd.DataFrame:
    """Extend each track backwards from its first and forwards from its last frame
    with weak detections (hysteresis in time).

    A core that is just nucleating, about to annihilate, or entering a region of
    poor contrast is fainter than the decode threshold needs, yet where a track
    already runs a weaker peak is good evidence. Frame by frame, the end is moved
    to the weak detection nearest to the position extrapolated at the track's
    velocity (fitted to its ``n_fit`` end detections, zero if fewer than 3), if
    that lies within ``tolerance_nm`` and its **h** within ``max_h_change_deg`` of
    the track's mean **h**. A frame without one is stepped over (the position
    extrapolated on) up to ``max_skip`` times in a row, since faint cores are
    missed now and then; the extension stops at the next frame without one, and
    stepped-over frames beyond the last weak detection added are not kept.
    Each weak detection joins at most one track: the one whose extrapolated
    position it is nearest to; ``max_frames`` counts frames stepped, added or over.

    Parameters
    ----------
    tracks : DataFrame
        Linked detections (``particle``, ``frame``, ``x``, ``y`` [px] or the
        drift-corrected ``x_corr``, ``y_corr``, ``hx``, ``hy``, ...).
    weak : DataFrame
        Detections below the decode threshold, same columns without ``particle``.
    pixel_size_nm : float
        Pixel size [nm/px].
    tolerance_nm, max_frames, max_h_change_deg, n_fit, max_skip
        See above.

    Returns
    -------
    DataFrame
        ``tracks`` plus the weak detections that extend them, sorted by particle
        and frame, new index.
    """
    if tracks.empty or weak.empty or max_frames <= 0:
        return tracks
    xcol, ycol = position_columns(tracks)
    tol_px = tolerance_nm / pixel_size_nm
    cos_max = np.cos(np.deg2rad(max_h_change_deg))
    weak = weak.reset_index(drop=True)
    wxy = weak[[xcol, ycol]].to_numpy(dtype=float)
    wh = unit(weak[["hx", "hy"]].to_numpy(dtype=float))
    by_frame = {int(f): idx.to_numpy() for f, idx in weak.groupby("frame").groups.items()}
    # Every track end advances one frame per round; within a round a contested weak
    # peak goes to the end whose extrapolated position is nearest (greedy by distance).
    ends = []  # [particle, step, frame, position, velocity per frame, mean h, frames skipped]
    for p, g in tracks.sort_values("frame").groupby("particle", sort=True):
        h = _mean_h(g)
        for step, end in ((-1, g.head(n_fit)), (1, g.tail(n_fit))):
            f = end["frame"].to_numpy(dtype=float)
            xy = end[[xcol, ycol]].to_numpy(dtype=float)
            v = _velocity(f, xy)
            ends.append([p, step, int(f[0] if step < 0 else f[-1]), xy[0 if step < 0 else -1],
                         np.zeros(2) if v is None else v, h, 0])
    added: dict[int, int] = {}  # weak row -> particle it joined
    for _ in range(max_frames):
        proposals = []  # (distance, end, weak row)
        for k, (_p, step, frame, pos, v, h, _skipped) in enumerate(ends):
            idx = np.array([i for i in by_frame.get(frame + step, ()) if i not in added], dtype=int)
            if not len(idx):
                continue
            dist = np.hypot(*(wxy[idx] - (pos + step * v)).T)
            ok = (dist <= tol_px) & (wh[idx] @ h >= cos_max)
            proposals += [(d, k, int(j)) for d, j in zip(dist[ok], idx[ok], strict=True)]
        moved: set[int] = set()
        for _d, k, j in sorted(proposals):
            if k in moved or j in added:
                continue
            added[j] = ends[k][0]
            ends[k][2] += ends[k][1]
            ends[k][3] = wxy[j]
            ends[k][6] = 0
            moved.add(k)
        for k, e in enumerate(ends):  # no weak peak this frame: step over it, or stop
            if k not in moved and e[6] < max_skip:
                e[2] += e[1]
                e[3] = e[3] + e[1] * e[4]
                e[6] += 1
                moved.add(k)
        ends = [e for k, e in enumerate(ends) if k in moved]
        if not ends:
            break
    if not added:
        return tracks
    extra = weak.loc[list(added)].assign(particle=list(added.values()))
    extra = extra.astype({"particle": tracks["particle"].dtype})
    # Columns the tracks carry but weak peaks lack: a flag (in_rocksalt,
    # at_specimen_edge) was not found there (False); anything else is unknown (NaN).
    extra = extra.assign(**{c: False if tracks[c].dtype == bool else np.nan
                            for c in tracks.columns if c not in extra})
    out = pd.concat([tracks, extra[tracks.columns]], ignore_index=True)
    return out.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)


def _velocity(frames: np.ndarray, xy: np.ndarray) -> np.ndarray | None:
    """Straight-line velocity [units of ``xy`` per frame]; None from fewer than 3 points."""
    return np.polyfit(frames, xy, 1)[0] if len(frames) >= 3 and np.ptp(frames) > 0 else None


def _mean_h(table: pd.DataFrame) -> np.ndarray:
    """Unit vector of the mean ``hx``, ``hy`` of a track's detections."""
    return unit(table[["hx", "hy"]].to_numpy(dtype=float).mean(axis=0))


def _linking_space(detections: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``detections`` with the (y, x, hy, hx) columns trackpy links on."""
    xcol, ycol = position_columns(detections)
    h = detections[["hx", "hy"]].to_numpy(dtype=float)
    if not np.isfinite(h).all():
        raise ValueError("hx, hy must be finite for every detection (found NaN or inf)")
    h = unit(h)
    table = detections.copy()
    table[_LINK_COLUMNS[0]] = detections[ycol].to_numpy(dtype=float)
    table[_LINK_COLUMNS[1]] = detections[xcol].to_numpy(dtype=float)
    table[_LINK_COLUMNS[2]] = h[:, 1]
    table[_LINK_COLUMNS[3]] = h[:, 0]
    return table


@contextlib.contextmanager
def _quiet_trackpy() -> Iterator[None]:
    """Silence trackpy's per-frame log messages, restoring its level afterwards."""
    level = trackpy.logger.level
    trackpy.quiet()
    try:
        yield
    finally:
        trackpy.logger.setLevel(level)


def with_gaps(tracks: pd.DataFrame, drift: pd.DataFrame | None = None) -> pd.DataFrame:
    """``tracks`` plus a row for every frame a track skips (linked across missed
    detections), where the core would be.

    Parameters
    ----------
    tracks : DataFrame
        ``particle, frame, x, y`` [px, raw], ``hx, hy``; with ``x_corr``, ``y_corr`` (drift
        removed), the skipped frames' places are interpolated on the specimen and moved
        by that frame's ``drift``, else interpolated in raw pixels.
    drift : DataFrame, optional
        ``frame, dx, dy`` [px] (`AnalysisResult.drift`).

    Returns
    -------
    DataFrame
        ``particle, frame, x, y, hx, hy`` (``hx``, ``hy`` of the detection before a gap)
        and ``missed`` (True for the added rows).

    Examples
    --------
    >>> t = pd.DataFrame({"particle": 3, "frame": [0, 3], "x": [0.0, 3.0], "y": 1.0,
    ...                   "hx": 0.0, "hy": 1.0})
    >>> with_gaps(t)[["frame", "x", "missed"]].values.tolist()
    [[0, 0.0, False], [1, 1.0, True], [2, 2.0, True], [3, 3.0, False]]
    """
    corrected = drift is not None and {"x_corr", "y_corr"} <= set(tracks.columns)
    place = ["x_corr", "y_corr"] if corrected else ["x", "y"]
    columns = list(dict.fromkeys(["particle", "frame", "x", "y", "hx", "hy", *place]))
    parts = []
    for _, g in tracks[columns].groupby("particle", sort=False):
        g = g.sort_values("frame")
        every = pd.RangeIndex(int(g["frame"].iloc[0]), int(g["frame"].iloc[-1]) + 1, name="frame")
        full = g.set_index("frame").reindex(every)
        missed = full["x"].isna().to_numpy()
        full[place] = full[place].interpolate(method="index")
        full[["particle", "hx", "hy"]] = full[["particle", "hx", "hy"]].ffill()
        parts.append(full.reset_index().assign(missed=missed))
    if not parts:
        return tracks[columns[:6]].assign(missed=pd.Series(dtype=bool))
    out = pd.concat(parts, ignore_index=True)
    if corrected:  # back to raw pixels of each skipped frame
        shift = drift.set_index("frame").reindex(out["frame"])[["dx", "dy"]].to_numpy(float)
        gap = out["missed"].to_numpy() & np.isfinite(shift).all(axis=1)
        out.loc[gap, "x"] = out.loc[gap, "x_corr"] + shift[gap, 0]
        out.loc[gap, "y"] = out.loc[gap, "y_corr"] + shift[gap, 1]
        out = out.drop(columns=["x_corr", "y_corr"])
    out[["x", "y"]] = out[["x", "y"]].interpolate()  # a gap frame without a drift row
    return out.astype({"particle": tracks["particle"].dtype, "frame": int})
