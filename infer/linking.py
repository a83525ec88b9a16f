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
``r`` must keep its **h** exactly; a 20 deg change of **h** shrinks the allowed step
to 0.89 ``r``.

References
----------
Crocker, J. C. & Grier, D. G. J. Colloid Interface Sci. 179, 298 (1996), as
implemented by trackpy (Allan et al., doi:10.5281/zenodo.1226458).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import trackpy

from dislotrack.data_gen.conventions import nm_to_px, unit
from dislotrack.infer.drift import position_columns

#: Largest core displacement per frame [nm] assumed when the frame interval is
#: unknown: 2 nm/s (the default ``max_speed_nm_s``) at the usual 1 frame/s.
DEFAULT_MAX_STEP_NM = 2.0

#: Smallest search range [px]; detections jitter by about a pixel even for a still core.
MIN_SEARCH_RANGE_PX = 1.0

_LINK_COLUMNS = ["_link_y", "_link_x", "_link_hy", "_link_hx"]


def search_range_px(
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None = None,
    max_speed_nm_s: float = 2.0,
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
        Largest plausible core speed [nm/s]; used when the frame interval is known.
    max_step_nm : float or None
        Largest displacement per frame [nm]. Overrides the speed; defaults to
        `DEFAULT_MAX_STEP_NM` when the frame interval is unknown.

    Returns
    -------
    float
        The range [px], at least `MIN_SEARCH_RANGE_PX`.

    Examples
    --------
    >>> search_range_px(pixel_size_nm=0.1, frame_interval_s=1.0, max_speed_nm_s=0.5)
    5.0
    """
    if pixel_size_nm <= 0:
        raise ValueError(f"pixel_size_nm must be positive [nm/px], got {pixel_size_nm}")
    if max_step_nm is None:
        if frame_interval_s is None:
            max_step_nm = DEFAULT_MAX_STEP_NM
        elif frame_interval_s <= 0 or max_speed_nm_s <= 0:
            raise ValueError(
                f"frame_interval_s [s] and max_speed_nm_s [nm/s] must be positive, got "
                f"{frame_interval_s} and {max_speed_nm_s}"
            )
        else:
            max_step_nm = max_speed_nm_s * frame_interval_s
    return max(float(nm_to_px(max_step_nm, pixel_size_nm)), MIN_SEARCH_RANGE_PX)


def link_cores(
    detections: pd.DataFrame,
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None = None,
    max_speed_nm_s: float = 2.0,
    max_step_nm: float | None = None,
    memory: int = 2,
    min_length: int = 3,
    max_h_change_deg: float = 45.0,
) -> pd.DataFrame:
    """Link detected cores into tracks; cores of opposite **h** are never linked.

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
        interval; `DEFAULT_MAX_STEP_NM` per frame when the interval is unknown).
    memory : int
        Number of frames a core may go undetected and still keep its track.
    min_length : int
        Tracks with fewer detections are dropped (`trackpy.filter_stubs`).
    max_h_change_deg : float
        Largest change of **h** between linked detections [deg], in (0, 180).

    Returns
    -------
    DataFrame
        The kept detections with an added integer ``particle`` column (0, 1, ...
        in order of first appearance), sorted by particle and frame, new index.
    """
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
    table = _linking_space(detections)
    with _quiet_trackpy():
        linked = trackpy.link(
            table,
            (reach, reach, h_reach, h_reach),
            pos_columns=_LINK_COLUMNS,
            memory=memory,
        )
        kept = trackpy.filter_stubs(linked, threshold=min_length)
    kept = kept.reset_index(drop=True).drop(columns=_LINK_COLUMNS)
    kept = kept.sort_values(["frame", "particle"], kind="stable")
    kept["particle"] = pd.factorize(kept["particle"])[0]
    return kept.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)


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
