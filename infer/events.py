"""Births, deaths, dipoles, events and counts of tracked dislocations.

Birth of a track: ``present`` if it was there from the movie's first frame, else
``entered`` if its first detection lies within ``border_nm`` of the image edge,
else ``nucleated``. Death: ``survived`` if it lasts to the last frame, else ``left``
if its last detection lies within ``border_nm`` of the edge (or is flagged
``at_specimen_edge``: beside vacuum, `dislotrack.infer.lattice_edge`), else ``annihilated``.
A detector misses cores now and then, so "from the first frame" allows for it: a
track whose first detection is ``k`` frames in counts as present when a core missed
at the track's own rate ``m = 1 - detections / span`` would plausibly go unseen that
long, ``m**k >= MISSED_START_PROBABILITY`` (likewise for the last frame). Edges are
judged on the raw (not drift-corrected) positions, since the frame edge is fixed on
the detector. Inside rock salt the (003) fringes that show a core are gone, so a core
there is as often unseen as absent: a track whose first (last) detection is flagged
``in_rocksalt`` (within `ROCKSALT_MARGIN_NM` of the predicted rock-salt mask; set by
`dislotrack.infer.pipeline.analyze`) was born ``from_rocksalt`` (died ``into_rocksalt``)
rather than nucleated (annihilated); present/survived and the frame edge come first.
Except for dipoles: two opposite cores that appear (vanish) together, side by side,
are the dipole's nucleation (annihilation) even at rock salt, or with one of them at the
frame edge; a hidden pair would have to come into view within the same ``max_frame_gap``
frames by chance (with both at the edge they entered or left: a pair may glide in or out
together).

Two tracks form a *dipole* when their mean **h** are opposite (within
``opposite_tolerance_deg``) and either they nucleate together (first frames at
most ``max_frame_gap`` apart, first positions within ``distance_nm``), or they
annihilate together (the same on their last frames), or they stay within
``distance_nm`` in at least ``min_close_fraction`` of the frames where both are
detected (nucleating or annihilating together counts from or into rock salt too); in a
single image, where nothing nucleates or moves, cores within ``distance_nm``. A dipole
nucleates and annihilates as a pair (DESIGN.md): staying close does not make one of
two tracks that nucleated (annihilated) more than ``max_lag_frames`` after the other
appeared (before it vanished), which allows for a partner the detector missed a while.
Each track has at most one partner; candidate pairs are accepted greedily,
closest first. Distances use drift-corrected positions when present.

Events sit where they are seen: a nucleation at a track's first detection, an
annihilation at its last. A dipole whose two tracks both nucleated gives one
``dipole_nucleation`` instead of two nucleations: at the earlier first frame, at the
pair's midpoint there (the later core moved back to it at its own velocity, drift-
corrected, put back in that frame's raw pixels), when its partner was first seen at
most ``max_lag_frames`` later and so moved back lies within ``distance_nm``; likewise
``dipole_annihilation`` (later last frame). A dipole's births (deaths) are judged
together: where one of its cores is seen in the movie's first (last) frame, both were
there from the start (to the end); else, where one track nucleated (annihilated) by its
own miss rate, so did the other, whatever its own.
Event ``x``, ``y`` are raw image positions [px]; ``particles`` lists the track ids
separated by spaces.

The two cores of a dipole closer than about 1 nm are not resolved: the detector
sees one blob between them, too weak or too short-lived to form a track. When the
detections that are in no track are given, a dipole nucleation is moved back
(annihilation forward) through consecutive frames that have such a detection within
``blob_radius_nm`` of the pair's midpoint, at most ``max_blob_frames`` frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dislotrack.data_gen.conventions import edge_distance_px, px_to_nm, unit
from dislotrack.infer.drift import position_columns
from dislotrack.infer.motion import (
    VELOCITY_COLUMNS,
    frame_times,
    track_motion,
    track_velocities,
)

#: A detection this close to the predicted rock-salt mask is flagged ``in_rocksalt``.
ROCKSALT_MARGIN_NM = 0.5

#: Smallest probability of missing a core for its first (last) frames with which a
#: track still counts as present from the first (to the last) frame.
MISSED_START_PROBABILITY = 0.05

SUMMARY_COLUMNS = [
    "particle",
    "first_frame",
    "last_frame",
    "n_frames",
    *VELOCITY_COLUMNS,
    "kind",
    "partner",
    "birth",
    "death",
]
#: ``x_nm``, ``y_nm`` last (0.1.26): added after the schema-2 columns, whose places stay.
EVENT_COLUMNS = ["frame", "t_s", "kind", "x", "y", "particles", "x_nm", "y_nm"]
COUNT_COLUMNS = ["frame", "t_s", "n_dislocations", "n_dipoles", "rocksalt_fraction"]


@dataclass(frozen=True)
class DipoleCriteria:
    """When two tracks of opposite **h** count as a dipole (see module docstring).

    Attributes
    ----------
    distance_nm : float
        Largest core separation [nm].
    max_frame_gap : int
        Largest difference of first (or last) frames for a joint nucleation
        (annihilation) [frames]. `dislotrack.infer.tracking.track_detections` (and so
        infer) raises it to the linking ``memory`` (5 by default): call `summarise_tracks`
        and `find_events` with ``DipoleCriteria(max_frame_gap=max(memory, 2))`` to get
        the pipeline's births and events again (it also applies `drop_unseen_edge_events`).
    min_close_fraction : float
        Fraction of the common frames in which the cores must be within ``distance_nm``.
    opposite_tolerance_deg : float
        Largest deviation of the angle between the two mean **h** from 180 deg [deg].
    max_lag_frames : int
        Pairs that stay close are no dipole when one track nucleated (annihilated) more
        than this many frames after the other appeared (before it vanished) [frames]:
        it began (ended) alone. Up to it, a partner's late (early) detection is taken
        for the detector's misses (linking bridges gaps of up to 12 frames).
    """

    distance_nm: float = 3.0
    max_frame_gap: int = 2
    min_close_fraction: float = 0.6
    opposite_tolerance_deg: float = 45.0
    max_lag_frames: int = 12


def summarise_tracks(
    tracks: pd.DataFrame,
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None = None,
    n_frames: int | None = None,
    image_shape: tuple[int, int] | None = None,
    border_nm: float = 2.0,
    dipoles: DipoleCriteria = DipoleCriteria(),
    frame_times_s: np.ndarray | None = None,
) -> pd.DataFrame:
    """The track_summary table: one row per track.

    Parameters
    ----------
    tracks : DataFrame
        Linked detections (``particle``, ``frame``, ``x``, ``y`` [px], ``hx``,
        ``hy``, optional ``x_corr``, ``y_corr``); ``glide_nm`` and ``climb_nm`` are
        computed with `track_motion` if absent.
    pixel_size_nm : float
        Pixel size [nm/px].
    frame_interval_s : float or None
        Time between frames [s]; ``None`` gives velocities in nm/frame.
    n_frames : int or None
        Number of frames in the movie (frames 0 .. n_frames - 1); default: last
        tracked frame + 1.
    image_shape : (int, int) or None
        Frame shape (rows, cols) [px]; ``None`` disables ``entered`` / ``left``.
    border_nm : float
        Width of the edge band for ``entered`` / ``left`` [nm].
    dipoles : DipoleCriteria
        Dipole pairing rules.
    frame_times_s : ndarray or None
        The acquisition clock, one time [s] per frame (`dislotrack.infer.motion.frame_times`):
        velocities are fitted against it.

    Returns
    -------
    DataFrame
        Columns `SUMMARY_COLUMNS`; ``partner`` is a nullable integer (empty if none).
    """
    if not {"glide_nm", "climb_nm"} <= set(tracks.columns):
        tracks = track_motion(
            tracks, pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s,
            frame_times_s=frame_times_s
        )
    velocities = track_velocities(tracks, frame_interval_s=frame_interval_s, frame_times_s=frame_times_s)
    fates = birth_death(
        tracks,
        pixel_size_nm=pixel_size_nm,
        n_frames=n_frames,
        image_shape=image_shape,
        border_nm=border_nm,
    )
    # Ends and paths once for both: pairing and the joint rock-salt fates read them.
    ends = _track_ends(tracks, pixel_size_nm)
    pairs = _pair_ends(ends, fates, _paths_nm(tracks, pixel_size_nm), dipoles)
    fates = _joint_fates(fates, pairs, ends, dipoles)
    summary = velocities.merge(fates, on=["particle", "first_frame", "last_frame"])
    partner = dict(pairs) | {b: a for a, b in pairs}
    summary["partner"] = summary["particle"].map(partner).astype("Int64")
    summary["kind"] = np.where(summary["partner"].isna(), "single", "dipole")
    summary = summary[SUMMARY_COLUMNS].reset_index(drop=True)
    summary.attrs = velocities.attrs
    return summary


def near_rocksalt(x: np.ndarray, y: np.ndarray, mask: np.ndarray, margin_px: float) -> np.ndarray:
    """Whether each point (x, y) [px, pixel-centre origin] lies within ``margin_px`` of a
    rock-salt pixel of ``mask`` (H, W; nonzero = rock salt)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    mask = np.asarray(mask) > 0
    out = np.zeros(len(x), dtype=bool)
    if not len(x) or not mask.any():
        return out
    # The window is placed around the nearest pixel; distances run from the point itself.
    r = int(np.ceil(margin_px)) + 1
    rows = np.clip(np.round(y).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(np.round(x).astype(int), 0, mask.shape[1] - 1)
    # A window around each point, not a distance map of the frame: a few points per frame.
    for i, (row, col) in enumerate(zip(rows, cols, strict=True)):
        r0, c0 = max(row - r, 0), max(col - r, 0)
        yy, xx = np.nonzero(mask[r0:row + r + 1, c0:col + r + 1])
        out[i] = bool(len(yy)) and bool(np.min((yy + r0 - y[i]) ** 2 + (xx + c0 - x[i]) ** 2)
                                        <= margin_px**2)
    return out


def birth_death(
    tracks: pd.DataFrame,
    *,
    pixel_size_nm: float,
    n_frames: int | None = None,
    image_shape: tuple[int, int] | None = None,
    border_nm: float = 2.0,
) -> pd.DataFrame:
    """Classify how each track begins and ends (rules in the module docstring).

    Returns
    -------
    DataFrame
        ``particle``, ``first_frame``, ``last_frame``, ``birth``, ``death``, and
        ``p_unseen_start`` (``p_unseen_stop``): the chance that the core was there from
        the first (to the last) frame and missed meanwhile (1 where it was seen there).
    """
    ends = _track_ends(tracks, pixel_size_nm)
    last_tracked = int(ends["frame_stop"].max()) if len(ends) else -1
    final_frame = last_tracked if n_frames is None else n_frames - 1
    if final_frame < last_tracked:
        raise ValueError(f"tracks reach frame {last_tracked} but n_frames={n_frames}")
    band_px = border_nm / pixel_size_nm
    # The track's own miss rate, kept off 0 and 1 so that powers stay meaningful.
    n_detected = tracks.groupby("particle").size().reindex(ends.index).to_numpy()
    span = (ends["frame_stop"] - ends["frame_start"] + 1).to_numpy()
    miss = np.clip(1 - n_detected / span, 1e-3, 0.999)
    missed_start = miss ** ends["frame_start"].to_numpy()
    missed_stop = miss ** (final_frame - ends["frame_stop"].to_numpy())
    from_first = missed_start >= MISSED_START_PROBABILITY
    to_last = missed_stop >= MISSED_START_PROBABILITY
    rs_start, rs_stop = (ends.get(f"in_rocksalt_{stage}", pd.Series(False, index=ends.index))
                         .fillna(False).to_numpy(dtype=bool) for stage in ("start", "stop"))
    # Ending beside the specimen's edge (vacuum, amorphous): out through it, as at the border.
    # (A core appearing there nucleated at the surface: nothing glides in from vacuum.)
    at_stop = (ends.get("at_specimen_edge_stop", pd.Series(False, index=ends.index))
               .fillna(False).to_numpy(dtype=bool))
    birth = np.select(
        [(ends["frame_start"] == 0) | from_first, _near_edge(ends, "start", image_shape, band_px),
         rs_start],
        ["present", "entered", "from_rocksalt"], "nucleated")
    death = np.select(
        [(ends["frame_stop"] == final_frame) | to_last,
         _near_edge(ends, "stop", image_shape, band_px) | (at_stop & ~rs_stop), rs_stop],
        ["survived", "left", "into_rocksalt"], "annihilated")
    return pd.DataFrame(
        {
            "particle": ends.index.to_numpy(dtype=int),
            "first_frame": ends["frame_start"].to_numpy(dtype=int),
            "last_frame": ends["frame_stop"].to_numpy(dtype=int),
            "birth": birth.astype(str),
            "death": death.astype(str),
            # The chance that the core was there from the first (to the last) frame, missed.
            "p_unseen_start": np.where(ends["frame_start"] == 0, 1.0, missed_start),
            "p_unseen_stop": np.where(ends["frame_stop"] == final_frame, 1.0, missed_stop),
        }
    )


def pair_dipoles(
    tracks: pd.DataFrame,
    fates: pd.DataFrame,
    *,
    pixel_size_nm: float,
    criteria: DipoleCriteria = DipoleCriteria(),
) -> list[tuple[int, int]]:
    """Pairs of particle ids forming dipoles (smaller id first).

    Parameters
    ----------
    tracks : DataFrame
        Linked detections (see `summarise_tracks`).
    fates : DataFrame
        Output of `birth_death` for the same tracks.
    pixel_size_nm : float
        Pixel size [nm/px].
    criteria : DipoleCriteria
        Pairing rules.
    """
    return _pair_ends(_track_ends(tracks, pixel_size_nm), fates, _paths_nm(tracks, pixel_size_nm),
                      criteria)


def _pair_ends(ends: pd.DataFrame, fates: pd.DataFrame, paths, criteria: DipoleCriteria
               ) -> list[tuple[int, int]]:
    """`pair_dipoles` on precomputed `_track_ends` and `_paths_nm`."""
    ends = ends.join(fates.set_index("particle")[["birth", "death", "p_unseen_start", "p_unseen_stop"]])
    h = ends[["hx", "hy"]].to_numpy()
    opposite = h @ h.T <= -np.cos(np.deg2rad(criteria.opposite_tolerance_deg))
    near = _box_gaps(ends) <= criteria.distance_nm  # never closer: no dipole
    candidates = []
    for i, j in zip(*np.nonzero(np.triu(opposite & near)), strict=True):
        a, b = ends.index[i], ends.index[j]
        cost = _pair_cost(ends.loc[a], ends.loc[b], paths, criteria)
        if cost is not None:
            candidates.append((cost, a, b))
    taken: set[int] = set()
    pairs = []
    for _, a, b in sorted(candidates):
        if a not in taken and b not in taken:
            pairs.append((int(a), int(b)))
            taken |= {a, b}
    return pairs


def find_events(
    tracks: pd.DataFrame,
    summary: pd.DataFrame,
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None = None,
    dipoles: DipoleCriteria = DipoleCriteria(),
    unlinked: pd.DataFrame | None = None,
    blob_radius_nm: float = 0.5,
    max_blob_frames: int = 3,
    frame_times_s: np.ndarray | None = None,
) -> pd.DataFrame:
    """The events table (nucleations and annihilations, single or as dipoles).

    Parameters
    ----------
    tracks : DataFrame
        Linked detections.
    summary : DataFrame
        Output of `summarise_tracks` for the same tracks.
    pixel_size_nm, frame_interval_s, dipoles, frame_times_s
        As in `summarise_tracks` (use the same values).
    unlinked : DataFrame, optional
        Detections in no track (``frame``, ``x``, ``y`` [px], optional ``x_corr``,
        ``y_corr``), e.g. below the decode threshold: the unresolved blob of a close
        dipole (module docstring).
    blob_radius_nm, max_blob_frames : float, int
        How close to the pair's midpoint [nm] and for how many frames at most such a
        blob moves a dipole event.

    Returns
    -------
    DataFrame
        Columns `EVENT_COLUMNS`, sorted by frame.
    """
    ends = _track_ends(tracks, pixel_size_nm, velocities=True)
    info = summary.set_index("particle")
    rows = [*_events(info, ends, "nucleation", dipoles, pixel_size_nm),
            *_events(info, ends, "annihilation", dipoles, pixel_size_nm)]
    if unlinked is not None and len(unlinked) and max_blob_frames > 0:
        cols = position_columns(tracks)
        if not set(cols) <= set(unlinked.columns):
            raise ValueError(f"unlinked needs the tracks' position columns {cols}")
        blobs = (unlinked["frame"].to_numpy(dtype=int),
                 np.asarray(px_to_nm(unlinked[cols].to_numpy(dtype=float), pixel_size_nm)),
                 unlinked[["x", "y"]].to_numpy(dtype=float))
        rows = [_through_blob(r, blobs, blob_radius_nm, max_blob_frames) for r in rows]
    events = pd.DataFrame([r[:5] for r in rows], columns=["frame", "kind", "x", "y", "particles"]).astype(
        {"frame": int, "kind": str, "x": float, "y": float, "particles": str}
    )
    events.insert(1, "t_s", frame_times(events["frame"], frame_interval_s, frame_times_s))
    # In nm too, as detections and tracks are (the raw position: drift not removed).
    events["x_nm"], events["y_nm"] = events["x"] * pixel_size_nm, events["y"] * pixel_size_nm
    return events.sort_values(["frame", "kind"], kind="stable").reset_index(drop=True)


def drop_unseen_edge_events(events: pd.DataFrame, summary: pd.DataFrame, *, n_frames: int
                            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events and fates without the dipole events that the close-pair blob moved to the
    movie's first (last) frame: the pair was already (still) there as one blob, so its
    nucleation (annihilation) was not seen. Its cores are then ``present`` (``survived``).

    Parameters
    ----------
    events : DataFrame
        `find_events`' table.
    summary : DataFrame
        `summarise_tracks`' table (``particle``, ``birth``, ``death``).
    n_frames : int
        Frames in the movie.

    Returns
    -------
    (DataFrame, DataFrame)
        The events and a copy of the summary with those fates changed.
    """
    edge = (((events["kind"] == "dipole_nucleation") & (events["frame"] == 0))
            | ((events["kind"] == "dipole_annihilation") & (events["frame"] == n_frames - 1)))
    if not edge.any():
        return events, summary
    summary = summary.copy()
    for kind, particles in events.loc[edge, ["kind", "particles"]].itertuples(index=False):
        rows = summary["particle"].isin([int(p) for p in particles.split()])
        column, fate = ("birth", "present") if kind == "dipole_nucleation" else ("death", "survived")
        summary.loc[rows, column] = fate
    return events[~edge].reset_index(drop=True), summary


def count_dislocations(
    summary: pd.DataFrame,
    *,
    n_frames: int,
    frame_interval_s: float | None = None,
    rocksalt_fraction: np.ndarray | None = None,
    frame_times_s: np.ndarray | None = None,
    events: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per-frame counts of dislocations and dipoles.

    A track counts in every frame from its first to its last detection (also in
    frames it was missed), from frame 0 if it was ``present`` and to the last frame if it
    ``survived``; a dipole counts while both partners do, and both from its
    ``dipole_nucleation`` to its ``dipole_annihilation`` where ``events`` put those
    beyond its tracks' ends (a partner seen a frame late, an unresolved blob): the counts
    then agree with events.csv.

    Parameters
    ----------
    summary : DataFrame
        Output of `summarise_tracks`.
    n_frames : int
        Number of frames in the movie.
    frame_interval_s : float or None
        Time between frames [s]; ``None`` leaves ``t_s`` NaN.
    rocksalt_fraction : array_like of shape (n_frames,) or None
        Rock-salt area fraction per frame; NaN when not given.
    frame_times_s : ndarray or None
        The acquisition clock, one time [s] per frame: ``t_s`` follows it.
    events : DataFrame, optional
        Output of `find_events` for the same tracks.

    Returns
    -------
    DataFrame
        Columns `COUNT_COLUMNS`, one row per frame.
    """
    frames = np.arange(n_frames)
    first = summary["first_frame"].to_numpy(dtype=int, copy=True)
    last = summary["last_frame"].to_numpy(dtype=int, copy=True)
    if events is not None and len(events) and len(summary):
        index = pd.Index(summary["particle"].to_numpy())
        for kind, ends, pick in (("dipole_nucleation", first, np.minimum),
                                 ("dipole_annihilation", last, np.maximum)):
            for ev in events[events["kind"] == kind].itertuples():
                at = index.get_indexer([int(p) for p in str(ev.particles).split()])
                at = at[at >= 0]
                ends[at] = pick(ends[at], int(ev.frame))
    # As its fates say: present from frame 0, surviving to the last frame (a track missed in
    # the first or last frames would otherwise drop out of the counts there).
    if "birth" in summary:
        first = np.where(summary["birth"] == "present", 0, first)
    if "death" in summary:
        last = np.where(summary["death"] == "survived", n_frames - 1, last)
    alive = (first[:, None] <= frames) & (frames <= last[:, None])
    row = {p: i for i, p in enumerate(summary["particle"])}
    couples = summary[(summary["kind"] == "dipole") & (summary["particle"] < summary["partner"])]
    n_dipoles = np.zeros(n_frames, dtype=int)
    for a, b in zip(couples["particle"], couples["partner"], strict=True):
        n_dipoles += alive[row[a]] & alive[row[int(b)]]
    if rocksalt_fraction is None:
        rocksalt_fraction = np.full(n_frames, np.nan)
    rocksalt_fraction = np.asarray(rocksalt_fraction, dtype=float)
    if rocksalt_fraction.shape != (n_frames,):
        raise ValueError(
            f"rocksalt_fraction has shape {rocksalt_fraction.shape}, expected ({n_frames},)"
        )
    return pd.DataFrame(
        {
            "frame": frames,
            "t_s": frame_times(pd.Series(frames), frame_interval_s, frame_times_s),
            "n_dislocations": alive.sum(axis=0),
            "n_dipoles": n_dipoles,
            "rocksalt_fraction": rocksalt_fraction,
        }
    )


def _near_edge(
    ends: pd.DataFrame, stage: str, image_shape: tuple[int, int] | None, band_px: float
) -> np.ndarray:
    """Whether each track's first (``stage="start"``) or last (``"stop"``) position
    lies within ``band_px`` of the image edge."""
    if image_shape is None:
        return np.zeros(len(ends), dtype=bool)
    return edge_distance_px(ends[f"x_{stage}"], ends[f"y_{stage}"], image_shape) <= band_px


def _paths_nm(tracks: pd.DataFrame, pixel_size_nm: float):
    """Tracks grouped by particle with drift-corrected positions ``xn``, ``yn`` [nm]."""
    xcol, ycol = position_columns(tracks)
    ordered = tracks.sort_values(["particle", "frame"], kind="stable")
    ordered = ordered.assign(
        xn=px_to_nm(ordered[xcol], pixel_size_nm), yn=px_to_nm(ordered[ycol], pixel_size_nm)
    ).reset_index(drop=True)
    return ordered.groupby("particle", sort=True)


def _track_ends(tracks: pd.DataFrame, pixel_size_nm: float, *, velocities: bool = False) -> pd.DataFrame:
    """Per particle: first and last detection (``frame``, raw ``x``, ``y`` [px],
    corrected ``xn``, ``yn`` [nm], suffixes ``_start`` / ``_stop``), bounding box of
    the corrected path (``xn_min`` ... ``yn_max`` [nm]) and mean ``hx``, ``hy``; with
    ``velocities``, the velocity at each end (`_end_velocities`: events need them).
    """
    paths = _paths_nm(tracks, pixel_size_nm)
    flags = [f for f in ("in_rocksalt", "at_specimen_edge") if f in tracks]
    columns = ["frame", "x", "y", "xn", "yn", *flags]
    start = paths[columns].first().add_suffix("_start")
    stop = paths[columns].last().add_suffix("_stop")
    box = paths[["xn", "yn"]].agg(["min", "max"])
    box.columns = [f"{axis}_{stat}" for axis, stat in box.columns]
    h = pd.DataFrame(unit(paths.obj[["hx", "hy"]].to_numpy(dtype=float)), columns=["hx", "hy"])
    mean_h = h.groupby(paths.obj["particle"].to_numpy()).mean()
    mean_h[["hx", "hy"]] = unit(mean_h.to_numpy())
    ends = start.join(stop).join(box).join(mean_h)
    return ends.join(_end_velocities(paths)) if velocities else ends


#: Detections at each end of a track whose straight-line fit gives its velocity there.
END_FIT_DETECTIONS = 5


def _end_velocities(paths) -> pd.DataFrame:
    """Per particle: corrected velocity [nm/frame] over its first (last)
    `END_FIT_DETECTIONS` detections, ``vxn_start``, ``vyn_start`` (``_stop``); zero
    from fewer than 3."""
    rows = {}
    for p, g in paths:
        row = []
        for end in (g.head(END_FIT_DETECTIONS), g.tail(END_FIT_DETECTIONS)):
            f = end["frame"].to_numpy(dtype=float)
            fit = len(f) >= 3 and np.ptp(f) > 0
            row += list(np.polyfit(f, end[["xn", "yn"]].to_numpy(dtype=float), 1)[0] if fit else (0.0, 0.0))
        rows[p] = row
    return pd.DataFrame.from_dict(rows, orient="index",
                                  columns=["vxn_start", "vyn_start", "vxn_stop", "vyn_stop"])


def _together(a: pd.Series, b: pd.Series, stage: str, criteria: DipoleCriteria) -> bool:
    """Whether two tracks start (``stage="start"``) or stop (``"stop"``) together."""
    frames_apart = abs(a[f"frame_{stage}"] - b[f"frame_{stage}"])
    distance = np.hypot(a[f"xn_{stage}"] - b[f"xn_{stage}"], a[f"yn_{stage}"] - b[f"yn_{stage}"])
    return bool(frames_apart <= criteria.max_frame_gap and distance <= criteria.distance_nm)


def _alone(a: pd.Series, b: pd.Series, criteria: DipoleCriteria) -> bool:
    """Whether track ``a`` nucleated long after ``b`` appeared, or annihilated long before
    ``b`` vanished: a dipole nucleates and annihilates as a pair."""
    lag = criteria.max_lag_frames
    return bool((a["birth"] in _JOINT_BIRTHS - _EDGE_FATES and a["frame_start"] - b["frame_start"] > lag)
                or (a["death"] in _JOINT_DEATHS - _EDGE_FATES and b["frame_stop"] - a["frame_stop"] > lag))


def _box_gaps(ends: pd.DataFrame) -> np.ndarray:
    """Distance [nm] between the bounding boxes of every two corrected paths."""
    gaps = []
    for axis in ("xn", "yn"):
        low, high = ends[f"{axis}_min"].to_numpy(), ends[f"{axis}_max"].to_numpy()
        gaps.append(np.maximum(np.maximum(low[:, None] - high, low - high[:, None]), 0.0))
    return np.hypot(*gaps)


#: Births (deaths) with which two tracks that start (stop) together form a dipole.
_JOINT_BIRTHS = {"nucleated", "from_rocksalt", "entered"}
_JOINT_DEATHS = {"annihilated", "into_rocksalt", "left"}
#: ... but not both at the frame edge: a pair may glide in or out together.
_EDGE_FATES = {"entered", "left"}


def _joint(fates: set[str], joint: set[str]) -> bool:
    """Whether two tracks' births (deaths) ``fates`` let them start (stop) as a dipole."""
    return fates <= joint and not fates <= _EDGE_FATES


def _fates_together(a: pd.Series, b: pd.Series, fate: str) -> set[str]:
    """Two tracks' births (``fate="birth"``) or deaths (``"death"``) judged together: a
    dipole nucleates (annihilates) as a pair. Where one core is seen in the movie's first
    (last) frame, the pair was there: both present (survived). Else, where one track
    nucleated by its own evidence, a partner counted present (survived) only because its
    own misses could hide the movie's first (last) frames nucleated (annihilated) too.
    Where both are present by that chance they stay so: side by side, the two cores are
    missed together (a poor frame there), not independently."""
    stage, kept, value = (("start", "present", "nucleated") if fate == "birth"
                          else ("stop", "survived", "annihilated"))
    fates, unseen = [a[fate], b[fate]], [a[f"p_unseen_{stage}"], b[f"p_unseen_{stage}"]]
    if value in fates and any(f == kept and p >= 1.0 for f, p in zip(fates, unseen, strict=True)):
        return {kept}
    by_chance = [f == kept and p < 1.0 for f, p in zip(fates, unseen, strict=True)]
    if any(by_chance) and value in fates:
        fates = [value if chance else f for f, chance in zip(fates, by_chance, strict=True)]
    return set(fates)


def _joint_fates(fates: pd.DataFrame, pairs: list[tuple[int, int]], ends: pd.DataFrame,
                 criteria: DipoleCriteria) -> pd.DataFrame:
    """Dipoles that start (stop) together at rock salt, or with one core at the frame
    edge, nucleated (annihilated) there: two opposite cores appearing (vanishing) at once,
    side by side, is the signature of the event itself, not of cores the rock salt
    happened to hide or that happened to cross the edge then. Their births (deaths) are
    judged together as `_fates_together` says."""
    fates = fates.set_index("particle")
    for a, b in pairs:
        for fate, joint, stage, value, kept in (
                ("birth", _JOINT_BIRTHS, "start", "nucleated", "present"),
                ("death", _JOINT_DEATHS, "stop", "annihilated", "survived")):
            ea, eb = (ends.loc[p].combine_first(fates.loc[p]) for p in (a, b))
            if not _together(ea, eb, stage, criteria):
                continue
            together = _fates_together(ea, eb, fate)
            if together == {kept}:
                fates.loc[[a, b], fate] = kept
            elif _joint(together, joint):
                fates.loc[[a, b], fate] = value
    return fates.reset_index()


def _pair_cost(a: pd.Series, b: pd.Series, paths, criteria: DipoleCriteria
               ) -> tuple[int, float] | None:
    """(evidence, separation [nm]) ranking a dipole candidate, or None if it is no dipole.
    Evidence 0: the two nucleate or annihilate together, the signature of a dipole, which
    outranks any closeness (1): a core there all along and 0.5 nm from one of a pair born
    together 1 nm apart took that core from its partner, and their dipole nucleation was
    lost (review stop 38)."""
    if _joint(_fates_together(a, b, "birth"), _JOINT_BIRTHS) and _together(a, b, "start", criteria):
        return 0, float(np.hypot(a["xn_start"] - b["xn_start"], a["yn_start"] - b["yn_start"]))
    if _joint(_fates_together(a, b, "death"), _JOINT_DEATHS) and _together(a, b, "stop", criteria):
        return 0, float(np.hypot(a["xn_stop"] - b["xn_stop"], a["yn_stop"] - b["yn_stop"]))
    if (a["frame_start"] == a["frame_stop"] == b["frame_start"] == b["frame_stop"]
            and {a["birth"], b["birth"]} == {"present"} and {a["death"], b["death"]} == {"survived"}):
        # One frame each, the whole movie (a single image): a dipole by its geometry alone.
        gap = float(np.hypot(a["xn_start"] - b["xn_start"], a["yn_start"] - b["yn_start"]))
        return (1, gap) if gap <= criteria.distance_nm else None
    if max(a["frame_start"], b["frame_start"]) >= min(a["frame_stop"], b["frame_stop"]):
        return None
    if _alone(a, b, criteria) or _alone(b, a, criteria):
        return None
    common = paths.get_group(a.name).merge(paths.get_group(b.name), on="frame")
    if len(common) < 2:
        return None
    gaps = np.hypot(common["xn_x"] - common["xn_y"], common["yn_x"] - common["yn_y"])
    if np.mean(gaps <= criteria.distance_nm) >= criteria.min_close_fraction:
        return 1, float(np.median(gaps))
    return None


def _events(info: pd.DataFrame, ends: pd.DataFrame, kind: str, criteria: DipoleCriteria,
            pixel_size_nm: float) -> list:
    """Event rows (frame, kind, x, y, particles, a dipole's corrected midpoint [nm] or None)
    of one kind ("nucleation" or "annihilation"), dipole events first; a
    dipole event lies at its pair's midpoint in the event frame's raw pixels, also where
    one core's end is a frame or two from the other's (the specimen drifted meanwhile)."""
    fate, value, stage = {
        "nucleation": ("birth", "nucleated", "start"),
        "annihilation": ("death", "annihilated", "stop"),
    }[kind]
    single = set(info.index[info[fate] == value])
    rows = []
    dipoles = info[(info["kind"] == "dipole") & (info.index < info["partner"])]
    for a, b in zip(dipoles.index, dipoles["partner"].astype(int), strict=True):
        joint = _joint_event(ends.loc[a], ends.loc[b], stage, criteria) if {a, b} <= single else None
        if joint is not None:
            frame, mid_nm, at = joint
            corrected_at = ends.loc[at, [f"xn_{stage}", f"yn_{stage}"]].to_numpy(float)
            raw_at = ends.loc[at, [f"x_{stage}", f"y_{stage}"]].to_numpy(float)
            x, y = raw_at + (mid_nm - corrected_at) / pixel_size_nm  # + the event frame's drift
            rows.append((int(frame), f"dipole_{kind}", x, y, f"{a} {b}", mid_nm))
            single -= {a, b}
    for p in sorted(single):
        frame, x, y = ends.loc[p, [f"frame_{stage}", f"x_{stage}", f"y_{stage}"]]
        rows.append((int(frame), kind, x, y, str(p), None))
    return rows


def _joint_event(a: pd.Series, b: pd.Series, stage: str, criteria: DipoleCriteria
                 ) -> tuple[int, np.ndarray, int] | None:
    """Where a dipole's two tracks nucleate (``stage="start"``) or annihilate (``"stop"``)
    together: (event frame, the pair's corrected midpoint there [nm], the particle seen in
    that frame), or None if they do not. The event frame is the earlier first (later last)
    detection; the other core is moved to it at its own velocity there (it is seen up to
    ``max_lag_frames`` later (earlier): missed meanwhile, or one blob with its partner's
    track while the two were too close to resolve) and must lie within ``distance_nm``."""
    frames = {a.name: a[f"frame_{stage}"], b.name: b[f"frame_{stage}"]}
    at = min(frames, key=frames.get) if stage == "start" else max(frames, key=frames.get)
    seen, other = (a, b) if at == a.name else (b, a)
    lag = frames[at] - frames[other.name]
    if abs(lag) > criteria.max_lag_frames:
        return None
    here, there = (t[[f"xn_{stage}", f"yn_{stage}"]].to_numpy(float) for t in (seen, other))
    moved = there + lag * other[[f"vxn_{stage}", f"vyn_{stage}"]].to_numpy(float)
    if np.hypot(*(moved - here)) > criteria.distance_nm:
        return None
    return int(frames[at]), 0.5 * (here + moved), int(at)


def _through_blob(row: tuple, blobs: tuple[np.ndarray, np.ndarray, np.ndarray],
                  radius_nm: float, max_frames: int) -> tuple:
    """A dipole event row moved earlier (nucleation) or later (annihilation) through the
    consecutive frames with an unlinked detection (``blobs``: frames, drift-corrected
    positions [nm], raw positions [px]) near the pair's midpoint in the event frame (the
    row's last field), to where the blob lies in the frame it moved to (raw pixels of
    that frame, as every event position)."""
    frame, kind, x, y, particles, mid = row
    if mid is None:  # a single core's event
        return row
    step = -1 if kind == "dipole_nucleation" else 1
    blob_frames, xy, raw = blobs
    distance = np.hypot(*(xy - mid).T)
    near = distance <= radius_nm
    frames = set(blob_frames[near].tolist())
    moved = frame
    for _ in range(max_frames):
        if moved + step not in frames:
            break
        moved += step
    if moved != frame:  # the blob there, not the pair's position frames away (drift)
        here = np.flatnonzero(near & (blob_frames == moved))
        x, y = raw[here[np.argmin(distance[here])]]
    return (int(moved), kind, float(x), float(y), particles, mid)
