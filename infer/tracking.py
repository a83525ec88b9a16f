"""Everything after the detector: stage jumps, linking, motion, events and counts.

`track_detections` is pure (tables in, tables out), so detections from any source are
analysed exactly as `dislotrack.infer.pipeline.analyze` analyses its own.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.data_gen.text import first_few
from dislotrack.infer.calibration import Calibration
from dislotrack.infer.columns import TRACK_COLUMNS, velocity_columns_as_written
from dislotrack.infer.drift import apply_drift
from dislotrack.infer.events import (
    DipoleCriteria,
    count_dislocations,
    drop_unseen_edge_events,
    find_events,
    summarise_tracks,
)
from dislotrack.infer.interface import option
from dislotrack.infer.jumps import stage_jumps, with_jumps
from dislotrack.infer.lattice import Lattice, snap_h
from dislotrack.infer.linking import (
    ASSUMED_FRAME_INTERVAL_S,
    DEFAULT_MAX_SPEED_NM_S,
    MIN_SEARCH_RANGE_NM,
    extend_tracks,
    link_cores,
    require_columns,
    search_range_px,
)
from dislotrack.infer.motion import track_motion
from dislotrack.infer.options import DEFAULT_MIN_LENGTH, check_calibration_options, check_linking_options
from dislotrack.infer.warning_log import LEADS, keeping_tracking_warnings

logger = logging.getLogger(__name__)

#: ``drift.attrs`` key: the stage jumps added to the registered drift (`add_stage_jumps`).
STAGE_JUMPS = "stage_jumps"

#: Start of the stage-jump warning (`add_stage_jumps`).
JUMP_WARNING = "the whole field jumped between frames"


def add_stage_jumps(detections: pd.DataFrame, drift: pd.DataFrame, cal: Calibration,
                      max_speed_nm_s: float, shape: tuple[int, int]) -> pd.DataFrame:
    """``drift`` plus the stage jumps the cores show (`stage_jumps`), said in a warning."""
    reach = search_range_px(pixel_size_nm=cal.pixel_size_nm, frame_interval_s=cal.frame_interval_s,
                            max_speed_nm_s=max_speed_nm_s)
    jumps = stage_jumps(detections, drift, pixel_size_nm=cal.pixel_size_nm, reach_px=reach,
                        image_shape=shape)
    if jumps.empty:
        return drift
    said = "; ".join(f"frame {j.frame}: ({j.dx:+.1f}, {j.dy:+.1f}) px, {j.n_cores} cores"
                     for j in jumps.head(5).itertuples()) + ("; ..." if len(jumps) > 5 else "")
    logger.warning(JUMP_WARNING + " (a stage jump the image registration "
                   "cannot follow on a lattice) in %d frame(s), measured from the cores' common "
                   "shift and added to the drift (drift.csv) from there on: %s", len(jumps), said,
                   extra={LEADS: True})  # it explains the drift-step warning
    out = with_jumps(drift, jumps)
    out.attrs[STAGE_JUMPS] = jumps[["frame", "dx", "dy"]].to_dict("records")  # for `relink`
    return out


def remove_stage_jumps(drift: pd.DataFrame) -> pd.DataFrame:
    """The registered drift, before `add_stage_jumps` added its jumps."""
    jumps = pd.DataFrame(drift.attrs.get(STAGE_JUMPS, []), columns=["frame", "dx", "dy"])
    out = with_jumps(drift, jumps.assign(dx=-jumps.dx, dy=-jumps.dy))
    out.attrs.pop(STAGE_JUMPS, None)
    return out


@dataclass(repr=False)
class TrackedTables:
    """What `track_detections` derives from a detection table (README › Outputs' columns), and the
    warnings logged meanwhile."""

    tracks: pd.DataFrame
    track_summary: pd.DataFrame
    events: pd.DataFrame
    counts: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # short, as AnalysisResult's: not four tables in full
        return (f"TrackedTables({len(self.counts)} frames, {len(self.tracks)} tracked detections, "
                f"{len(self.track_summary)} tracks, {len(self.events)} events, "
                f"{len(self.warnings)} warnings)")


@keeping_tracking_warnings
def track_detections(detections: pd.DataFrame, *, pixel_size_nm: float,
                     frame_interval_s: float | None = None, n_frames: int, image_shape: tuple[int, int],
                     drift: pd.DataFrame | None = None, weak: pd.DataFrame | None = None,
                     rocksalt_fraction: np.ndarray | None = None,
                     max_speed_nm_s: float = DEFAULT_MAX_SPEED_NM_S, memory: int = 5,
                     min_length: int = DEFAULT_MIN_LENGTH, max_gap: int = 12, min_track_score: float = 0.0,
                     border_nm: float = 2.0,
                     lattice: Lattice | None = None,
                     frame_times_s: np.ndarray | None = None) -> TrackedTables:
    """Link, extend, measure and summarise detections: everything after the detector.

    Pure (tables in, tables out), so detections from any source (the network, the GPA
    baseline, another detector, hand annotations or a generator's truth) are analysed
    exactly as `analyze` analyses its own. ``track_summary``'s velocity columns are
    ``*_nm_s``, or ``*_nm_per_frame`` when ``frame_interval_s`` is None (as written to
    track_summary.csv; `dislotrack.infer.columns.velocities_in_nm_s` converts them).

    Parameters
    ----------
    detections : DataFrame
        ``frame, x, y, score, hx, hy`` (+ ``bx_nm, by_nm``), raw image pixels; an
        optional boolean ``in_rocksalt`` (`dislotrack.infer.events.near_rocksalt`)
        makes tracks that begin or end there ``from_rocksalt`` / ``into_rocksalt``
        instead of nucleated / annihilated, an optional boolean ``at_specimen_edge``
        (`dislotrack.infer.cleanup.clean_frame`) ``entered`` / ``left``
        (`dislotrack.infer.events.birth_death`). Rows
        are linked anew: a ``particle`` column (e.g. hand-annotated identities) is not
        used, and tracks are numbered by the linker.
    pixel_size_nm, frame_interval_s : float
        Calibration [nm/px], [s] (``frame_interval_s`` None: velocities per frame).
    n_frames : int
        Frames in the movie (a track reaching the last one survived).
    image_shape : (ny, nx)
        Frame size [px] (tracks starting or ending near its edge entered or left).
    drift : DataFrame, optional
        ``frame, dx, dy`` [px] (`dislotrack.infer.drift.measure_drift`); default none.
    weak : DataFrame, optional
        Sub-threshold peaks that may extend track ends (`extend_tracks`); without them
        (e.g. ``res.detections`` alone) tracks can end a frame sooner than `analyze`'s:
        pass ``weak=res.weak``, or use ``res.relink``.
    rocksalt_fraction : ndarray, optional
        Per frame, for ``counts`` (default NaN: not judged).
    max_speed_nm_s, memory, min_length, max_gap, min_track_score, border_nm
        As in `analyze`. Without ``frame_interval_s`` the speed limit applies at
        `dislotrack.infer.linking.ASSUMED_FRAME_INTERVAL_S` per frame (a warning says so
        if ``max_speed_nm_s`` is not the default).
    lattice : Lattice, optional
        The movie's lattice (`dislotrack.infer.lattice.measure_lattice`): where it
        shows an in-layer reflection, each track's **h** and **b** become those of the
        allowed Burgers vector nearest its mean **h** (`snap_h`) before glide and
        climb are split.
    frame_times_s : array_like, optional
        The acquisition clock: one time [s] per frame (``n_frames``, increasing, frame 0
        at 0 s), for a movie whose clock steps unevenly (dropped frames): ``t_s`` and the
        velocities follow it (``frame_interval_s``, the typical step, which it needs,
        still sets the linking range per frame; gap closing joins tracks broken at a long
        step by the time elapsed). `analyze` passes `Calibration.frame_times_s`.

    Raises
    ------
    TypeError
        If ``detections``, ``drift`` or ``weak`` is not a DataFrame.
    ValueError
        Naming the columns one lacks (``score`` is needed only with ``min_track_score``).

    Examples
    --------
    >>> det = pd.DataFrame({"frame": range(10), "x": np.linspace(50, 59, 10), "y": 40.0,
    ...                     "score": 0.9, "hx": 0.0, "hy": -1.0})
    >>> out = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=10,
    ...                        image_shape=(100, 100), min_length=3)
    >>> # moving along x at 0.1 nm/s with h up (-y): pure glide, sign per README › Conventions
    >>> out.track_summary[["glide_velocity_nm_s", "climb_velocity_nm_s"]].round(3).values.tolist()
    [[-0.1, 0.0]]
    """
    check_linking_options(max_speed_nm_s=max_speed_nm_s, memory=memory, min_length=min_length,
                          max_gap=max_gap, min_track_score=min_track_score, border_nm=border_nm)
    shape_ok = (isinstance(image_shape, (tuple, list, np.ndarray)) and len(image_shape) == 2
                and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                        for v in image_shape))
    if not shape_ok:
        raise ValueError(f"image_shape must be the frames' (ny, nx) [px], got {image_shape!r}")
    image_shape = (int(image_shape[0]), int(image_shape[1]))
    if lattice is not None and not isinstance(lattice, Lattice):
        raise TypeError(f"lattice must be a Lattice (dislotrack.infer.lattice.measure_lattice) or "
                        f"None, got {type(lattice).__name__}")
    check_calibration_options(pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s,
                              d_spacing_nm=D003_LINIO2_NM)  # no spacing here: a valid stand-in
    if pixel_size_nm is None:
        raise ValueError("pixel_size_nm is needed [nm/px]: detections are in pixels")
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 1:
        raise ValueError(f"n_frames must be an int >= 1 (the frames of the movie), got {n_frames!r}")
    require_columns(detections, ["frame", "x", "y", "hx", "hy", *(["score"] if min_track_score > 0 else [])],
                    name="detections")
    check_detection_values(detections, image_shape, name="detections")
    beyond = sorted(set(detections["frame"][(detections["frame"] < 0)
                                            | (detections["frame"] >= n_frames)].tolist()))
    if beyond:
        raise ValueError(f"detections in frame(s) {first_few([str(f) for f in beyond], 5)} outside "
                         f"the movie's 0..{n_frames - 1} (n_frames={n_frames})")
    if drift is not None:
        require_columns(drift, ["frame", "dx", "dy"], name="drift")
    if weak is not None:  # weak peaks extend tracks by score, so they need one
        require_columns(weak, ["frame", "x", "y", "score", "hx", "hy"], name="weak")
        check_detection_values(weak, image_shape, name="weak")
    ps, dt = pixel_size_nm, frame_interval_s
    if dt is None and n_frames > 1 and max_speed_nm_s != DEFAULT_MAX_SPEED_NM_S:
        # Without a frame interval the speed limit is a step per frame (`search_range_px`).
        reach = search_range_px(pixel_size_nm=ps, frame_interval_s=None, max_speed_nm_s=max_speed_nm_s)
        logger.warning("the frame interval is unknown (pass %s): %s nm/s was applied at an assumed "
                       "%g s per frame, so cores were linked within %.3g nm (%.3g px) per frame",
                       option("frame_interval_s", "S"), option("max_speed_nm_s", f"{max_speed_nm_s:g}"),
                       ASSUMED_FRAME_INTERVAL_S, reach * ps, reach)
    explicit = max_speed_nm_s != DEFAULT_MAX_SPEED_NM_S
    if dt is not None and explicit and max_speed_nm_s * dt < MIN_SEARCH_RANGE_NM:
        logger.warning("%s nm/s allows %.3g nm per %g s frame, under the detections' own "
                       "scatter: cores were linked within %g nm per frame",
                       option("max_speed_nm_s", f"{max_speed_nm_s:g}"), max_speed_nm_s * dt, dt,
                       MIN_SEARCH_RANGE_NM)
    # A movie shorter than min_length (a single image above all) keeps its cores as tracks.
    if min_length > n_frames >= 1 and min_length != DEFAULT_MIN_LENGTH:  # the user's value
        # "analysed": a --frames window is not the movie
        logger.warning("%s is longer than the %d frame%s analysed: used %d, so %s",
                       option("min_length", min_length), n_frames, "s" if n_frames > 1 else "", n_frames,
                       "every core of the image is a track" if n_frames == 1
                       else "only cores detected in every frame make tracks")
    elif min_length > n_frames > 1:  # the default on a short movie: velocities from few points
        logger.warning("%d frames were analysed, fewer than the %d a track needs by default "
                       "(%s): tracks are cores found in all %d frames, and "
                       "their velocities rest on %d points%s", n_frames, min_length,
                       option("min_length"), n_frames,
                       n_frames, " (no standard errors)" if n_frames == 2 else "")
    min_length = max(1, min(min_length, n_frames))
    if frame_times_s is not None:
        if dt is None:  # velocities would be per frame, times in seconds
            raise ValueError("frame_times_s needs frame_interval_s (the clock's typical step [s]): "
                             "without an interval velocities are per frame")
        frame_times_s = checked_clock(frame_times_s, n_frames)
    if drift is None:
        drift = pd.DataFrame({"frame": np.arange(n_frames), "dx": 0.0, "dy": 0.0})
    if rocksalt_fraction is None:  # not 0, which would claim a frame free of rock salt
        rocksalt_fraction = np.full(n_frames, np.nan)
    detections = _with_optional_columns(detections.reset_index(drop=True), ps)
    weak = _with_optional_columns(weak, ps) if weak is not None else None
    corrected = apply_drift(detections, drift)
    weak = apply_drift(weak, drift) if weak is not None and len(weak) else None
    if len(corrected):
        linked = link_cores(corrected, pixel_size_nm=ps, frame_interval_s=dt,
                            max_speed_nm_s=max_speed_nm_s, memory=memory, min_length=min_length,
                            max_gap=max_gap, min_mean_score=min_track_score,
                            frame_times_s=frame_times_s)
        if weak is not None:
            linked = extend_tracks(linked, weak, pixel_size_nm=ps)
        linked = snap_h(linked, lattice)
    else:
        linked = corrected.assign(particle=pd.Series(dtype=int))
    if len(corrected) and not len(linked) and n_frames > 1:  # say why, not just "0 tracks"
        assumed = "" if dt is not None else f" at an assumed {ASSUMED_FRAME_INTERVAL_S:g} s per frame"
        causes = [f"flickering false cores ({option('tta', 2)} averages two views and drops many)",
                  f"cores moving faster than {option('max_speed_nm_s')} allows{assumed}"]
        if min_track_score > 0:
            # No flag of infer: a keyword of analyze and track_detections only.
            causes.append(f"tracks of a mean score under min_track_score={min_track_score:g}")
        logger.warning("%d detection%s but no track: no core was linked over %d frames (%s); "
                       "%s give this", len(corrected), "s" * (len(corrected) != 1), min_length,
                       option("min_length", min_length), " or ".join(causes))
    if len(linked):
        tracks = track_motion(linked, pixel_size_nm=ps, frame_interval_s=dt, frame_times_s=frame_times_s)
    else:
        tracks = linked.assign(t_s=pd.Series(dtype=float), glide_nm=pd.Series(dtype=float),
                               climb_nm=pd.Series(dtype=float))
    # Partners seen first (last) up to `memory` frames apart still nucleate (annihilate) together.
    dipoles = DipoleCriteria(max_frame_gap=max(memory, DipoleCriteria.max_frame_gap))
    summary = summarise_tracks(tracks, pixel_size_nm=ps, frame_interval_s=dt, frame_times_s=frame_times_s,
                               n_frames=n_frames,
                               image_shape=image_shape, border_nm=border_nm, dipoles=dipoles)
    # Strong detections left out of every track and unused weak ones: close-dipole blobs.
    unlinked = _unlinked(corrected if weak is None else pd.concat([corrected, weak]), linked)
    events = find_events(tracks, summary, pixel_size_nm=ps, frame_interval_s=dt,
                         frame_times_s=frame_times_s, dipoles=dipoles,
                         unlinked=unlinked)
    events, summary = drop_unseen_edge_events(events, summary, n_frames=n_frames)
    counts = count_dislocations(summary, n_frames=n_frames, frame_interval_s=dt, frame_times_s=frame_times_s,
                                rocksalt_fraction=np.asarray(rocksalt_fraction), events=events)
    tracks = tracks[[c for c in [*TRACK_COLUMNS, "x_corr", "y_corr"] if c in tracks.columns]]
    # Units in the names, as written to track_summary.csv: per frame without an interval.
    summary = velocity_columns_as_written(summary, dt)
    return TrackedTables(tracks, summary, events, counts)


def checked_clock(frame_times_s, n_frames: int) -> np.ndarray:
    """``frame_times_s`` as floats, refused (ValueError) unless one finite time per frame,
    increasing, frame 0 at 0 s."""
    times = np.asarray(frame_times_s, dtype=float)
    if times.shape != (n_frames,) or not np.isfinite(times).all() or (np.diff(times) <= 0).any() \
            or (n_frames and times[0] != 0):
        raise ValueError(f"frame_times_s must hold one increasing time [s] per frame, frame 0 at "
                         f"0 s ({n_frames} frames), got shape {times.shape}")
    return times


def check_detection_values(table: pd.DataFrame, image_shape: tuple[int, int], *, name: str) -> None:
    """Raises ValueError, naming the column and how many rows, for detections that would
    give wrong tables without a word: frame numbers that are not whole, positions or **h**
    that are not finite numbers, **h** of zero length (no direction), positions outside
    frames of ``image_shape`` (ny, nx) [px] (a swapped shape makes tracks enter and leave
    instead of nucleating), and an ``in_rocksalt`` or ``at_specimen_edge`` that is not boolean."""
    def refuse(rows: pd.Series, what: str) -> None:
        if rows.any():
            raise ValueError(f"{name}: {int(rows.sum())} of {len(table)} rows {what}")

    numeric = {c: pd.to_numeric(table[c], errors="coerce") for c in ("frame", "x", "y", "hx", "hy")}
    for c, v in numeric.items():
        refuse(~np.isfinite(v.astype(float)), f"have a {c} that is not a finite number")
    refuse(numeric["frame"] != np.round(numeric["frame"]), "have a frame that is not a whole number")
    refuse(np.hypot(numeric["hx"], numeric["hy"]) == 0, "have h = (0, 0): h is the direction into "
           "the extra half-plane (drop them, or give one)")
    # Pixel centres run 0..n-1; a half pixel more on each side: the frame's edges, and
    # clicks in pixel-corner coordinates (0..n, as Fiji gives them).
    ny, nx = image_shape
    outside = ((numeric["x"] < -1) | (numeric["x"] > nx) | (numeric["y"] < -1) | (numeric["y"] > ny))
    refuse(outside, f"lie outside frames of image_shape (ny, nx) = ({ny}, {nx}) px (x up to "
           f"{numeric['x'].max():.6g}, y up to {numeric['y'].max():.6g}): is the shape (ny, nx)?")
    for flag in ("in_rocksalt", "at_specimen_edge"):
        flags = table[flag] if flag in table.columns and len(table) else None
        if flags is not None and (not pd.api.types.is_bool_dtype(flags) or flags.isna().any()):
            raise ValueError(f"{name}: {flag} must be boolean (True/False) throughout, got dtype "
                             f"{flags.dtype}" + (" with missing values" if flags.isna().any() else ""))


def _with_optional_columns(table: pd.DataFrame, pixel_size_nm: float) -> pd.DataFrame:
    """``table`` with the columns tracks.csv needs where a source gives none: ``bx_nm``,
    ``by_nm`` (NaN: unknown) and ``x_nm``, ``y_nm`` (the raw position in nm)."""
    missing = {c: np.nan for c in ("bx_nm", "by_nm") if c not in table.columns}
    missing |= {f"{c}_nm": table[c] * pixel_size_nm for c in ("x", "y") if f"{c}_nm" not in table.columns}
    return table.assign(**missing) if missing else table


def _unlinked(detections: pd.DataFrame, linked: pd.DataFrame) -> pd.DataFrame:
    """The detections that are in no track."""
    if not len(linked):
        return detections
    keys = ["frame", "x", "y"]
    merged = detections.merge(linked[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)
