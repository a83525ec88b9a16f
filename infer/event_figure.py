"""``figures/events.png``: the frames around each nucleation and annihilation, cropped to
the event, as the time-resolved panels of Wang et al.'s Fig. 2A/B and 3A.

The crops follow the specimen (`event_windows`: drift moves the crop, not the event),
so a core that stays put in the crystal stays put across a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dislotrack.data_gen.conventions import b_hat_from_h
from dislotrack.infer.figures import (
    SCALE_BAR_CORNERS,
    frame_time,
    input_name,
    nothing_to_show,
    place_labels,
    rim_colour,
    save_figure,
    scale_bar,
    scale_bar_box,
    time_stamp,
    track_colour,
)
from dislotrack.infer.linking import with_gaps
from dislotrack.infer.result import AnalysisResult, require_result

#: Frames shown around each event, relative to its frame (events.csv's: a nucleation's
#: first detection, an annihilation's last), so a row runs from before to after it.
OFFSETS = (-2, -1, 0, 1, 2)

#: Side of each crop [nm]: a dipole's two cores a few nm apart and the lattice around them.
CROP_NM = 8.0

#: Fewest pixels a crop is wide, whatever the pixel size (a coarse one would show a few).
MIN_CROP_PX = 24

#: Untracked peaks (strong or weak, in no track) within this distance [nm] of the event's
#: specimen point are circled: the unresolved blob a dipole event was moved through
#: (`dislotrack.infer.events`) and any core the tracker left out.
UNTRACKED_NM = 1.0

#: Events drawn at most (rows); more are thinned evenly over the movie (events.csv lists all).
MAX_EVENTS = 8


class Frames(Protocol):
    """What frames are read from: a `dislotrack.infer.readers.Movie` or a (t, y, x) array."""

    @property
    def shape(self) -> tuple[int, ...]: ...  # (t, y, x)

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def chosen_events(events: pd.DataFrame, max_events: int = MAX_EVENTS) -> pd.DataFrame:
    """The events drawn: all of them up to ``max_events``, else ``max_events`` spread evenly
    over the table (sorted by frame), first and last included.

    Examples
    --------
    >>> ev = pd.DataFrame({"frame": range(10)})
    >>> chosen_events(ev, 4).frame.tolist()
    [0, 3, 6, 9]
    """
    if max_events < 1:
        raise ValueError(f"max_events must be at least 1, got {max_events}")
    events = events.sort_values("frame", kind="stable")
    if len(events) <= max_events:
        return events
    return events.iloc[np.unique(np.linspace(0, len(events) - 1, max_events).round().astype(int))]


def crop_side_px(pixel_size_nm: float | None, shape: tuple[int, int]) -> int:
    """Side of the crops [px]: `CROP_NM` (80 px without a pixel size), at least
    `MIN_CROP_PX`, at most the frame's longer side."""
    side = round(CROP_NM / pixel_size_nm) if pixel_size_nm else round(CROP_NM / 0.1)
    return int(min(max(side, MIN_CROP_PX), max(shape)))


def event_windows(res: AnalysisResult, events: pd.DataFrame,
                  offsets: Sequence[int] = OFFSETS) -> pd.DataFrame:
    """Where each panel of the figure looks: one row per event and offset.

    Parameters
    ----------
    res : AnalysisResult
        Its ``drift`` (``x_corr = x - dx``: the specimen point at the event is at
        ``x + dx[frame] - dx[event frame]`` in another frame).
    events : DataFrame
        Rows of ``res.events`` (`chosen_events`).
    offsets : sequence of int
        Frames relative to each event's.

    Returns
    -------
    DataFrame
        ``event`` (the row's index in ``events``), ``offset``, ``frame`` and the crop's
        centre ``x``, ``y`` [px, raw image]; ``frame`` may lie outside the movie (drawn
        blank).
    """
    drift = res.drift.set_index("frame")[["dx", "dy"]] if res.drift is not None and len(res.drift) else None
    rows = []
    for i, ev in events.iterrows():
        for k in offsets:
            f = int(ev["frame"]) + int(k)
            x, y = float(ev["x"]), float(ev["y"])
            if drift is not None and f in drift.index and int(ev["frame"]) in drift.index:
                x += drift.at[f, "dx"] - drift.at[int(ev["frame"]), "dx"]
                y += drift.at[f, "dy"] - drift.at[int(ev["frame"]), "dy"]
            rows.append((i, int(k), f, x, y))
    return pd.DataFrame(rows, columns=["event", "offset", "frame", "x", "y"])


def crop(frame: np.ndarray, x: float, y: float, side: int) -> tuple[np.ndarray, int, int]:
    """A ``side``-square crop of ``frame`` centred on pixel ``(round(x), round(y))``, NaN
    beyond the frame's edge (the event stays in the centre), and its top-left pixel
    ``(x0, y0)`` in the frame (pixel ``(i, j)`` of the crop is ``(x0 + j, y0 + i)``).

    Examples
    --------
    >>> c, x0, y0 = crop(np.arange(16.0).reshape(4, 4), 0.2, 3.0, 3)
    >>> (x0, y0), c[0].tolist()
    ((-1, 2), [nan, 8.0, 9.0])
    """
    x0, y0 = round(x) - side // 2, round(y) - side // 2
    out = np.full((side, side), np.nan, dtype=np.float32)
    h, w = frame.shape
    ys, xs = slice(max(y0, 0), min(y0 + side, h)), slice(max(x0, 0), min(x0 + side, w))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = frame[ys, xs]
    return out, x0, y0


def read_crops(frames: Frames, windows: pd.DataFrame, side: int
               ) -> dict[tuple[int, int], tuple[np.ndarray, int, int]]:
    """`crop` of every window within the movie, by ``(event, offset)``.

    Parameters
    ----------
    frames : Movie or ndarray (t, y, x)
    windows : DataFrame
        `event_windows`.
    side : int
        Crop side [px].

    Returns
    -------
    dict
        ``(event, offset) -> (crop, x0, y0)``; each frame is read once, and only its crops
        are kept, not the whole frame.
    """
    n = len(frames)
    out: dict[tuple[int, int], tuple[np.ndarray, int, int]] = {}
    for f, panels in windows[(windows.frame >= 0) & (windows.frame < n)].groupby("frame"):
        image = np.asarray(frames[int(f)], dtype=np.float32)
        for w in panels.itertuples():
            out[(w.event, w.offset)] = crop(image, w.x, w.y, side)
    return out


def events(res: AnalysisResult, frames: Frames, path: Path, *, max_events: int = MAX_EVENTS,
           offsets: Sequence[int] = OFFSETS) -> None:
    """Write `events_figure` (arguments as there) to ``path``."""
    save_figure(events_figure(res, frames, max_events=max_events, offsets=offsets), path)


def events_figure(res: AnalysisResult, frames: Frames, *, max_events: int = MAX_EVENTS,
                  offsets: Sequence[int] = OFFSETS) -> Figure:
    """A row per event (up to ``max_events``, `chosen_events`), a column per frame around
    it (``offsets``): crops of `CROP_NM` centred on the event and following the drift,
    one contrast per row, the tracked cores drawn as ⊥ in their track's colour (the colours
    of trajectories.png; the stem along h, into the extra half-plane, the bar along b) with
    the track number (dotted in frames the track skips, `with_gaps`); the event's frame
    framed in red; peaks in no track within `UNTRACKED_NM` of the event circled white (the
    blob a dipole event moved through), explained under the figure. The scale bar takes
    a corner of the first crop clear of the cores (`SCALE_BAR_CORNERS`). Each row is
    labelled with the event's kind, tracks and position.

    Parameters
    ----------
    res : AnalysisResult
        An analysis of ``frames``.
    frames : Movie or ndarray (t, y, x)
        The frames analysed (only those shown are read): for an analysis of a window or
        region, that part of the movie (`Movie.window`, `Movie.crop`).
    max_events : int
        Rows at most.
    offsets : sequence of int
        The frames shown, relative to each event's.

    Returns
    -------
    Figure

    Raises
    ------
    ValueError
        If ``frames`` is not the shape analysed.
    """
    require_result(res, "events_figure")
    shape = tuple(frames.shape) if hasattr(frames, "shape") else np.shape(frames)  # a list of frames too
    if len(shape) == 2 and res.shape[0] == 1:  # the single image that was analysed
        frames, shape = np.asarray(frames)[None], (1, *shape)
    if shape != tuple(res.shape):
        part = "".join(f".{how}({res.options[key].replace(',', ':').replace(':', ', ')})"
                       for key, how in (("frames", "window"), ("region", "crop"))
                       if res.options.get(key))
        hint = f" (open_movie(path){part}: the part analysed)" if part else ""
        raise ValueError(f"frames are {' x '.join(map(str, shape))}, the analysis "
                         f"{' x '.join(map(str, res.shape))}: give the frames that were "
                         f"analysed{hint}")
    chosen = chosen_events(res.events, max_events)
    n_rows, n_cols = max(len(chosen), 1), len(offsets)
    fig = Figure(figsize=(1.7 * n_cols + 0.9, 1.75 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    n = len(res.events)
    shown = (f"{len(chosen)} of {n} events, spread over the movie" if len(chosen) < n
             else f"{n} event" if n == 1 else f"{n} events")
    # Where to find the ones left out, or that events.csv too lists them: not for none.
    fig.suptitle(f"{input_name(res)}: {shown}" + (" (events.csv lists all)" if n else ""), fontsize=10)
    if chosen.empty:
        for ax in axes.flat:
            ax.set_axis_off()
        nothing_to_show(axes[0, n_cols // 2], "no events")
        return fig
    side = crop_side_px(res.calibration.pixel_size_nm, tuple(res.shape[1:]))
    windows = event_windows(res, chosen, offsets)
    cropped = read_crops(frames, windows, side)
    tracks = with_gaps(res.tracks, res.drift) if len(res.tracks) else res.tracks
    tracks = tracks.set_index("frame", drop=False) if len(tracks) else tracks
    loose = untracked_peaks(res)
    dt = res.calibration.frame_interval_s
    circled = dotted = False
    for row, (i, ev) in zip(axes, chosen.iterrows(), strict=True):
        panels = windows[windows.event == i]
        crops = {k: cropped[(i, k)] for k in panels.offset if (i, k) in cropped}
        values = np.concatenate([c.ravel() for c, _, _ in crops.values()]) if crops else np.array([0.0])
        lo, hi = np.nanpercentile(values, [1, 99]) if np.isfinite(values).any() else (0.0, 1.0)
        for ax, w in zip(row, panels.itertuples(), strict=True):
            dotted |= _panel(ax, res, tracks, crops.get(w.offset), int(w.frame), side, (lo, hi), dt,
                             event=w.offset == 0)
            if w.offset in crops:
                circled |= _circle_untracked(ax, loose, crops[w.offset], w, res.calibration.pixel_size_nm)
        particles = ", ".join(f"#{p}" for p in str(ev["particles"]).split())
        row[0].set_ylabel(f"{str(ev['kind']).replace('_', ' ')}\n{particles}\n"
                          f"x {ev['x']:.0f}, y {ev['y']:.0f} px", fontsize=8, rotation=0,
                          ha="right", va="center")
    keys = ([f"○ untracked peak within {UNTRACKED_NM:g} nm of the event (e.g. a dipole's "
             "unresolved pair)"] if circled else [])
    keys += ["dotted ⊥: where a track's core would be in a frame it was missed"] if dotted else []
    if keys:
        fig.supxlabel(";  ".join(keys), fontsize=8)
    if res.calibration.pixel_size_nm and side * res.calibration.pixel_size_nm >= 2:
        first = next((ax for ax in axes[0] if ax.images), None)
        if first is not None:
            scale_bar(first, (side, side), res.calibration, _clear_corner(first, side, res.calibration))
    return fig


def _panel(ax: Axes, res: AnalysisResult, tracks: pd.DataFrame,
           cropped: tuple[np.ndarray, int, int] | None, frame: int, side: int,
           limits: tuple[float, float], dt: float | None, *, event: bool) -> bool:
    """One crop with its tracked cores; blank where the frame lies outside the movie.
    Returns whether a missed frame's dotted symbol was drawn."""
    ax.set_xticks([])
    ax.set_yticks([])
    when = time_stamp(frame, dt, frame_time(res, [frame])[0] if 0 <= frame < res.shape[0] else None)
    ax.set_title(when, fontsize=8, fontweight="bold" if event else "normal",
                 color="red" if event else "black")
    for spine in ax.spines.values():
        spine.set(color="red" if event else "0.6", linewidth=2.0 if event else 0.8)
    ax.set(xlim=(-0.5, side - 0.5), ylim=(side - 0.5, -0.5), aspect="equal")
    if cropped is None:
        ax.set_facecolor("0.92")
        ax.text(0.5, 0.5, "outside\nthe movie", transform=ax.transAxes, ha="center",
                va="center", fontsize=7, color="0.4")
        return False
    image, x0, y0 = cropped
    ax.imshow(image, cmap="gray", vmin=limits[0], vmax=limits[1], interpolation="nearest")
    ax.set_facecolor("0.3")  # beyond the frame's edge
    if not len(tracks) or frame not in tracks.index:
        return False
    here = tracks.loc[[frame]]
    cx, cy = here["x"].to_numpy(float) - x0, here["y"].to_numpy(float) - y0
    inside = (cx >= -0.5) & (cx <= side - 0.5) & (cy >= -0.5) & (cy <= side - 0.5)
    arm = 0.08 * side
    labels = []  # (particle, x, y, colour, rim): numbered below, clear of each other
    for (_, r), x, y in zip(here[inside].iterrows(), cx[inside], cy[inside], strict=True):
        c = track_colour(r["particle"])
        # A rim the colour stands out from: white round the dark ones, else black.
        rim = [patheffects.withStroke(linewidth=2.5, foreground=rim_colour(c))]
        h = np.array([r["hx"], r["hy"]], float)
        b = b_hat_from_h(h)
        # The dislocation symbol: the stem into the extra half-plane (h), the bar along
        # the glide plane (b); the core at their junction stays visible.
        # Dotted where the track skips a missed detection (its interpolated place).
        ax.plot([x - arm * b[0], x + arm * b[0], np.nan, x, x + 1.5 * arm * h[0]],
                [y - arm * b[1], y + arm * b[1], np.nan, y, y + 1.5 * arm * h[1]],
                ":" if r.get("missed", False) else "-", color=c, lw=2.0,
                solid_capstyle="butt", path_effects=rim)
        labels.append((int(r["particle"]), x, y, c, rim))
    _numbers(ax, labels, side, arm)
    ax.set(xlim=(-0.5, side - 0.5), ylim=(side - 0.5, -0.5))  # markers must not widen it
    return bool(here[inside].get("missed", pd.Series(False, index=here.index)).fillna(False).any())


#: Font size of the track numbers on events.png [pt].
_NUMBER_PT = 7


def _numbers(ax: Axes, labels: list, side: int, arm: float) -> None:
    """Each core's track number beside it, inside the crop (outside, it would overprint
    the panel's title), clear of the other numbers and symbols (`place_labels`: two
    numbers side by side read as one, "63")."""
    if not labels:
        return
    fig_w = ax.figure.get_size_inches()[0] * ax.get_position().width
    per_pt = side / (72 * max(fig_w, 1e-3))  # crop pixels per point, roughly
    xy = np.array([(x, y) for _, x, y, _, _ in labels], float) + 0.5
    sizes = np.array([(0.7 * len(str(p)) + 0.3, 1.2) for p, *_ in labels]) * _NUMBER_PT * per_pt
    corners = place_labels(xy, sizes, gap=0.6 * arm, bounds=(side, side), markers=xy,
                           marker_radius=arm) - 0.5
    for (p, _, _, c, rim), (lx, ly) in zip(labels, corners, strict=True):
        ax.text(lx, ly, str(p), color=c, fontsize=_NUMBER_PT, fontweight="bold", path_effects=rim,
                ha="left", va="top", clip_on=True)


def untracked_peaks(res: AnalysisResult) -> pd.DataFrame:
    """The peaks of ``res`` (detections and weak ones) in no track: ``frame``, ``x``, ``y``
    [px, raw image]."""
    parts = [t[["frame", "x", "y"]] for t in (res.detections, res.weak)
             if t is not None and len(t) and {"frame", "x", "y"} <= set(t.columns)]
    if not parts:
        return pd.DataFrame({"frame": pd.Series(dtype=int), "x": pd.Series(dtype=float),
                             "y": pd.Series(dtype=float)})
    peaks = pd.concat(parts, ignore_index=True)
    if not len(res.tracks):
        return peaks
    keys = ["frame", "x", "y"]
    merged = peaks.merge(res.tracks[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    return merged.loc[merged["_merge"] == "left_only", keys].reset_index(drop=True)


def _circle_untracked(ax: Axes, peaks: pd.DataFrame, cropped: tuple[np.ndarray, int, int],
                      window, pixel_size_nm: float | None) -> bool:
    """Circle (hollow, white on black) the ``peaks`` of the window's frame within
    `UNTRACKED_NM` of its centre (the event's specimen point); whether any was."""
    _, x0, y0 = cropped
    here = peaks[peaks["frame"] == window.frame]
    radius_px = UNTRACKED_NM / pixel_size_nm if pixel_size_nm else 10.0
    near = here[np.hypot(here["x"] - window.x, here["y"] - window.y) <= radius_px]
    if near.empty:
        return False
    ax.scatter(near["x"] - x0, near["y"] - y0, s=60, facecolors="none", edgecolors="white",
               linewidths=1.2, path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")])
    return True


def _clear_corner(ax: Axes, side: int, calibration) -> str:
    """The first of `SCALE_BAR_CORNERS` whose scale bar and label (`scale_bar_box`, with a
    margin) cover none of the core symbols and circles already drawn on ``ax``; the
    first corner where every one covers some."""
    points = [np.column_stack(line.get_data()) for line in ax.lines]
    points += [c.get_offsets() for c in ax.collections]
    xy = np.concatenate([np.asarray(p, float).reshape(-1, 2) for p in points]) if points else np.zeros((0, 2))
    xy = xy[np.isfinite(xy).all(axis=1)]
    margin = 0.06 * side
    for corner in SCALE_BAR_CORNERS:
        x0, y0, x1, y1, _ = scale_bar_box((side, side), calibration.pixel_size_nm, corner)
        top = y0 - 0.15 * side  # the label above the bar
        inside = ((xy[:, 0] >= x0 - margin) & (xy[:, 0] <= x1 + margin)
                  & (xy[:, 1] >= top - margin) & (xy[:, 1] <= y1 + margin))
        if not inside.any():
            return corner
    return SCALE_BAR_CORNERS[0]
