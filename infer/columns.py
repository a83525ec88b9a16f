"""The output contract's names (DESIGN.md's schema 1 with the changes of schema 2, README
› Changelog 0.1.14): tables, their core columns and the
units in the velocity columns' names. Shared by `analyze`, the writers and `evaluate`."""

from __future__ import annotations

import pandas as pd

#: 2 (0.1.14): DESIGN.md's schema 1 plus the rock-salt births and deaths, per-frame velocity
#: column names, ``options.tta`` as a view count and an absolute ``input.path``.
SCHEMA_VERSION = 2
TABLES = ("detections", "tracks", "track_summary", "events", "counts", "drift", "dipoles")
DETECTION_COLUMNS = ["frame", "x", "y", "x_nm", "y_nm", "score", "hx", "hy", "bx_nm", "by_nm"]
TRACK_COLUMNS = [*DETECTION_COLUMNS, "particle", "t_s", "glide_nm", "climb_nm"]
#: Velocity columns of track_summary are ``*_nm_s``; without a frame interval they hold
#: nm per frame and are named ``*_nm_per_frame`` (DESIGN.md: units in the names), in the
#: table `analyze` returns as in the CSV.
PER_SECOND, PER_FRAME = "_nm_s", "_nm_per_frame"


def velocity_columns(table: pd.DataFrame, component: str) -> tuple[str, str, str] | None:
    """A track summary's ``component`` ("glide" or "climb") velocity and standard-error
    column names and their unit ("nm/s" or "nm/frame"), whichever the table has; None
    if it has neither.

    Examples
    --------
    >>> velocity_columns(pd.DataFrame(columns=["glide_velocity_nm_per_frame"]), "glide")
    ('glide_velocity_nm_per_frame', 'glide_velocity_se_nm_per_frame', 'nm/frame')
    """
    for suffix, unit in ((PER_SECOND, "nm/s"), (PER_FRAME, "nm/frame")):
        if f"{component}_velocity{suffix}" in table:
            return f"{component}_velocity{suffix}", f"{component}_velocity_se{suffix}", unit
    return None


def velocity_columns_as_written(table: pd.DataFrame, frame_interval_s: float | None) -> pd.DataFrame:
    """``table`` with its ``*_nm_s`` columns renamed ``*_nm_per_frame`` when the frame
    interval is unknown (their values are then per frame).

    Parameters
    ----------
    table : DataFrame
        A track summary with ``*_nm_s`` columns (`dislotrack.infer.events.summarise_tracks`);
        one already renamed is returned as it is.
    frame_interval_s : float or None
        The calibration's frame interval [s].

    Returns
    -------
    DataFrame
        ``table`` itself when the interval is known, else a renamed copy.
    """
    if frame_interval_s:
        return table
    return table.rename(columns={c: c[: -len(PER_SECOND)] + PER_FRAME
                                 for c in table.columns if c.endswith(PER_SECOND)})


def velocities_in_nm_s(table: pd.DataFrame, frame_interval_s: float | None) -> pd.DataFrame | None:
    """A written track_summary with ``*_nm_s`` columns.

    Parameters
    ----------
    table : DataFrame
        ``track_summary.csv`` as read.
    frame_interval_s : float or None
        The frame interval [s] to convert ``*_nm_per_frame`` columns with.

    Returns
    -------
    DataFrame or None
        ``table`` itself if it is in nm/s; a converted copy; None if it is per frame
        and ``frame_interval_s`` is unknown.
    """
    per_frame = [c for c in table.columns if c.endswith(PER_FRAME)]
    if not per_frame:
        return table
    if not frame_interval_s:
        return None
    out = table.copy()
    for c in per_frame:
        out[c[: -len(PER_FRAME)] + PER_SECOND] = out.pop(c) / frame_interval_s
    return out
