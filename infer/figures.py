"""Figures of an analysis (trajectories, displacement vs time, counts, overlay movie) and of
its evaluation against annotations."""

from __future__ import annotations

import math
import re
import textwrap
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib.path as mpath
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from dislotrack.data_gen.conventions import D003_LINIO2_NM, edge_distance_px
from dislotrack.infer.calibration import Calibration
from dislotrack.infer.columns import velocity_columns
from dislotrack.infer.drift import UNSEEN_ALONG_FRINGES
from dislotrack.infer.linking import with_gaps
from dislotrack.infer.motion import MIN_TRAVEL_NM, MOVING_SE, moving_tracks
from dislotrack.infer.options import part_label
from dislotrack.infer.overlays import overlay_mask
from dislotrack.infer.result import NO_FRINGES, AnalysisResult, require_result

#: Track colours, shared by trajectories.png, displacement.png, events.png, dipoles.png and
#: the overlay. The first `DISTINCT_HUES` stay apart for the colour-blind (deuteranopia,
#: protanopia) too: Okabe & Ito's palette without its black and sky blue (grey and
#: cyan-like: lost on a grey lattice, or taken for the rock salt's cyan), Paul Tol's
#: indigo and green ("muted") and dark brown ("YlOrBr"); the yellow last, being faint on
#: displacement.png's white. Busier movies go on with nine more of Tol's colours (red,
#: dark blue, light orange, wine, sand, dark green, light yellow, dark red, olive), picked
#: to stay as far from all the others as his schemes allow; displacement.png marks those
#: differently too (`track_marker`). Neighbouring numbers (often a dipole's two cores) are
#: ordered far apart, and no colour is near the rock-salt cyan (`_CYAN`), for normal or
#: colour-blind vision (tests/test_figures.py checks both on a simulation).
PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    (int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255) for h in (
        "0072B2", "D55E00", "009E73", "E69F00", "AA3377", "662506", "332288", "117733", "F0E442",
        "EE6677", "004488", "EE8866", "882255", "DDCC77", "225522", "EECC66", "994455", "999933"))

#: The first this many track colours are told apart by the colour-blind too (`PALETTE`).
DISTINCT_HUES = 9

#: Resolution of the PNG figures [dots per inch].
DPI = 200


def track_colour(pid: int) -> tuple[float, float, float]:
    """The colour of track ``pid`` (`PALETTE`, cycled)."""
    return tuple(PALETTE[int(pid) % len(PALETTE)][:3])


def track_marker(pid: int) -> str:
    """displacement.png's marker of track ``pid``'s detections: a dot for the first
    `DISTINCT_HUES` colours of `PALETTE`, a cross for the colours that follow, which the
    colour-blind may not tell from those by colour alone."""
    return "." if int(pid) % len(PALETTE) < DISTINCT_HUES else "x"


def _time(res: AnalysisResult, frames: pd.Series) -> tuple[np.ndarray, str]:
    """Frame steps as times [s] at the frame interval (as frames without one; the median
    step of an uneven clock) and the axis label; `frame_time` for frames of the movie."""
    dt = res.calibration.frame_interval_s
    return (frames.to_numpy() * dt, "time (s)") if dt else (frames.to_numpy(float), "frame")


def frame_time(res: AnalysisResult, frames) -> np.ndarray:
    """The time [s] of frames of the movie: on its acquisition clock where it steps unevenly
    (`Calibration.frame_times_s`), else frame x interval; the frame number without one."""
    frames = np.asarray(frames)
    clock = res.calibration.frame_times_s
    if clock is not None:
        return np.asarray(clock, dtype=float)[frames.astype(int)]
    return frames * (res.calibration.frame_interval_s or 1.0)


#: A dark rim that keeps track numbers legible over bright and dark lattice.
_OUTLINE = [patheffects.withStroke(linewidth=2.0, foreground="black")]
_LIGHT_OUTLINE = [patheffects.withStroke(linewidth=2.0, foreground="white")]
#: Track colours darker than this (`_luminance`) get a white rim on their numbers and
#: symbols, not a black one, which would vanish on dark lattice: the luminance at which
#: white and black contrast equally with a colour (WCAG 2 contrast ratio), so each colour
#: gets the rim it stands out from more.
DARK_LUMINANCE = math.sqrt(1.05 * 0.05) - 0.05  # 0.179


def rim_colour(colour: tuple[float, float, float]) -> str:
    """``"white"`` for a dark colour (components in [0, 1]), else ``"black"``: the rim
    that a track's number or symbol in ``colour`` stands out from more (`DARK_LUMINANCE`)."""
    return "white" if _luminance(tuple(round(255 * v) for v in colour[:3])) < DARK_LUMINANCE else "black"

#: How a track's ends are drawn on the trajectories figure: birth / death -> marker.
END_MARKERS = {"nucleated": "*", "annihilated": "X", "entered": ">", "left": "<",
               "from_rocksalt": "D", "into_rocksalt": "s"}
#: Their legend text: ``entered`` / ``left`` alone read as directions (the triangles point
#: sideways whatever edge was crossed).
END_LABELS = {"nucleated": "nucleated", "annihilated": "annihilated",
              "entered": "entered the field", "left": "left the field",
              "from_rocksalt": "from rock salt", "into_rocksalt": "into rock salt"}

#: A marker of a one-sided tick from the point to the right: with a dot, the legend's
#: picture of a start and its h tick (a line through a dot read as a path).
_TICK_MARKER = mpath.Path([(0.0, 0.0), (1.0, 0.0)], [mpath.Path.MOVETO, mpath.Path.LINETO])


def trajectories(res: AnalysisResult, path: Path) -> None:
    """Write `trajectories_figure` to ``path``."""
    save_figure(trajectories_figure(res), path)


def image_figure_size(shape: tuple[int, ...], *, side: float = 6.0, longest: float = 11.0,
                      narrowest: float = 4.0, chrome: float = 0.3) -> tuple[float, float, float]:
    """Figure width and height, and the image's drawn width [in], for an image of
    ``shape`` (rows, columns, ...) drawn with little margin whatever its aspect ratio.

    The image covers about ``side``² square inches, its longer side at most ``longest``;
    the figure is at least ``narrowest`` wide (for the title) and ``chrome`` taller than
    the image (title and legend).
    """
    h, w = shape[:2]
    aspect = w / h
    width = side * math.sqrt(aspect)
    width = min(width, longest, longest * aspect)  # the longer side at most `longest`
    return max(width, narrowest), width / aspect + chrome, width


def trajectories_figure(res: AnalysisResult) -> plt.Figure:
    """Tracks (drift-corrected to frame 0) over the first frame; ticks show h, markers
    how each track begins and ends (`END_MARKERS`, legend below the image, clear of the
    scale bar; none for present/survived), frame 0's rock salt outlined in cyan (the
    overlay's colour). Track numbers are nudged clear of each other
    (`place_labels`). The figure takes the frame's aspect ratio (`image_figure_size`) and
    shows frame 0's field only.

    Parameters
    ----------
    res : AnalysisResult

    Returns
    -------
    Figure
        A matplotlib Figure, not managed by pyplot: display or save it.
    """
    require_result(res, "trajectories_figure")
    shape = res.first_frame.shape if res.first_frame is not None else res.shape[1:]
    fig_w, fig_h, image_w = image_figure_size(shape)
    fig = Figure(figsize=(fig_w, fig_h), layout="constrained")
    ax = fig.subplots()
    if res.first_frame is not None:
        ax.imshow(res.first_frame, cmap="gray")
    t = res.tracks
    xs, ys = ("x_corr", "y_corr") if "x_corr" in t else ("x", "y")
    fates = res.track_summary.set_index("particle") if len(res.track_summary) else None
    shown: set[str] = set()
    starts, ends = [], []  # ends: where the start and end markers are drawn
    for pid, g in t.groupby("particle"):
        c = track_colour(pid)
        # Rimmed as the numbers are: a dark track on a dark frame stays visible.
        ax.plot(g[xs], g[ys], "-", color=c, lw=1.5,
                path_effects=[patheffects.withStroke(linewidth=2.5, foreground=rim_colour(c))])
        x0, y0 = g[xs].iloc[0], g[ys].iloc[0]
        starts.append((pid, x0, y0))
        ends += [(x0, y0), (g[xs].iloc[-1], g[ys].iloc[-1])]
        ax.plot(x0, y0, "o", color=c, ms=4)
        tick = 6 / max(res.calibration.pixel_size_nm / 0.1, 1e-3)
        # Outlined, so that the tick does not read as part of the path.
        ax.plot([x0, x0 + tick * g.hx.mean()], [y0, y0 + tick * g.hy.mean()], "-", color=c, lw=2,
                solid_capstyle="butt", path_effects=[patheffects.withStroke(linewidth=3.5,
                                                                            foreground="white")])
        if fates is None or pid not in fates.index:
            continue
        # The death marker smaller, on top: a short track's two ends often coincide.
        for fate, (x, y), ms in ((fates.at[pid, "birth"], (x0, y0), _END_MARKER_PT),
                                 (fates.at[pid, "death"], (g[xs].iloc[-1], g[ys].iloc[-1]), 7)):
            if fate in END_MARKERS:
                if res.first_frame is not None:  # drift can carry an end beyond frame 0's
                    # field: its marker sits on the field's edge, whole, not clipped away
                    fh, fw = res.first_frame.shape
                    x, y = np.clip(x, -0.5, fw - 0.5), np.clip(y, -0.5, fh - 0.5)
                ax.plot(x, y, END_MARKERS[fate], ms=ms, mfc="none" if "rocksalt" in fate else c,
                        mec="white", mew=1.0, clip_on=False)
                shown.add(fate)
    rock_salt = res.first_mask is not None and bool(np.any(res.first_mask))
    if rock_salt:  # as the overlay outlines it: it explains the rock-salt birth/death markers
        ax.contour(np.asarray(res.first_mask, float), levels=[0.5], colors=[_CYAN / 255], linewidths=1.0)
    if res.first_frame is not None:  # numbers only for tracks that start in the field shown
        starts = [(p, x, y) for p, x, y in starts if edge_distance_px(x, y, res.first_frame.shape) >= 0]
    _track_numbers(ax, starts, res.first_frame, image_w, ends)
    handles, labels = [], []
    if starts:  # neutral proxies: a marker's colour is its track's
        first = "core, h tick" if res.shape[0] == 1 else "start, h tick"
        # As drawn: a dot with a tick out of it on one side, white-rimmed.
        tick = plt.Line2D([], [], ls="none", marker=_TICK_MARKER, ms=16, mec="0.6", mew=2,
                          path_effects=[patheffects.withStroke(linewidth=3.5, foreground="white")])
        handles = [(tick, plt.Line2D([], [], ls="none", marker="o", ms=4, color="0.6"))]
        labels = [first]
        for f in (f for f in END_MARKERS if f in shown):
            handles.append(plt.Line2D([], [], ls="none", marker=END_MARKERS[f], ms=7,
                                      mfc="none" if "rocksalt" in f else "0.6", mec="k"))
            labels.append(END_LABELS[f])
    if rock_salt:  # also without tracks: the outline needs its key
        handles.append(plt.Line2D([], [], color=_CYAN / 255, lw=1.0))
        labels.append("rock salt (frame 0)")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 4),
                   fontsize=8, frameon=False)
    if res.first_frame is not None:  # frame 0's field: drift carries some tracks beyond it
        h, w = res.first_frame.shape
        ax.set(xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5))
        if res.calibration.pixel_size_nm:  # clear of burned-in text, as on the overlay
            ps = res.calibration.pixel_size_nm
            corner = scale_bar_corner(overlay_mask(res.first_frame, pixel_size_nm=ps), ps)
            scale_bar(ax, res.first_frame.shape, res.calibration, corner)
    unseen = any(NO_FRINGES in w for w in res.warnings)  # searched where no core can show
    if t.empty:
        why = "\n(no (003) fringes stand out:\nno core could show; see warnings)" if unseen else ""
        nothing_to_show(ax, ("no cores" if res.shape[0] == 1 else "no tracks") + why)
    what = "cores" if res.shape[0] == 1 else "trajectories (drift-corrected, over frame 0)"
    doubt = "\nno (003) fringes stand out: any core or rock salt is doubtful" if unseen else ""
    if res.calibration.pixel_size_source == "estimated":  # the scale rests on the material
        d003 = (res.options or {}).get("d_spacing_nm") or D003_LINIO2_NM
        doubt += f"\nscale estimated: the strongest fringes taken for {d003:g} nm (003) ones"
    ax.set_title(f"{input_name(res)}: {what}{doubt}", fontsize=10, wrap=True)  # two lines if narrow
    ax.set_axis_off()
    return fig


#: Font size of the track numbers on trajectories.png [pt].
_LABEL_PT = 9

#: Size of the birth markers (stars, squares) on trajectories.png [pt]; deaths are smaller.
_END_MARKER_PT = 12


def _track_numbers(ax: plt.Axes, starts: list[tuple[int, float, float]],
                   image: np.ndarray | None, image_width_in: float,
                   ends: Sequence[tuple[float, float]] | None = None) -> None:
    """Number each track beside its first position, nudged clear of numbers placed before
    and, where there is room, of the markers at other tracks' ends (``ends``, points).

    Label boxes are estimated in data units from the image's width on the page,
    generously (as if 0.75 of ``image_width_in``, which the layout may shrink a little;
    0.7 em per digit, 1.2 em high), so that labels kept apart here do not touch when drawn.
    """
    if not starts:
        return
    xy = np.array([(x, y) for _, x, y in starts], float)
    width = image.shape[1] if image is not None else max(np.ptp(xy[:, 0]), 1.0)
    per_pt = width / (0.75 * 72 * image_width_in)
    sizes = np.array([(0.7 * len(str(pid)), 1.2) for pid, _, _ in starts]) * _LABEL_PT * per_pt
    # The image spans [-0.5, width - 0.5]: shifted by half a pixel, [0, width] holds the labels.
    bounds = None if image is None else (image.shape[1], image.shape[0])
    markers = None if ends is None else np.asarray(ends, float) + 0.5
    corners = place_labels(xy + 0.5, sizes, gap=3 * per_pt, bounds=bounds, markers=markers,
                           marker_radius=0.5 * _END_MARKER_PT * per_pt) - 0.5
    for (pid, _, _), (lx, ly) in zip(starts, corners, strict=True):
        dark = rim_colour(track_colour(pid)) == "white"
        ax.text(lx, ly, str(pid), color=track_colour(pid), fontsize=_LABEL_PT, fontweight="bold",
                ha="left", va="top" if ax.yaxis_inverted() else "bottom",
                path_effects=_LIGHT_OUTLINE if dark else _OUTLINE)


def place_labels(anchors: np.ndarray, sizes: np.ndarray, *, gap: float,
                 bounds: tuple[float, float] | None = None, markers: np.ndarray | None = None,
                 marker_radius: float = 0.0) -> np.ndarray:
    """Corners of label boxes beside points, each clear of the boxes placed before it.

    Each label tries, in turn: right above, right below, left above, left below its
    point, then further above and further below, right then left; it takes the first spot that
    overlaps no earlier label and no marker and lies within ``bounds``; failing that, the
    first that overlaps no earlier label; failing that, the first spot (moved within
    ``bounds``).

    Parameters
    ----------
    anchors : ndarray, shape (n, 2)
        The labelled points ``(x, y)``, ``y`` pointing down (image coordinates).
    sizes : ndarray, shape (n, 2)
        Each label's ``(width, height)``, in the units of ``anchors``.
    gap : float
        Distance between a point and its label's nearest edges.
    bounds : (width, height), optional
        The area [0, width] x [0, height] labels must lie in (e.g. an image's size).
    markers : ndarray, shape (m, 2), optional
        Points drawn as markers that labels should leave visible (e.g. other tracks'
        ends), so that a number is not read as belonging to the marker it covers.
        Markers within ``marker_radius`` of a label's own point do not count for it.
    marker_radius : float
        Half the side of the square each marker occupies.

    Returns
    -------
    ndarray, shape (n, 2)
        Each label's smallest-``x``, smallest-``y`` corner (top-left in an image).
    """
    placed: list[tuple[float, float, float, float]] = []
    out = np.empty((len(anchors), 2))
    anchors, sizes = np.asarray(anchors, float), np.asarray(sizes, float)
    r = marker_radius
    markers = np.empty((0, 2)) if markers is None else np.asarray(markers, float).reshape(-1, 2)
    for i, ((x, y), (w, h)) in enumerate(zip(anchors, sizes, strict=True)):
        right, left, above, below = x + gap, x - gap - w, y - gap - h, y + gap
        spots = [(right, above), (right, below), (left, above), (left, below)]
        spots += [(side, above - k * h) for side in (right, left) for k in (1, 2, 3)]
        spots += [(side, below + k * h) for side in (right, left) for k in (1, 2, 3)]
        inside = [s for s in spots if bounds is None or (0 <= s[0] <= bounds[0] - w
                                                         and 0 <= s[1] <= bounds[1] - h)]
        apart = [s for s in inside if not any(_overlap((*s, w, h), p) for p in placed)]
        # Markers at the label's own point (its track's ends) may be touched: they are its own.
        others = markers[np.abs(markers - (x, y)).max(axis=1, initial=0) > r]
        clear = [(mx - r, my - r, 2 * r, 2 * r) for mx, my in others]
        free = (s for s in apart if not any(_overlap((*s, w, h), m) for m in clear))
        out[i] = next(free, apart[0] if apart else inside[0] if inside else spots[0])
        if bounds is not None:
            out[i] = np.clip(out[i], 0, np.maximum(np.array(bounds) - (w, h), 0))
        placed.append((*out[i], w, h))
    return out


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether boxes ``(x, y, width, height)`` ``a`` and ``b`` overlap."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def wrap_title(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, broken after spaces, ``_`` and
    ``-`` (a file name has few spaces) and, in a longer run, anywhere; its own line breaks
    kept. Matplotlib's ``wrap=True`` breaks at spaces only: a long file name ran off the
    page or over the legend.

    Examples
    --------
    >>> print(wrap_title("2024-05-12_LiNiO2_insitu_movie.tif: counts", 20))
    2024-05-12_LiNiO2_
    insitu_movie.tif:
    counts
    """
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for piece in re.findall(r"[^ _-]*(?:[ _-]+|$)", paragraph):
            while len(piece) > width:  # a run longer than a line: cut it
                lines.append((line + piece)[:width].rstrip())
                piece, line = (line + piece)[width:], ""
            if len(line + piece.rstrip()) > width and line:
                lines.append(line.rstrip())
                line = ""
            line += piece
        lines.append(line.rstrip())
    # A hard cut can leave a line of separators alone, or one starting with a space.
    out: list[str] = []
    for line in (line.lstrip() for line in lines):
        if out and out[-1] and not line.strip(" _-"):
            out[-1] += line.strip()
        elif line or not out:
            out.append(line)
    return "\n".join(out)


def input_name(res: AnalysisResult) -> str:
    """The input's file or folder name, for figure titles, with the window of frames
    and the region analysed (``analyze(frames=, region=)``) where not the whole."""
    return Path(res.input_path).name + part_label(res.options if isinstance(res.options, dict) else {})


#: displacement.png's colour for the tracks not moving in a panel, where there are too many
#: to name (more than `MAX_NAMED_TRACKS`): the moving ones keep theirs and are labelled.
STILL_GREY = "0.75"

#: Up to this many tracks are named in the displacement legend (one colour each,
#: `PALETTE`); more get one entry.
MAX_NAMED_TRACKS = len(PALETTE)

#: What a positive value means, per displacement panel (README "Conventions").
SIGN_CONVENTION = {"climb": "+: towards h, shortening the extra half-plane",
                   "glide": "+: along b = h turned 90° counter-clockwise as displayed"}


def displacement(res: AnalysisResult, path: Path) -> None:
    """Write `displacement_figure` to ``path``."""
    save_figure(displacement_figure(res), path)


def displacement_figure(res: AnalysisResult) -> plt.Figure:
    """Climb and glide vs time since each track's first detection, per track (dashed),
    and, as the seed's Fig. 2C/D, mean +- SD (solid) of the single dislocations moving
    that way.

    Per panel, the single dislocations moving in that component (`moving_tracks`) are
    split by the sign of their velocity; a group of two or more gets the mean of the
    positions of its tracks present at each time drawn, where two or more are, broken
    where one ends and marked with how many it averages there (`present_mean`,
    `_mean_curves`), and its mean velocity +- SD and size in the panel title (a line per
    group, + first); a lone one its velocity +- SE. Dipole cores are not averaged with them
    (each moves in its own frame, and a dipole's motion reverses): the title lists them.
    The legend sits beside the axes, naming tracks up to `MAX_NAMED_TRACKS`; past that,
    each panel keeps colours for the tracks moving that way, numbered at their ends, and
    draws the rest in `STILL_GREY`. The file's name above is wrapped clear of the legend.

    Where no track has two detections (a single image, or only one-frame tracks) there is
    no motion: each axis says why instead of showing empty axes and a bare legend.

    Parameters
    ----------
    res : AnalysisResult

    Returns
    -------
    Figure
        A matplotlib Figure, not managed by pyplot: display or save it.
    """
    require_result(res, "displacement_figure")
    fig = Figure(figsize=(10.5, 4.3), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    t = res.tracks
    if len(t) and t.groupby("particle").size().max() < 2:
        t = t.iloc[:0]
    named = t.particle.nunique() <= MAX_NAMED_TRACKS if len(t) else False
    singles_only = False  # whether a mean, or dipole cores left out of one, is shown
    for ax, col, name in zip(axes, ["climb_nm", "glide_nm"], ["climb", "glide"], strict=True):
        # Wrapped: a title wider than its axes runs under the legend beside them.
        title = "\n".join(textwrap.wrap(f"{name} ({SIGN_CONVENTION[name]})", 52, break_on_hyphens=False))
        if len(t):
            rel = _since_first(res, t)
            # Too many to name: only the tracks moving this way keep a colour, labelled.
            moving = None if named else set(moving_tracks(
                res.track_summary, name, res.calibration.frame_interval_s,
                res.calibration.frame_times_s)[0].index)
            for pid, g in rel.groupby("particle"):
                tt = frame_time(res, g.frame) - frame_time(res, g.frame.iloc[:1])[0]
                lit = moving is None or pid in moving
                c = track_colour(pid) if lit else STILL_GREY
                # A dot per detection: frames a track was missed show as bare dashes.
                ax.plot(tt, g[col], "--", marker=track_marker(pid), ms=3, color=c, lw=1,
                        zorder=2 if lit else 1, gid=f"track {pid}",
                        label=_track_label(res.track_summary, pid) if named else "_nolegend_")
                if moving is not None and lit:
                    ax.annotate(f"#{pid}", (tt[-1], g[col].iloc[-1]), xytext=(3, 0),
                                textcoords="offset points", color=c, fontsize=7, va="center")
            title += "\n" + _mean_curves(ax, res, rel, col, name)
            singles_only |= "mean v = " in title  # a mean is drawn: say what it is over
            unseen = res.drift.attrs.get(UNSEEN_ALONG_FRINGES, 0) if res.drift is not None else 0
            if name == "climb" and unseen:  # misfit cores climb along the (003) fringes
                title += (f"\nincludes drift along the fringes (not measurable in {unseen} of "
                          f"{max(res.shape[0] - 1, 1)} frames)")
        _, label = _time(res, pd.Series([0]))
        if not res.calibration.frame_interval_s:  # time in frames: whole-number ticks
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(label + " since first detection")
        ax.set_ylabel(f"{name} distance (nm)")
        # Every line wrapped to the panel (a list of velocities ran into the next panel, a
        # drift note off the page), never inside a number ("-0.23").
        ax.set_title("\n".join(part for line in title.split("\n") for part in textwrap.wrap(
            line, PANEL_TITLE_CHARS, break_on_hyphens=False, break_long_words=False) or [""]),
            fontsize=9)
    # The panel titles' lines are as long as they may be: what the means are over goes here.
    fig.suptitle(wrap_title(input_name(res) + (f"\n{MEANS_OVER}" if singles_only else ""),
                            DISPLACEMENT_TITLE_CHARS), fontsize=10)
    if len(t):
        handles, labels = _legend_entries(axes)
        if not named:
            handles.append(plt.Line2D([], [], ls="--", color="0.5", lw=1))
            labels.append(f"{t.particle.nunique()} tracks (grey: not moving)")
        # Handles long enough for a whole dash-dot cycle: the two means differ by it. Many
        # names go below the panels: two columns beside them ran into the title above.
        many = named and t.particle.nunique() > 10
        if many:  # the legend's rows below: the panels keep their height
            fig.set_figheight(fig.get_figheight() + 1.3)
        fig.legend(handles, labels, loc="outside lower center" if many else "outside right upper",
                   fontsize=8, frameon=False, ncol=4 if many else 1, handlelength=MEAN_HANDLE_EM)
    else:
        why = ("one frame: no motion to show" if res.shape[0] <= 1
               else "no tracks" if res.tracks.empty
               else "no track spans two frames:\nno motion to show")
        for ax in axes:
            nothing_to_show(ax, why)
        if res.shape[0] > 1:  # the movie's time, not matplotlib's 0-1
            axes[0].set_xlim(0, frame_time(res, [res.shape[0] - 1])[0])
    return fig


#: The legend label and line style of the mean curve of the single dislocations moving
#: each way: two means in one panel must not look alike.
MEAN_LABELS = {1: "mean ± SD of singles moving in +", -1: "mean ± SD of singles moving in −"}
MEAN_STYLES = {1: "-", -1: "-."}
#: Length of displacement.png's legend handles [font sizes]: a whole dash-dot cycle of the
#: "moving −" mean (at the default 2, it showed as a dash, like the solid "moving +").
MEAN_HANDLE_EM = 3.5

#: What displacement.png's means are over, under its file name where it shows one (or
#: dipole cores left out of one).
MEANS_OVER = ("means ± SD over single dislocations (dipole cores not averaged)\n"
              f"of the tracks that move: |v| > {MOVING_SE:g} SE and ≥ {MIN_TRAVEL_NM:g} nm of travel")

#: displacement.png's file name is wrapped to lines this long, clear of the legend beside
#: the axes.
DISPLACEMENT_TITLE_CHARS = 70

#: displacement.png's panel titles are wrapped to lines this long (their axes' width at 9 pt).
PANEL_TITLE_CHARS = 52


def _track_label(summary: pd.DataFrame, pid: int) -> str:
    """``#3``, or ``#3 (dipole with #2)``: a dipole's partners moving apart have the same
    sign of glide (or climb), as each is measured along its own b (or h)."""
    row = summary[summary["particle"] == pid] if "partner" in summary else summary.iloc[:0]
    if len(row) and row["kind"].iloc[0] == "dipole" and pd.notna(row["partner"].iloc[0]) \
            and row["partner"].iloc[0] >= 0:
        return f"#{pid} (dipole with #{int(row['partner'].iloc[0])})"
    return f"#{pid}"


def _since_first(res: AnalysisResult, tracks: pd.DataFrame) -> pd.DataFrame:
    """``tracks`` with ``rel``, each detection's time since its track's first one: in
    frames, or in seconds on an uneven acquisition clock (there a frame step is no fixed
    time, so tracks are averaged at their clock times)."""
    first = tracks.groupby("particle").frame.transform("min")
    if res.calibration.frame_times_s is None:
        return tracks.assign(rel=tracks.frame - first)
    return tracks.assign(rel=frame_time(res, tracks.frame) - frame_time(res, first))


def _mean_curves(ax: plt.Axes, res: AnalysisResult, rel: pd.DataFrame, col: str, name: str) -> str:
    """Draw, on ``ax``, the mean +- SD of ``col`` over each group (by sign) of two or more
    single dislocations moving in ``name`` (`draw_mean`); return lines for the panel title
    saying their velocities, a lone one's with its SE, and the dipole cores that move,
    which are not averaged."""
    moving, unit = moving_tracks(res.track_summary, name, res.calibration.frame_interval_s,
                                 res.calibration.frame_times_s)
    moving = moving[moving.index.isin(rel.particle.unique())]
    if moving.empty:
        return f"no track moves steadily (|v| > {MOVING_SE:g} SE, ≥ {MIN_TRAVEL_NM:g} nm)"
    summary = res.track_summary.set_index("particle")
    in_dipole = (summary["kind"].reindex(moving.index) == "dipole").to_numpy() if "kind" in summary \
        else np.zeros(len(moving), bool)
    singles, cores = moving[~in_dipole], moving[in_dipole]
    cols = velocity_columns(res.track_summary, name)
    se = summary[cols[1]] if cols is not None and cols[1] in summary else None
    parts = []
    for sign in (1, -1):  # the same order in both panels
        v = singles[np.sign(singles) == sign]
        if len(v) == 1:
            p = v.index[0]
            parts.append(f"#{p}: v = {plus_minus_se(v.iloc[0], se[p])} {unit} (SE)" if se is not None
                         else f"#{p}: v = {plus_minus(v.iloc[0])} {unit}")
        if len(v) < 2:
            continue
        listed = ", ".join(f"#{p}" for p in v.index)
        # Named while short: long ids would push the title into its neighbour's.
        which = f": {listed}" if len(listed) <= MAX_LISTED_CHARS else ""
        parts.append(f"mean v = {plus_minus(v.mean(), v.std())} {unit} (n = {len(v)}{which})")
        draw_mean(ax, res, present_mean(rel[rel.particle.isin(v.index)], col), sign)
    if len(cores):  # each in its own b / h frame, its motion reversing: not a group's
        listed = ", ".join(f"#{p} {plus_minus(v)}" for p, v in cores.items())
        parts.append(f"dipole cores (not averaged): {listed} {unit}" if len(listed) <= 2 * MAX_LISTED_CHARS
                     else f"{len(cores)} dipole cores move (not averaged)")
    return "\n".join(parts)


def draw_mean(ax: plt.Axes, res: AnalysisResult, agg: pd.DataFrame, sign: int) -> None:
    """Draw a group's `present_mean` ``agg`` as a black line with SD bars (`MEAN_STYLES`),
    broken between its segments (where a track ends and the mean goes on over fewer tracks;
    joined, the jump read as the cores turning back), a segment of one time as a dot; the
    segments after the first are marked with the number of tracks they average (``n = 2``)
    where they start (the first's is the group's, in the panel title), at least a tenth
    of the time axis apart."""
    if agg.empty:
        return
    times = (agg.index.to_numpy(float) if res.calibration.frame_times_s is not None  # [s] already
             else _time(res, pd.Series(agg.index))[0])
    x: list[float] = []
    y: list[float] = []
    sd: list[float] = []
    starts, lone = [], []
    for _, seg in agg.assign(t=times).groupby("segment", sort=True):
        if x:  # a NaN between segments breaks the line
            x, y, sd = [*x, x[-1]], [*y, np.nan], [*sd, np.nan]
            starts.append((seg["t"].iloc[0], seg["mean"].iloc[0], int(seg["count"].iloc[0])))
        if len(seg) == 1:
            lone.append((seg["t"].iloc[0], seg["mean"].iloc[0]))
        x, y, sd = x + seg["t"].tolist(), y + seg["mean"].tolist(), sd + seg["std"].tolist()
    ax.errorbar(x, y, yerr=sd, color="k", lw=2, capsize=2, ls=MEAN_STYLES[sign],
                errorevery=max(1, math.ceil(len(x) / MEAN_BARS)), label=MEAN_LABELS[sign])
    if lone:  # a line of one point is not drawn
        ax.plot(*zip(*lone, strict=True), "o", color="k", ms=4, label="_nolegend_")
    # One label per stretch of a tenth of the time axis: a crowd of ends overprinted them.
    apart, last = 0.1 * (max(x) - min(x)), -np.inf
    if starts:
        ax.margins(y=0.1)  # room for a label above (below) the curve at its top (bottom)
    for t0, m0, n in starts:
        if t0 - last < apart:
            continue
        last = t0
        ax.annotate(f"n = {n}", (t0, m0), xytext=(0, 6 * sign), textcoords="offset points",
                    fontsize=7, ha="center", va="bottom" if sign > 0 else "top", color="k",
                    path_effects=[patheffects.withStroke(linewidth=2, foreground="white")])


#: A group's moving tracks are named in the panel title while the list is this short
#: (four one-digit ids, three two-digit ones).
MAX_LISTED_CHARS = 16

#: About this many SD bars per mean curve (every frame's would hide the tracks).
MEAN_BARS = 15


def plus_minus_se(value: float, se: float) -> str:
    """``value ± se`` to the same decimals: the value's two significant digits, or more
    down to the standard error's first significant digit (at most two more): ``+0.382 ±
    0.003``, ``-35 ± 4``, ``-35 ± 25``; an SE under that shows as zeros (``+35.00 ±
    0.00``)."""
    d = max(0, 1 - math.floor(math.log10(abs(value)))) if value and math.isfinite(value) else 0
    if se > 0 and math.isfinite(se):
        d = max(d, min(-math.floor(math.log10(se)), d + 2))
    return f"{value:+.{d}f} ± {se:.{d}f}"


def plus_minus(value: float, sd: float | None = None) -> str:
    """``value`` with its sign (and ``± sd``) at two significant digits of the larger,
    both to the same decimals: ``+0.27 ± 0.02``, ``+0.10 ± 0.00``, ``-35 ± 4``."""
    scale = max(abs(value), abs(sd or 0.0))
    d = max(0, 1 - math.floor(math.log10(scale))) if scale > 0 and math.isfinite(scale) else 0
    return f"{value:+.{d}f}" + (f" ± {sd:.{d}f}" if sd is not None else "")


def _legend_entries(axes: Sequence[plt.Axes]) -> tuple[list, list[str]]:
    """The legend handles and labels of all ``axes``, each label once, in order."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def present_mean(rel: pd.DataFrame, col: str, *, min_tracks: int = 2) -> pd.DataFrame:
    """Mean and SD of the positions ``col`` of the tracks present at each time since their
    first detection, where at least ``min_tracks`` are, in segments over one set of tracks.

    A track is present from its first to its last detection (missed frames in between
    filled linearly, by time), so a long movie's mean runs as far as two tracks do, not
    only while every track does. The mean is the plain mean of the positions present: what
    the SD describes, and what a reader takes "mean ± SD" for. Where a track ends, the set
    averaged changes and the mean can jump by the difference of positions (three cores
    moving one way, the one furthest along ending: the mean steps back, which read as the
    cores turning back). ``segment`` numbers the runs of times over one set of tracks, and
    the figure breaks the curve between them and says how many tracks each averages
    (`draw_mean`), rather than joining across the jump. (The curve used to go on by the
    mean *step* of the tracks left: smooth, but then the mean of no set of tracks,
    hugging one track while its SD bar was of the positions.)

    Parameters
    ----------
    rel : DataFrame
        ``particle``, ``rel`` (time since the track's first detection: frames, or
        seconds on an uneven clock, `_since_first`) and ``col``.
    col : str
    min_tracks : int
        Fewest tracks a mean is drawn over.

    Returns
    -------
    DataFrame
        ``mean``, ``std``, ``count`` (the number of tracks present) and ``segment``
        (0, 1, ...: a new one wherever the set of tracks present changes), indexed by
        ``rel``.
    """
    wide = rel.pivot_table(index="rel", columns="particle", values=col).sort_index()
    wide = wide.interpolate(method="index", limit_area="inside")  # by time, in each track's span
    present = wide.notna()
    changed = (present != present.shift(fill_value=False)).any(axis=1)
    agg = pd.DataFrame({"mean": wide.mean(axis=1), "std": wide.std(axis=1), "count": present.sum(axis=1),
                        "segment": changed.cumsum()})
    agg = agg[agg["count"] >= min_tracks]
    return agg.assign(segment=agg["segment"].rank(method="dense").astype(int) - 1)


#: Up to this many frames, the rock-salt fraction is marked at every value (the counts
#: always are); beyond, markers would hide its dotted line.
MARKED_FRAMES = 50


def counts(res: AnalysisResult, path: Path) -> None:
    """Write `counts_figure` to ``path``."""
    save_figure(counts_figure(res), path)


def counts_figure(res: AnalysisResult) -> plt.Figure:
    """Dislocation and dipole counts vs time (as the seed's Fig. 5F), RS fraction on the right;
    the title says so under the input's name (`COUNTS_WHAT`, wrapped: `wrap_title`).

    Counts get whole-number ticks; the fraction axis starts at 0 (at least 0 to 0.05, so a
    domain-free movie shows a flat line at the bottom, not one centred on negative values).
    Every value is marked (the fraction up to `MARKED_FRAMES` frames), so a single image's
    values show as points.

    Parameters
    ----------
    res : AnalysisResult

    Returns
    -------
    Figure
        A matplotlib Figure, not managed by pyplot: display or save it.
    """
    require_result(res, "counts_figure")
    c = res.counts
    tt, label = frame_time(res, c.frame), _time(res, c.frame.iloc[:0])[1]
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    # clip_on=False: a count of 0 sits on the axis, half hidden otherwise. Dipoles smaller
    # and dashed on top, so equal counts show both series.
    # Steps: a count changes at a frame, it does not ramp between two.
    ax.plot(tt, c.n_dislocations, "o-", ms=7, label="tracked dislocations", clip_on=False, zorder=3,
            drawstyle="steps-mid")
    ax.plot(tt, c.n_dipoles, "s--", ms=4, label="dipoles", clip_on=False, zorder=4,
            drawstyle="steps-mid")
    ax.set_xlabel(label)
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))  # no cores: 0 to 1, not 0 to 0.05
    if len(tt) == 1:  # a single image: one tick at its frame, not -0.04 ... 0.04
        ax.set_xlim(tt[0] - 0.5, tt[0] + 0.5)
        ax.set_xticks([tt[0]])
    ax2 = ax.twinx()
    finite = c.rocksalt_fraction.to_numpy(float)
    # An empty axis says why: no frame could be judged (blank, too coarse, annotation).
    judged = "" if np.isfinite(finite).any() else " (not judged)"
    # A marker per value of a short series: one frame's fraction is otherwise a line of
    # length zero, drawn as nothing.
    ax2.plot(tt, c.rocksalt_fraction, "c:", marker="^" if len(tt) <= MARKED_FRAMES else None,
             ms=5, mfc="none", label=f"rock-salt fraction{judged}", clip_on=False)  # hollow: counts show
    top = float(finite[np.isfinite(finite)].max(initial=0.0))
    ax2.set_ylim(0, min(1.0, max(0.05, 1.1 * top)))
    ax2.set_ylabel("rock-salt area fraction of the frame")
    # The counts over the fraction: a twin axes is drawn on top, and its triangles at 0
    # hid the dipole squares at 0.
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside upper center", ncol=3, fontsize=8, frameon=False)
    # What is counted, and the file's name wrapped to the axes' width (a long one was cut
    # at both edges of the page).
    ax.set_title(wrap_title(f"{input_name(res)}\n{COUNTS_WHAT}", COUNTS_TITLE_CHARS), fontsize=10)
    return fig


#: What counts.png shows, under the input's name in its title.
COUNTS_WHAT = "tracked dislocations, dipoles, rock-salt fraction per frame"

#: counts.png's title lines are at most this long (its axes' width at 10 pt).
COUNTS_TITLE_CHARS = 60


def save_figure(fig: plt.Figure, path: Path, *, dpi: int = DPI) -> None:
    """Write ``fig`` to ``path`` (figures are made outside pyplot: nothing to close, and a
    notebook shows a returned figure once). Where the frame is a few pixels wide, the layout
    engine gives up and says so in a warning that means nothing to a user: the figure is
    drawn all the same."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # as write_tables makes its folder
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="constrained_layout not applied")
        fig.savefig(path, dpi=dpi)


#: Marker of each `dislotrack.infer.evaluate.OUTCOMES` entry: (marker, colour, label).
OUTCOME_STYLE = {"found": ("o", "limegreen", "found"), "missed": ("x", "red", "missed"),
                 "false": ("s", "orange", "false")}


def evaluation_figure(image: np.ndarray, outcomes: pd.DataFrame, path: Path, *, title: str = "",
                      pixel_size_nm: float | None = None) -> None:
    """Write `evaluation_panels` to ``path``."""
    save_figure(evaluation_panels(image, outcomes, title=title, pixel_size_nm=pixel_size_nm), path)


def evaluation_panels(image: np.ndarray, outcomes: pd.DataFrame, *, title: str = "",
                      pixel_size_nm: float | None = None) -> plt.Figure:
    """Found, missed and false cores over one frame (with a scale bar given the pixel
    size) and, for a movie, their counts per frame
    (`dislotrack.infer.evaluate.core_outcomes`). The frame shown is the one with the most
    mistakes (missed + false), then the most true cores; its title says so."""
    image = np.asarray(image).reshape(-1, *np.shape(image)[-2:])
    per = outcomes.groupby(["frame", "outcome"]).size().unstack(fill_value=0)
    per = per.reindex(index=range(len(image)), columns=list(OUTCOME_STYLE), fill_value=0)
    rank = pd.DataFrame({"mistakes": per.missed + per["false"], "true": per.found + per.missed})
    frame = int(rank.sort_values(["mistakes", "true"], ascending=False, kind="stable").index[0])
    movie = len(image) > 1
    fig = Figure(figsize=(11 if movie else 6, 5.5))
    axes = fig.subplots(1, 2 if movie else 1, squeeze=False)
    ax = axes[0, 0]
    ax.imshow(_to_rgb(image[frame]))  # stretched as the other figures' frames
    here = outcomes[outcomes.frame == frame]
    for kind, (marker, colour, label) in OUTCOME_STYLE.items():
        g = here[here.outcome == kind]
        ax.plot(g.x, g.y, marker, ls="none", mfc="none", mec=colour, mew=1.5, ms=10,
                label=f"{label} ({len(g)})")
    why = " (the most mistakes)" if movie else ""
    fig.suptitle(f"{title} frame {frame}{why}".strip())
    if pixel_size_nm:
        scale_bar(ax, image[frame].shape, Calibration.from_file(pixel_size_nm=pixel_size_nm,
                                                                 frame_interval_s=None))
    # Below the image: over it, the legend would hide the cores it explains.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False)
    ax.set_axis_off()
    if movie:
        for kind, (marker, colour, label) in OUTCOME_STYLE.items():
            axes[0, 1].plot(per.index, per[kind], "-", marker=marker, color=colour, ms=4, label=label)
        axes[0, 1].set_xlabel("frame")
        axes[0, 1].set_ylabel("cores")
        for axis in (axes[0, 1].xaxis, axes[0, 1].yaxis):
            axis.get_major_locator().set_params(integer=True)
        # Above the panel: inside, it hid the lines where they run high.
        axes[0, 1].legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8,
                          frameon=False)
    fig.tight_layout()
    return fig


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(frame, [1, 99])
    g = np.clip((frame - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


#: Overlay frames are enlarged by a whole factor to at least this many pixels on their
#: short side, so glyphs and labels drawn on them are legible in a player.
MIN_OVERLAY_PX = 640
#: Longest side an enlarged overlay frame may reach [px] (x264 refuses over 16384).
MAX_OVERLAY_PX = 4096

#: Weight of the cyan tint over rock-salt in the overlay (its outline is drawn solid).
ROCKSALT_TINT = 0.2

_CYAN = np.array([0, 255, 255], np.uint8)


def overlay_frames(res: AnalysisResult, frames: Iterable[np.ndarray],
                   masks: Iterable[np.ndarray] | None) -> Iterable[np.ndarray]:
    """RGB frames, enlarged (`upscale_factor`), with rock-salt tinted and outlined in cyan,
    cores circled in their track's colour and numbered, h ticks, scale bar and time;
    streamed one frame at a time."""
    # With the frames a track skips (a missed detection), drawn dashed where the core
    # would be, as events.png does: else a tracked core blinks out for a frame.
    tracks = with_gaps(res.tracks, res.drift) if len(res.tracks) else res.tracks
    by_frame = {f: g for f, g in tracks.groupby("frame")} if len(tracks) else {}
    # Detections in no track, in every frame (white, unnumbered): before, only where a
    # frame had no tracked core, so the same kind of peak came and went with the tracks.
    unlinked = _untracked(res.detections, res.tracks)
    mask_iter = iter(masks) if masks is not None else None
    corner = None
    for i, frame in enumerate(frames):
        if corner is None and res.calibration.pixel_size_nm:  # one place for the whole movie
            corner = scale_bar_corner(overlay_mask(frame, pixel_size_nm=res.calibration.pixel_size_nm),
                                      res.calibration.pixel_size_nm)
        k = upscale_factor(np.shape(frame))
        rgb = _enlarge(_to_rgb(frame), k)
        h, w = rgb.shape[:2]
        if mask_iter is not None:
            _tint(rgb, _enlarge(np.asarray(next(mask_iter)).astype(bool), k), max(2, w // 400))
        img = Image.fromarray(rgb)
        d = ImageDraw.Draw(img)
        loose = unlinked[unlinked.frame == i].assign(particle=-1)
        tracked = by_frame.get(i)
        rows = loose if tracked is None else pd.concat([loose, tracked], ignore_index=True)
        _draw_cores(d, rows, k, min(h, w))
        font = _font(min(h, w))
        if res.calibration.pixel_size_nm:
            _draw_scale_bar(d, (h, w), res.calibration, k, font, corner)
        _boxed_text(d, (max(4, w // 80), max(4, h // 80)), overlay_stamp(res, i), font,
                    (255, 255, 0), anchor="lt")
        yield np.asarray(img)


def _untracked(detections: pd.DataFrame, tracks: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``detections`` in no track (same frame and raw position)."""
    if not len(detections):
        return pd.DataFrame({"frame": pd.Series(dtype=int)})
    if not len(tracks):
        return detections
    keys = ["frame", "x", "y"]
    merged = detections.merge(tracks[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge")


def upscale_factor(shape: tuple[int, ...]) -> int:
    """The whole factor that brings a frame's short side to at least `MIN_OVERLAY_PX`
    (1 for frames already that large), its long side kept within `MAX_OVERLAY_PX`."""
    short, long = max(min(shape[:2]), 1), max(shape[:2])
    return max(1, min(math.ceil(MIN_OVERLAY_PX / short), MAX_OVERLAY_PX // long))


def _enlarge(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` with each pixel repeated ``k`` x ``k`` times (nearest neighbour)."""
    return a if k == 1 else np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def _to_enlarged(v: float | np.ndarray, k: int) -> float | np.ndarray:
    """A pixel coordinate (origin at the top-left pixel's centre) in a frame enlarged by ``k``."""
    return (v + 0.5) * k - 0.5


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its edge (mask minus its erosion);
    the image border is not an edge."""
    if not mask.any():
        return mask.copy()
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=1)


def _tint(rgb: np.ndarray, mask: np.ndarray, width: int) -> None:
    """Tint ``mask`` cyan by `ROCKSALT_TINT` in place, its outline solid cyan."""
    rgb[mask] = ((1 - ROCKSALT_TINT) * rgb[mask] + ROCKSALT_TINT * _CYAN).astype(np.uint8)
    rgb[mask_outline(mask, width)] = _CYAN


def _draw_cores(d: ImageDraw.ImageDraw, rows: pd.DataFrame, k: int, w: int) -> None:
    """Circle, h tick and (tracked cores) track number of each core in ``rows`` (positions
    in original pixels) on a frame enlarged ``k`` times, with short side ``w`` pixels; a
    circle dashed where ``missed`` (a frame the track skips: the interpolated place)."""
    r, lw = max(8, w // 64), max(3, w // 240)  # w: the frame's short side
    tick = 3 * r
    font = _font(w, fraction=32)
    labels, drawn = [], []  # drawn: circle centres and tick ends, which numbers keep off
    for _, c in rows.iterrows():
        x, y = _to_enlarged(c.x, k), _to_enlarged(c.y, k)
        col = tuple(int(255 * v) for v in track_colour(c.particle)) if c.particle >= 0 else (255, 255, 255)
        end = [x + r * c.hx, y + r * c.hy, x + tick * c.hx, y + tick * c.hy]  # from the circle out
        drawn += [(x, y), (x + 2 * r * c.hx, y + 2 * r * c.hy), (end[2], end[3])]
        # Dashed: 12 arcs of 15 degrees with gaps as long.
        arcs = [(a, a + 15) for a in range(0, 360, 30)] if c.get("missed", False) is True else [(0, 360)]
        for a0, a1 in arcs:  # dark rims, legible over bright lattice
            d.arc([x - r - 1, y - r - 1, x + r + 1, y + r + 1], a0, a1, fill=(0, 0, 0), width=lw + 2)
        d.line(end, fill=(0, 0, 0), width=lw + 2)
        for a0, a1 in arcs:
            d.arc([x - r, y - r, x + r, y + r], a0, a1, fill=col, width=lw)
        d.line(end, fill=col, width=lw)
        if c.particle >= 0:
            labels.append((str(int(c.particle)), x, y, col))
    if not labels:
        return
    boxes = [d.textbbox((0, 0), text, font=font, stroke_width=2) for text, *_ in labels]
    sizes = np.array([(b[2] - b[0], b[3] - b[1]) for b in boxes], float)
    # Inside the frame, not cut at its edge; clear of other cores' circles and ticks.
    corners = place_labels(np.array([(x, y) for _, x, y, _ in labels]), sizes, gap=r + lw,
                           bounds=d.im.size, markers=np.array(drawn), marker_radius=r + lw)
    for (text, _, _, col), b, (lx, ly) in zip(labels, boxes, corners, strict=True):
        rim = (255, 255, 255) if rim_colour(tuple(v / 255 for v in col)) == "white" else (0, 0, 0)
        d.text((lx - b[0], ly - b[1]), text, font=font, fill=col, stroke_width=2, stroke_fill=rim)


def _luminance(rgb: tuple[int, int, int]) -> float:
    """Relative luminance in [0, 1] of an 8-bit sRGB colour (WCAG 2: the sRGB curve
    undone, then Rec. 709 weights)."""
    c = np.asarray(rgb[:3], float) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(linear @ (0.2126, 0.7152, 0.0722))


def overlay_stamp(res: AnalysisResult, i: int) -> str:
    """The overlay's corner text for frame ``i``: its time (`time_stamp`, on the movie's
    clock where it has one), and a second line where no (003) fringes stood out: whatever
    the overlay marks is doubtful (the warnings say why)."""
    stamp = time_stamp(i, res.calibration.frame_interval_s, frame_time(res, [i])[0])
    return stamp + ("\ndoubtful: no (003) fringes" if any(NO_FRINGES in w for w in res.warnings) else "")


def time_stamp(i: int, dt: float | None, t: float | None = None) -> str:
    """The overlay's label of frame ``i``: ``t = ... s`` (at ``t`` [s] if given, e.g. on the
    movie's clock, else ``i * dt``) with enough decimals that consecutive frames differ
    (`time_decimals`), or ``frame i`` without a frame interval."""
    if not dt:
        return f"frame {i}"
    return f"t = {i * dt if t is None else t:.{time_decimals(dt)}f} s"


def time_decimals(dt: float) -> int:
    """The fewest decimals (1 to `MAX_TIME_DECIMALS`) that write a frame interval ``dt`` [s]
    exactly (0.25 s: 2; 0.04 s: 2), else `MAX_TIME_DECIMALS` (1/30 s: 3, ``t = 12.367 s``),
    or, for frames less than a millisecond apart, as many as keep consecutive stamps apart."""
    for decimals in range(1, MAX_TIME_DECIMALS + 1):
        if abs(round(dt, decimals) - dt) <= 1e-9 * max(dt, 1.0):
            return decimals
    return max(MAX_TIME_DECIMALS, math.ceil(-math.log10(dt)) if dt > 0 else MAX_TIME_DECIMALS)


#: Time stamps carry at most this many decimals where frames are a millisecond or more
#: apart (six digits of 1/30 s read as noise).
MAX_TIME_DECIMALS = 3


def scale_label(bar_nm: float, calibration: Calibration) -> str:
    """A scale bar's label: its length, marked ``(est.)`` where the pixel size is an
    estimate (``calibration.pixel_size_source == "estimated"``)."""
    est = " (est.)" if calibration.pixel_size_source == "estimated" else ""
    return f"{bar_nm:g} nm{est}"


#: Corners the overlay's scale bar may take, in order of preference (the time stamp
#: holds the upper left).
SCALE_BAR_CORNERS = ("lower right", "lower left", "upper right")


def scale_bar_box(shape: tuple[int, int], pixel_size_nm: float, corner: str = "lower right",
                  ) -> tuple[int, int, int, int, float]:
    """Where the overlay's scale bar goes: a round length (`_nice_length`, about a fifth of
    the width) in a corner.

    Parameters
    ----------
    shape : (int, int)
        The frame's height and width [px].
    pixel_size_nm : float
        Its pixel size [nm/px].
    corner : str
        One of `SCALE_BAR_CORNERS`.

    Returns
    -------
    x0, y0, x1, y1 : int
        The bar's first and last pixel columns and rows (inclusive, as Pillow draws
        them): ``x1 - x0 + 1`` is the bar's length in pixels, rounded.
    bar_nm : float
        Its length [nm].
    """
    if corner not in SCALE_BAR_CORNERS:
        raise ValueError(f"corner must be one of {SCALE_BAR_CORNERS}, got {corner!r}")
    h, w = shape
    bar_nm = _nice_length(0.2 * w * pixel_size_nm)
    n, thick, pad = max(1, round(bar_nm / pixel_size_nm)), max(4, h // 80), max(8, w // 40)
    x1 = pad + n - 1 if corner.endswith("left") else w - pad
    y1 = h - pad if corner.startswith("lower") else pad + 2 * _font_px(h) + thick  # label above
    return x1 - n + 1, y1 - thick + 1, x1, y1, bar_nm


def scale_bar_corner(annotations: np.ndarray, pixel_size_nm: float) -> str:
    """The first of `SCALE_BAR_CORNERS` whose scale bar and label would not cover a
    burned-in annotation (`dislotrack.infer.overlays.overlay_mask`), else the one
    covering the least of them.

    Parameters
    ----------
    annotations : ndarray of bool (H, W)
        The first frame's burned-in annotations, at its own resolution.
    pixel_size_nm : float
        Its pixel size [nm/px].
    """
    shape = annotations.shape
    covered = []
    for corner in SCALE_BAR_CORNERS:
        x0, y0, x1, y1, _ = scale_bar_box(shape, pixel_size_nm, corner)
        top = max(0, y0 - 2 * _font_px(shape[0]))  # the label sits above the bar
        covered.append(int(annotations[top:y1 + 2, max(0, x0 - 1):x1 + 2].sum()))
        if covered[-1] == 0:
            return corner
    return SCALE_BAR_CORNERS[int(np.argmin(covered))]


def _draw_scale_bar(d: ImageDraw.ImageDraw, shape: tuple[int, int], calibration: Calibration,
                    k: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, corner: str) -> None:
    """White bar (`scale_bar_box`) in a one-pixel black frame, labelled above (from its
    left end, or ending at its right end where a long label would leave the frame), on a
    frame enlarged ``k`` times."""
    x0, y0, x1, y1, bar_nm = scale_bar_box(shape, calibration.pixel_size_nm / k, corner)
    d.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], fill=(0, 0, 0))
    d.rectangle([x0, y0, x1, y1], fill=(255, 255, 255))
    text = scale_label(bar_nm, calibration)
    left, _, right, _ = d.textbbox((0, 0), text, font=font)
    _boxed_text(d, (min(x0, x1 - (right - left)), y0 - (y1 - y0 + 1)), text, font,
                (255, 255, 255), anchor="lb")


def _font_px(height: int, fraction: int = 25) -> int:
    """Text height on a frame ``height`` px high (`_font`)."""
    return max(11, height // fraction)


def _font(height: int, fraction: int = 25) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at about 1/``fraction`` of the frame height (at least 11 px);
    the fixed-size bitmap font where Pillow cannot scale it (no FreeType, Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=_font_px(height, fraction))
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _boxed_text(d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
                font: ImageFont.ImageFont | ImageFont.FreeTypeFont, fill: tuple[int, int, int],
                *, anchor: str) -> None:
    """Text on a dark box, legible over bright and dark lattice alike, with its left-top
    (``anchor="lt"``) or left-bottom (``"lb"``) corner at ``xy``. Placed from its measured
    box, not Pillow's anchors, which the bitmap fallback font ignores."""
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    x = xy[0] - left
    y = xy[1] - top - (bottom - top if anchor == "lb" else 0)
    d.rectangle([x + left - 3, y + top - 2, x + right + 3, y + bottom + 2], fill=(0, 0, 0))
    d.text((x, y), text, font=font, fill=fill)


def nothing_to_show(ax: plt.Axes, text: str = "no tracks") -> None:
    """Say ``text`` (why there is nothing to show) on an axis that would otherwise be empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize=12, color="0.4", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})


def scale_bar(ax: plt.Axes, shape: tuple[int, ...], calibration: Calibration,
              corner: str = "lower right") -> None:
    """Draw on an image's axes a white bar of a round length (about a fifth of the
    width), exactly that long (not rounded to whole pixels as on the overlay), in a
    corner (`SCALE_BAR_CORNERS`; `scale_bar_corner` picks one clear of burned-in text),
    labelled with a dark rim (`scale_label`)."""
    h, w = shape[:2]
    # Where the overlay draws it (`scale_bar_box`), the place `scale_bar_corner` checked,
    # but at its exact length: the overlay's whole pixels would make 1 nm 12 px at
    # 0.08 nm/px (0.96 nm). It keeps the end at the frame's edge side where it was.
    x0, y0, x1, y1, bar_nm = scale_bar_box((h, w), calibration.pixel_size_nm, corner)
    length = bar_nm / calibration.pixel_size_nm
    left = x0 - 0.5 if corner.endswith("left") else x1 + 0.5 - length
    y = 0.5 * (y0 + y1)
    ax.plot([left, left + length], [y, y], "-", color="white", lw=3, solid_capstyle="butt",
            path_effects=[patheffects.Stroke(linewidth=5, foreground="black"), patheffects.Normal()])
    ax.text(left + 0.5 * length, y0 - 0.015 * h, scale_label(bar_nm, calibration), color="white",
            ha="center", va="bottom", fontsize=9, path_effects=_OUTLINE)


def _nice_length(x: float) -> float:
    """The largest of 1, 2, 5 x 10^k not above x."""
    k = np.floor(np.log10(max(x, 1e-9)))
    for m in (5, 2, 1):
        if m * 10**k <= x:
            return float(m * 10**k)
    return float(10**k)


def pad_to_16(frame: np.ndarray) -> np.ndarray:
    """``frame`` (rows, columns, channels) grown at the bottom and right to multiples of 16
    pixels by repeating its edge pixels (no black strips)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, -h % 16), (0, -w % 16), (0, 0)), mode="edge")


def write_mp4(frames: Iterable[np.ndarray], path: Path, *, fps: float) -> None:
    """Write RGB frames as H.264 MP4, padded to multiples of 16 (`pad_to_16`).

    PyAV directly rather than imageio, which cannot set the encoder preset: x264's
    "veryfast" encodes the overlay 2.5x faster than its default for 13 % more bytes.
    """
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        stream = None
        for fr in frames:
            fr = pad_to_16(fr)
            if stream is None:  # the size comes with the first frame
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(65535))
                stream.width, stream.height = fr.shape[1], fr.shape[0]
                stream.pix_fmt = "yuv420p"  # what players expect
                stream.options = {"preset": "veryfast"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")))
        if stream is not None:
            container.mux(stream.encode())  # flush the encoder


def write_png(frame: np.ndarray, path: Path) -> None:
    """Write one RGB overlay frame as PNG (a single image's overlay, which an MP4 of one
    frame shows poorly)."""
    Image.fromarray(np.asarray(frame, np.uint8)).save(path)
