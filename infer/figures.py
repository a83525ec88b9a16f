"""Figures of an analysis (trajectories, displacement vs time, counts, overlay movie) and of
its evaluation against annotations."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from dislotrack.infer.pipeline import AnalysisResult  # noqa: E402


def _colour(pid: int) -> tuple[float, float, float]:
    return plt.get_cmap("tab10")(int(pid) % 10)[:3]


def _time(res: AnalysisResult, frames: pd.Series) -> tuple[np.ndarray, str]:
    dt = res.calibration.frame_interval_s
    return (frames.to_numpy() * dt, "time (s)") if dt else (frames.to_numpy(float), "frame")


#: A dark rim that keeps track numbers legible over bright and dark lattice.
_OUTLINE = [patheffects.withStroke(linewidth=2.0, foreground="black")]

#: How a track's ends are drawn on the trajectories figure: birth / death -> marker.
END_MARKERS = {"nucleated": "*", "annihilated": "X", "entered": ">", "left": "<",
               "from_rocksalt": "D", "into_rocksalt": "D"}


def trajectories(res: AnalysisResult, path: Path) -> None:
    """Write `trajectories_figure` to ``path``."""
    _save(trajectories_figure(res), path)


def trajectories_figure(res: AnalysisResult) -> plt.Figure:
    """Tracks (drift-corrected to frame 0) over the first frame; ticks show h, markers
    how each track begins and ends (`END_MARKERS`, legend below the image, clear of the
    scale bar; none for present/survived)."""
    fig, ax = plt.subplots(figsize=(6, 6.3), layout="constrained")
    if res.first_frame is not None:
        ax.imshow(res.first_frame, cmap="gray")
    t = res.tracks
    xs, ys = ("x_corr", "y_corr") if "x_corr" in t else ("x", "y")
    fates = res.track_summary.set_index("particle") if len(res.track_summary) else None
    shown: set[str] = set()
    for pid, g in t.groupby("particle"):
        c = _colour(pid)
        ax.plot(g[xs], g[ys], "-", color=c, lw=1.5)
        x0, y0 = g[xs].iloc[0], g[ys].iloc[0]
        ax.plot(x0, y0, "o", color=c, ms=4)
        tick = 6 / max(res.calibration.pixel_size_nm / 0.1, 1e-3)
        ax.plot([x0, x0 + tick * g.hx.mean()], [y0, y0 + tick * g.hy.mean()], "-", color=c, lw=2)
        ax.annotate(str(pid), (x0, y0), color=c, fontsize=9, fontweight="bold", xytext=(3, 3),
                    textcoords="offset points", path_effects=_OUTLINE)
        if fates is None or pid not in fates.index:
            continue
        # The death marker smaller, on top: a short track's two ends often coincide.
        for fate, (x, y), ms in ((fates.at[pid, "birth"], (x0, y0), 12),
                                 (fates.at[pid, "death"], (g[xs].iloc[-1], g[ys].iloc[-1]), 7)):
            if fate in END_MARKERS:
                ax.plot(x, y, END_MARKERS[fate], ms=ms, mfc="none" if "rocksalt" in fate else c,
                        mec="white", mew=1.0)
                shown.add(fate)
    if shown:  # neutral proxies: a marker's colour is its track's
        handles = [plt.Line2D([], [], ls="none", marker=END_MARKERS[f], ms=7, mfc="0.6", mec="k",
                              label=f.replace("_", " ")) for f in END_MARKERS if f in shown]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3),
                   fontsize=8, frameon=False)
    if res.first_frame is not None and res.calibration.pixel_size_nm:
        _scale_bar(ax, res.first_frame.shape, res.calibration.pixel_size_nm)
    if t.empty:
        _no_tracks(ax)
    ax.set_title("trajectories (drift-corrected, over frame 0)")
    ax.set_axis_off()
    return fig


#: Up to this many tracks are named in the displacement legend; more get one entry.
MAX_NAMED_TRACKS = 10


def displacement(res: AnalysisResult, path: Path) -> None:
    """Write `displacement_figure` to ``path``."""
    _save(displacement_figure(res), path)


def displacement_figure(res: AnalysisResult) -> plt.Figure:
    """Climb and glide vs time per track (dashed) and mean +- SD (solid), as the seed's
    Fig. 2C/D; the legend sits beside the axes, naming tracks up to `MAX_NAMED_TRACKS`.

    Where no track has two detections (a single image, or only one-frame tracks) there is
    no motion: each axis says why instead of showing empty axes and a bare legend.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4), sharex=True, layout="constrained")
    t = res.tracks
    if len(t) and t.groupby("particle").size().max() < 2:
        t = t.iloc[:0]
    named = t.particle.nunique() <= MAX_NAMED_TRACKS if len(t) else False
    for ax, col, name in zip(axes, ["climb_nm", "glide_nm"], ["climb", "glide"], strict=True):
        if len(t):
            rel = t.assign(rel=t.frame - t.groupby("particle").frame.transform("min"))
            for pid, g in rel.groupby("particle"):
                tt, _ = _time(res, g.rel)
                ax.plot(tt, g[col], "--", color=_colour(pid), lw=1,
                        label=f"#{pid}" if named else "_nolegend_")
            agg = rel.groupby("rel")[col].agg(["mean", "std", "count"])
            agg = agg[agg["count"] >= 2]
            tt, _ = _time(res, pd.Series(agg.index))
            ax.errorbar(tt, agg["mean"], yerr=agg["std"], color="k", lw=2, capsize=2, label="mean ± SD")
        _, label = _time(res, pd.Series([0]))
        ax.set_xlabel(label + " since first detection")
        ax.set_ylabel(f"{name} distance (nm)")
        ax.set_title(name)
    if len(t):
        handles, labels = axes[1].get_legend_handles_labels()
        if not named:
            handles.append(plt.Line2D([], [], ls="--", color="0.5", lw=1))
            labels.append(f"{t.particle.nunique()} tracks")
        fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False)
    else:
        why = ("one frame: no motion to show" if res.shape[0] <= 1
               else "no tracks" if res.tracks.empty
               else "no track spans two frames:\nno motion to show")
        for ax in axes:
            _no_tracks(ax, why)
    return fig


#: Up to this many frames, the rock-salt fraction is marked at every value (the counts
#: always are); beyond, markers would hide its dotted line.
MARKED_FRAMES = 50


def counts(res: AnalysisResult, path: Path) -> None:
    """Write `counts_figure` to ``path``."""
    _save(counts_figure(res), path)


def counts_figure(res: AnalysisResult) -> plt.Figure:
    """Dislocation and dipole counts vs time (as the seed's Fig. 5F), RS fraction on the right.

    Counts get whole-number ticks; the fraction axis starts at 0 (at least 0 to 0.05, so a
    domain-free movie shows a flat line at the bottom, not one centred on negative values).
    Every value is marked (the fraction up to `MARKED_FRAMES` frames), so a single image's
    values show as points.
    """
    c = res.counts
    tt, label = _time(res, c.frame)
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(tt, c.n_dislocations, "o-", label="dislocations")
    ax.plot(tt, c.n_dipoles, "s-", label="dipoles")
    ax.set_xlabel(label)
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))  # no cores: 0 to 1, not 0 to 0.05
    if len(tt) == 1:  # a single image: one tick at its frame, not -0.04 ... 0.04
        ax.set_xlim(tt[0] - 0.5, tt[0] + 0.5)
        ax.set_xticks([tt[0]])
    ax2 = ax.twinx()
    # A marker per value of a short series: one frame's fraction is otherwise a line of
    # length zero, drawn as nothing.
    ax2.plot(tt, c.rocksalt_fraction, "c:", marker="^" if len(tt) <= MARKED_FRAMES else None,
             ms=5, label="rock-salt fraction")
    finite = c.rocksalt_fraction.to_numpy(float)
    top = float(finite[np.isfinite(finite)].max(initial=0.0))
    ax2.set_ylim(0, min(1.0, max(0.05, 1.1 * top)))
    ax2.set_ylabel("rock-salt area fraction")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside upper center", ncol=3, fontsize=8, frameon=False)
    return fig


def _save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: Marker of each `dislotrack.infer.evaluate.OUTCOMES` entry: (marker, colour, label).
OUTCOME_STYLE = {"found": ("o", "limegreen", "found"), "missed": ("x", "red", "missed"),
                 "false": ("s", "orange", "false")}


def evaluation_figure(image: np.ndarray, outcomes: pd.DataFrame, path: Path, *, title: str = "") -> None:
    """Found, missed and false cores over one frame and, for a movie, their counts per
    frame (`dislotrack.infer.evaluate.core_outcomes`). The frame shown is the one with the
    most mistakes (missed + false), then the most true cores."""
    image = np.asarray(image).reshape(-1, *np.shape(image)[-2:])
    per = outcomes.groupby(["frame", "outcome"]).size().unstack(fill_value=0)
    per = per.reindex(index=range(len(image)), columns=list(OUTCOME_STYLE), fill_value=0)
    rank = pd.DataFrame({"mistakes": per.missed + per["false"], "true": per.found + per.missed})
    frame = int(rank.sort_values(["mistakes", "true"], ascending=False, kind="stable").index[0])
    movie = len(image) > 1
    fig, axes = plt.subplots(1, 2 if movie else 1, figsize=(11 if movie else 6, 5.5), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(image[frame], cmap="gray")
    here = outcomes[outcomes.frame == frame]
    for kind, (marker, colour, label) in OUTCOME_STYLE.items():
        g = here[here.outcome == kind]
        ax.plot(g.x, g.y, marker, ls="none", mfc="none", mec=colour, mew=1.5, ms=10,
                label=f"{label} ({len(g)})")
    fig.suptitle(f"{title} frame {frame}".strip())
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
        axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(frame, [1, 99])
    g = np.clip((frame - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def overlay_frames(res: AnalysisResult, frames: Iterable[np.ndarray],
                   masks: Iterable[np.ndarray] | None) -> Iterable[np.ndarray]:
    """RGB frames with RS tinted cyan, cores coloured by track, h ticks, scale bar and time."""
    ps, dt = res.calibration.pixel_size_nm, res.calibration.frame_interval_s
    by_frame = {f: g for f, g in res.tracks.groupby("frame")}
    unlinked = res.detections
    mask_iter = iter(masks) if masks is not None else None
    for i, frame in enumerate(frames):
        rgb = _to_rgb(frame)
        if mask_iter is not None:
            m = next(mask_iter).astype(bool)
            rgb[m] = (0.6 * rgb[m] + 0.4 * np.array([0, 255, 255])).astype(np.uint8)
        img = Image.fromarray(rgb)
        d = ImageDraw.Draw(img)
        h, w = rgb.shape[:2]
        r = max(3, w // 120)
        tick = 4 * r
        tracked = by_frame.get(i)
        rows = tracked if tracked is not None else unlinked[unlinked.frame == i].assign(particle=-1)
        for _, c in rows.iterrows():
            col = tuple(int(255 * v) for v in _colour(c.particle)) if c.particle >= 0 else (255, 255, 255)
            d.ellipse([c.x - r, c.y - r, c.x + r, c.y + r], outline=col, width=2)
            d.line([c.x, c.y, c.x + tick * c.hx, c.y + tick * c.hy], fill=col, width=2)
        font = _font(h)
        if ps:
            bar_nm = _nice_length(0.2 * w * ps)
            bar, thick, pad = bar_nm / ps, max(4, h // 80), max(8, w // 40)
            y0 = h - pad - thick
            d.rectangle([w - pad - bar, y0, w - pad, y0 + thick], fill=(255, 255, 255),
                        outline=(0, 0, 0))
            _boxed_text(d, (w - pad - bar, y0 - thick), f"{bar_nm:g} nm", font, (255, 255, 255),
                        anchor="lb")
        _boxed_text(d, (max(4, w // 80), max(4, h // 80)),
                    f"t = {i * dt:.1f} s" if dt else f"frame {i}", font, (255, 255, 0), anchor="lt")
        yield np.asarray(img)


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at about 1/25 of the frame height (at least 11 px); the
    fixed-size bitmap font where Pillow cannot scale it (no FreeType, Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=max(11, height // 25))
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


def _no_tracks(ax: plt.Axes, text: str = "no tracks") -> None:
    """Say ``text`` (why there is nothing to show) on an axis that would otherwise be empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize=12, color="0.4", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})


def _scale_bar(ax: plt.Axes, shape: tuple[int, ...], pixel_size_nm: float) -> None:
    """A white bar of a round length (about a fifth of the width) at the lower right."""
    h, w = shape[:2]
    bar_nm = _nice_length(0.2 * w * pixel_size_nm)
    bar = bar_nm / pixel_size_nm
    x1, y = w - 0.04 * w, h - 0.05 * h
    ax.plot([x1 - bar, x1], [y, y], "-", color="white", lw=3, solid_capstyle="butt")
    ax.text(x1 - bar / 2, y - 0.015 * h, f"{bar_nm:g} nm", color="white", ha="center", va="bottom",
            fontsize=9)


def _nice_length(x: float) -> float:
    """The largest of 1, 2, 5 x 10^k not above x."""
    k = np.floor(np.log10(max(x, 1e-9)))
    for m in (5, 2, 1):
        if m * 10**k <= x:
            return float(m * 10**k)
    return float(10**k)


def write_mp4(frames: Iterable[np.ndarray], path: Path, *, fps: float) -> None:
    """Write RGB frames as H.264 MP4, padding sides to multiples of 16."""
    import imageio.v3 as iio

    with iio.imopen(path, "w", plugin="pyav") as f:
        f.init_video_stream("libx264", fps=fps)
        for fr in frames:
            h, w = fr.shape[:2]
            pad = ((0, -h % 16), (0, -w % 16), (0, 0))
            f.write_frame(np.pad(fr, pad))
