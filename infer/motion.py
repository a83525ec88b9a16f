"""Glide and climb of tracked dislocation cores: displacements and velocities.

Signs come from `dislotrack.data_gen.conventions.glide_climb`: glide is the
displacement along ``b_hat = (hy, -hx)``, climb the displacement along **h**
(positive towards the extra half-plane, which shortens it). Each track is
decomposed with its own mean **h**, so a noisy per-frame **h** does not mix glide
into climb.

When the frame interval is unknown, time is the frame index: ``t_s`` is NaN and the
``*_nm_s`` velocity columns hold nm per frame. The returned velocity table says
which in ``DataFrame.attrs["velocity_unit"]`` (``"nm/s"`` or ``"nm/frame"``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from dislotrack.data_gen.conventions import glide_climb, px_to_nm, unit
from dislotrack.infer.columns import velocity_columns
from dislotrack.infer.drift import position_columns

#: A track moves in a component when its velocity is more than this many standard errors
#: from zero ...
MOVING_SE = 2.0
#: ... and carries it at least this far over the track [nm] (about one (003) spacing: a
#: precisely measured drift of a few pm is not motion).
MIN_TRAVEL_NM = 0.4

VELOCITY_COLUMNS = [
    "glide_velocity_nm_s",
    "climb_velocity_nm_s",
    "glide_velocity_se_nm_s",
    "climb_velocity_se_nm_s",
]


def track_motion(
    tracks: pd.DataFrame,
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None = None,
    frame_times_s: np.ndarray | None = None,
) -> pd.DataFrame:
    """Add time and cumulative glide / climb to every tracked detection.

    Parameters
    ----------
    tracks : DataFrame
        ``particle``, ``frame``, ``x``, ``y`` [px], ``hx``, ``hy``; drift-corrected
        ``x_corr``, ``y_corr`` [px] are used instead of ``x``, ``y`` when present.
    pixel_size_nm : float
        Pixel size [nm/px].
    frame_interval_s : float or None
        Time between frames [s]; ``None`` if unknown (``t_s`` is then NaN).
    frame_times_s : ndarray or None
        The acquisition clock, one time [s] per frame of the movie (frame 0 at 0 s),
        where it steps unevenly (dropped frames): ``t_s`` follows it.

    Returns
    -------
    DataFrame
        ``tracks`` sorted by particle and frame (new index) with ``t_s`` [s]
        (frame 0 at 0 s), ``glide_nm`` and ``climb_nm`` [nm]: displacement from the
        track's first detection, split along the track's mean **h**.

    Examples
    --------
    >>> core = pd.DataFrame({"particle": 0, "frame": [0, 1], "x": [5.0, 7.0],
    ...                      "y": [5.0, 5.0], "hx": 0.0, "hy": 1.0})
    >>> track_motion(core, pixel_size_nm=0.1)[["glide_nm", "climb_nm"]].to_numpy().tolist()
    [[0.0, 0.0], [0.2, 0.0]]
    """
    if pixel_size_nm <= 0:
        raise ValueError(f"pixel_size_nm must be positive [nm/px], got {pixel_size_nm}")
    ordered = tracks.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    columns = position_columns(ordered)
    start = ordered.groupby("particle", sort=False)[columns].transform("first").to_numpy()
    displacement = px_to_nm(ordered[columns].to_numpy(dtype=float) - start, pixel_size_nm)
    glide, climb = glide_climb(displacement, _mean_h(ordered))
    return ordered.assign(
        t_s=frame_times(ordered["frame"], frame_interval_s, frame_times_s), glide_nm=glide, climb_nm=climb
    )


def track_velocities(
    tracks: pd.DataFrame,
    *,
    frame_interval_s: float | None = None,
    frame_times_s: np.ndarray | None = None,
) -> pd.DataFrame:
    """Glide and climb velocity of every track by a straight-line fit.

    Parameters
    ----------
    tracks : DataFrame
        Output of `track_motion` (needs ``particle``, ``frame``, ``glide_nm``,
        ``climb_nm``, ``hx``, ``hy``).
    frame_interval_s : float or None
        Time between frames [s]. ``None`` fits against the frame index, so the
        velocities are in nm/frame (see the module docstring).
    frame_times_s : ndarray or None
        The acquisition clock (one time [s] per frame of the movie): fitted against it.

    Returns
    -------
    DataFrame
        One row per particle: ``particle``, ``n_frames`` (detections in the track),
        ``first_frame``, ``last_frame``, ``glide_velocity_nm_s``,
        ``climb_velocity_nm_s``, ``glide_velocity_se_nm_s``,
        ``climb_velocity_se_nm_s`` (slope from `scipy.stats.linregress`; its
        standard error combined with the error of the track's mean **h** direction,
        which mixes glide into climb; NaN errors below 3 detections, all NaN below
        2), and the track's mean ``hx``, ``hy``.
    """
    missing = {"particle", "frame", "glide_nm", "climb_nm", "hx", "hy"} - set(tracks.columns)
    if missing:
        raise ValueError(f"tracks lack column(s) {sorted(missing)}; run track_motion first")
    groups = tracks.groupby("particle", sort=True)
    rows = [_fit_track(particle, group, frame_interval_s, frame_times_s) for particle, group in groups]
    columns = ["particle", "n_frames", "first_frame", "last_frame", *VELOCITY_COLUMNS, "hx", "hy"]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["velocity_unit"] = "nm/frame" if frame_interval_s is None else "nm/s"
    return table


def _fit_track(particle: int, group: pd.DataFrame, frame_interval_s: float | None,
               frame_times_s: np.ndarray | None = None) -> tuple:
    """One row of `track_velocities` for a single track."""
    frames = group["frame"].to_numpy()
    time = (np.asarray(frame_times_s, dtype=float)[frames.astype(int)] if frame_times_s is not None
            else frames * (1.0 if frame_interval_s is None else frame_interval_s))
    (glide, glide_se), (climb, climb_se) = (
        _slope(time, group[name].to_numpy(dtype=float)) for name in ("glide_nm", "climb_nm")
    )
    h = unit(group[["hx", "hy"]].to_numpy(dtype=float))
    mean_h = unit(h.mean(axis=0))
    # Turning the axes by d_theta moves climb * d_theta into glide and vice versa.
    turn = np.arctan2(mean_h[0] * h[:, 1] - mean_h[1] * h[:, 0], h @ mean_h)
    theta_se = np.std(turn, ddof=1) / np.sqrt(len(turn)) if len(turn) > 2 else np.nan
    return (
        particle,
        len(group),
        int(frames.min()),
        int(frames.max()),
        glide,
        climb,
        np.hypot(glide_se, climb * theta_se),
        np.hypot(climb_se, glide * theta_se),
        mean_h[0],
        mean_h[1],
    )


def _slope(time: np.ndarray, value: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and its standard error (NaN where undefined)."""
    if len(time) < 2 or np.ptp(time) == 0:
        return np.nan, np.nan
    if np.ptp(value) == 0:  # linregress returns NaN for a constant series
        return 0.0, 0.0 if len(time) > 2 else np.nan
    fit = stats.linregress(time, value)
    return float(fit.slope), float(fit.stderr) if len(time) > 2 else np.nan


def _mean_h(tracks: pd.DataFrame) -> np.ndarray:
    """Each row's track-mean **h** (mean of the unit vectors, normalised), shape (n, 2)."""
    h = pd.DataFrame(unit(tracks[["hx", "hy"]].to_numpy(dtype=float)), columns=["hx", "hy"])
    return unit(h.groupby(tracks["particle"].to_numpy()).transform("mean").to_numpy())


def frame_times(frames: pd.Series, frame_interval_s: float | None,
                frame_times_s: np.ndarray | None = None) -> np.ndarray:
    """Time of each frame [s] (frame 0 at 0 s): on the acquisition clock ``frame_times_s``
    (one time per frame of the movie) where given, else frame x interval; NaN when the
    interval [s] is unknown."""
    if frame_times_s is not None:
        return np.asarray(frame_times_s, dtype=float)[frames.to_numpy(dtype=int)]
    if frame_interval_s is None:
        return np.full(len(frames), np.nan)
    if frame_interval_s <= 0:
        raise ValueError(f"frame_interval_s must be positive [s], got {frame_interval_s}")
    return frames.to_numpy(dtype=float) * frame_interval_s


def moving_tracks(summary: pd.DataFrame, component: str,
                  frame_interval_s: float | None,
                  frame_times_s: np.ndarray | None = None) -> tuple[pd.Series, str]:
    """The tracks that move in ``component``: velocity more than `MOVING_SE` standard
    errors from zero, and at least `MIN_TRAVEL_NM` of travel at that velocity over the
    track (``last_frame - first_frame``, on the acquisition clock where given; not checked
    where the summary lacks them).

    Parameters
    ----------
    summary : DataFrame
        A track summary as `analyze` returns it (``particle``, ``first_frame``,
        ``last_frame``, ``<component>_velocity`` and ``<component>_velocity_se`` in
        ``*_nm_s`` or, without a frame interval, ``*_nm_per_frame`` columns).
    component : {"glide", "climb"}
    frame_interval_s : float or None
        The frame interval [s], for the travel of ``*_nm_s`` velocities.
    frame_times_s : ndarray, optional
        The acquisition clock [s] of every frame (`Calibration.frame_times_s`), which
        times ``*_nm_s`` velocities instead where it steps unevenly.

    Returns
    -------
    Series
        The moving tracks' velocities, indexed by particle (empty where the summary has
        no such columns).
    str
        Their unit, ``"nm/s"`` or ``"nm/frame"``.
    """
    cols = velocity_columns(summary, component)
    if cols is not None and cols[1] in summary:
        v, se, unit_name = cols
        per = (frame_interval_s or 1.0) if unit_name == "nm/s" else 1.0  # [s] per frame
        s = summary.set_index("particle")
        moving = s[v].abs() > MOVING_SE * s[se]
        if {"first_frame", "last_frame"} <= set(s.columns):
            if frame_times_s is not None and unit_name == "nm/s":
                clock = np.asarray(frame_times_s, dtype=float)
                lasted = clock[s.last_frame.to_numpy(dtype=int)] - clock[s.first_frame.to_numpy(dtype=int)]
            else:
                lasted = (s.last_frame - s.first_frame).to_numpy(dtype=float) * per
            moving &= s[v].abs() * lasted >= MIN_TRAVEL_NM
        return s.loc[moving, v].rename(component), unit_name
    return pd.Series(dtype=float, name=component), "nm/s"
