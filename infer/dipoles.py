"""How far apart each dipole's two cores are, frame by frame, along b and along h: whether a
dipole expands by glide (its spacing along h, across the glide plane, stays put) or by climb,
as Wang et al. read their Fig. 3 by eye. Pure: tables in, a table out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dislotrack.data_gen.conventions import b_hat_from_h, unit
from dislotrack.infer.motion import frame_times

#: dipoles.csv's columns.
DIPOLE_COLUMNS = ["pair", "frame", "t_s", "particle_a", "particle_b", "separation_nm",
                  "glide_separation_nm", "climb_separation_nm"]


#: The dtypes of `dipole_separations`' columns, also of an empty table (object columns
#: there made every column of tables pooled over movies object).
_DTYPES = {"pair": "str", "frame": "int64", "t_s": "float64", "particle_a": "int64",
           "particle_b": "int64", "separation_nm": "float64", "glide_separation_nm": "float64",
           "climb_separation_nm": "float64"}


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in DIPOLE_COLUMNS})


def dipole_separations(tracks: pd.DataFrame, summary: pd.DataFrame, *, pixel_size_nm: float,
                       frame_interval_s: float | None = None,
                       frame_times_s: np.ndarray | None = None) -> pd.DataFrame:
    """The separation of each dipole's cores in every frame where both are tracked.

    Parameters
    ----------
    tracks : DataFrame
        ``particle, frame, x, y`` [px], ``hx, hy`` (tracks.csv).
    summary : DataFrame
        ``particle, kind, partner`` (track_summary.csv).
    pixel_size_nm : float
    frame_interval_s : float or None
        ``t_s`` is NaN without it.
    frame_times_s : ndarray or None
        The acquisition clock, one time [s] per frame: ``t_s`` follows it.

    Returns
    -------
    DataFrame
        Columns `DIPOLE_COLUMNS`, sorted by pair and frame: ``pair`` ("a b"), core ``a``
        the lower particle id; ``separation_nm`` the distance of ``b`` from ``a``;
        ``glide_separation_nm`` and ``climb_separation_nm`` its components along ``a``'s
        b-hat and **h** (its mean over the track, as for glide and climb; README ›
        Conventions). Both cores share the frame, so drift cancels. A dipole that expands
        by pure glide keeps ``climb_separation_nm``; by pure climb, ``glide_separation_nm``.

    Examples
    --------
    >>> t = pd.DataFrame({"particle": [0, 1], "frame": [3, 3], "x": [10.0, 14.0],
    ...                   "y": [20.0, 17.0], "hx": [1.0, -1.0], "hy": [0.0, 0.0]})
    >>> s = pd.DataFrame({"particle": [0, 1], "kind": "dipole", "partner": [1, 0]})
    >>> dipole_separations(t, s, pixel_size_nm=0.1)[
    ...     ["separation_nm", "glide_separation_nm", "climb_separation_nm"]].round(6).values.tolist()
    [[0.5, 0.3, 0.4]]
    """
    if not len(summary) or "kind" not in summary or not len(tracks):
        return _empty()
    pairs = summary[(summary["kind"] == "dipole") & (summary["particle"] < summary["partner"])]
    by_particle = dict(tuple(tracks.groupby("particle")))
    rows = []
    for a, b in zip(pairs["particle"].astype(int), pairs["partner"].astype(int), strict=True):
        if a not in by_particle or b not in by_particle:
            continue
        ta, tb = by_particle[a], by_particle[b]
        both = ta[["frame", "x", "y"]].merge(tb[["frame", "x", "y"]], on="frame", suffixes=("_a", "_b"))
        h = unit(unit(ta[["hx", "hy"]].to_numpy(dtype=float)).mean(axis=0))  # as motion's mean h
        d = (both[["x_b", "y_b"]].to_numpy(float) - both[["x_a", "y_a"]].to_numpy(float)) * pixel_size_nm
        rows.append(pd.DataFrame({
            "pair": f"{a} {b}", "frame": both["frame"].astype(int), "particle_a": a, "particle_b": b,
            "separation_nm": np.hypot(d[:, 0], d[:, 1]), "glide_separation_nm": d @ b_hat_from_h(h),
            "climb_separation_nm": d @ h}))
    if not rows:
        return _empty()
    out = pd.concat(rows, ignore_index=True).sort_values(["particle_a", "frame"], kind="stable")
    out.insert(2, "t_s", frame_times(out["frame"], frame_interval_s, frame_times_s))
    return out[DIPOLE_COLUMNS].reset_index(drop=True)
