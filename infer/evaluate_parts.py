"""The part of an annotated movie that ``infer --frames`` / ``--region`` analysed, and the
annotation's truth as an analysis of that part sees it (for `dislotrack.infer.evaluate`).

infer's tables of a part number its frames from the window's first and give positions
in the region's own pixels; events at the window's ends and at the edges the region cut
follow infer's rules (present / survived, entered / left). Pure: tables in, tables out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from dislotrack.data_gen.annotations import UNKNOWN_PARTICLE, Annotation
from dislotrack.data_gen.conventions import glide_climb
from dislotrack.infer.options import frame_window, region_box

#: How infer names the results of part of an input: ``<stem>_framesA-B``, ``<stem>_xX0-X1_yY0-Y1``
#: or both (`dislotrack.infer.run`).
PART_SUFFIX = re.compile(r"(?:_frames(?P<frames>\d+-\d+))?(?:_x(?P<x>\d+-\d+)_y(?P<y>\d+-\d+))?(?<=\d)")

#: infer's default band at the frame border [nm] (`analyze(border_nm=)`), for results whose
#: summary.json does not record it.
DEFAULT_BORDER_NM = 2.0


@dataclass(frozen=True)
class Part:
    """The part of an annotated item that infer analysed (``--frames``, ``--region``).

    Frames ``start`` to ``stop - 1`` and columns ``x0`` to ``x1 - 1``, rows ``y0`` to
    ``y1 - 1`` [px] of the item's ``n_frames`` frames of ``width`` x ``height`` px.
    infer's tables number the window's frames from 0 and give positions in the region's
    pixels: item frame = table frame + ``start``, item x = table x + ``x0`` (y likewise).
    """

    start: int
    stop: int
    x0: int
    x1: int
    y0: int
    y1: int
    n_frames: int
    height: int
    width: int

    @property
    def options(self) -> dict:
        """``frames`` and ``region`` as infer records them in summary.json (None: whole)."""
        whole_t = (self.start, self.stop) == (0, self.n_frames)
        whole_xy = (self.x0, self.x1, self.y0, self.y1) == (0, self.width, 0, self.height)
        return {"frames": None if whole_t else f"{self.start}:{self.stop}",
                "region": None if whole_xy else f"{self.x0}:{self.x1},{self.y0}:{self.y1}"}

    def overlaps(self, other: Part) -> bool:
        """Whether the two parts share a frame and a pixel (a core of one may be the other's)."""
        return (self.start < other.stop and other.start < self.stop and self.x0 < other.x1
                and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether item positions ``x``, ``y`` [px] lie in the region's pixels (a pixel spans
        its centre ± 0.5 px: half-open, so that adjacent regions share no core)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        return (x >= self.x0 - 0.5) & (x < self.x1 - 0.5) & (y >= self.y0 - 0.5) & (y < self.y1 - 0.5)

    def holds(self, cores: pd.DataFrame) -> pd.Series:
        """Whether each core (frame, x, y [px] of the item) lies in the part."""
        in_window = (cores.frame >= self.start) & (cores.frame < self.stop)
        return in_window & self.contains(cores.x, cores.y)

    def cut_edge_distance(self, x: float, y: float) -> float:
        """Distance [px] of item position ``x``, ``y`` from the nearest edge of the region
        that cuts the frames (infinite where the region keeps every frame edge): at the
        frames' own edges the item's truth already holds what it holds for the whole."""
        gaps = [np.inf]
        if self.x0 > 0:
            gaps.append(x - (self.x0 - 0.5))
        if self.x1 < self.width:
            gaps.append(self.x1 - 0.5 - x)
        if self.y0 > 0:
            gaps.append(y - (self.y0 - 0.5))
        if self.y1 < self.height:
            gaps.append(self.y1 - 0.5 - y)
        return float(min(gaps))


def find_part(options: dict | None, folder_name: str, stem: str,
              shape: tuple[int, int, int]) -> Part | None:
    """The part of an annotated (t, y, x) ``shape`` that infer results are of; None for
    the whole item.

    summary.json's ``options`` (``frames`` "A:B", ``region`` "X0:X1,Y0:Y1", in the input's
    frames and pixels) say it; results without them are read by their folder's name
    (``<stem>_framesA-B_xX0-X1_yY0-Y1``, `PART_SUFFIX`).

    Raises
    ------
    ValueError
        If the part is no window or rectangle of ``shape`` (another movie of that name).

    Examples
    --------
    >>> find_part(None, "movie_frames2-14_x8-64_y0-88", "movie", (20, 96, 96)).options
    {'frames': '2:14', 'region': '8:64,0:88'}
    >>> find_part({"frames": None, "region": None}, "movie", "movie", (20, 96, 96)) is None
    True
    """
    frames = region = None
    if options is not None and ("frames" in options or "region" in options):
        frames, region = options.get("frames"), options.get("region")
    elif (named := PART_SUFFIX.fullmatch(folder_name[len(stem):])) is not None:
        frames = named["frames"] and named["frames"].replace("-", ":")
        region = named["x"] and "{}:{},{}:{}".format(*named["x"].split("-"), *named["y"].split("-"))
    if not frames and not region:
        return None
    n, h, w = shape
    start, stop = frame_window(frames, n) if frames else (0, n)
    x0, x1, y0, y1 = region_box(region, (h, w)) if region else (0, w, 0, h)
    return Part(start, stop, x0, x1, y0, y1, n, h, w)


def part_cores(cores: pd.DataFrame, part: Part) -> pd.DataFrame:
    """The annotated ``cores`` (frame, x, y [px] of the item) that lie in ``part``, in
    infer's numbering: frames from the window's first, positions in the region's pixels."""
    keep = part.holds(cores)
    return cores[keep].assign(frame=cores.frame[keep] - part.start, x=cores.x[keep] - part.x0,
                              y=cores.y[keep] - part.y0).reset_index(drop=True)


def part_stack(stack: np.ndarray, part: Part) -> np.ndarray:
    """The (t, y, x) ``stack`` (image or mask of the whole item) cut to ``part``."""
    return stack[part.start:part.stop, part.y0:part.y1, part.x0:part.x1]


def part_annotation(ann: Annotation, part: Part) -> Annotation:
    """``ann`` as the truth of ``part``: its frames, pixels and cores (`part_cores`)."""
    rs = None if ann.rs_mask is None else part_stack(ann.rs_mask.reshape(ann.image.shape), part)
    return replace(ann, image=part_stack(ann.image, part), cores=part_cores(ann.cores, part), rs_mask=rs)


def part_events(events: pd.DataFrame, cores: pd.DataFrame, part: Part, *, pixel_size_nm: float,
                border_nm: float = DEFAULT_BORDER_NM) -> pd.DataFrame:
    """The true ``events`` (frame, kind, x_nm, y_nm [item nm], particles) a perfect
    analysis of ``part`` reports, as infer numbers them (frames from the window's first,
    x_nm, y_nm from the region's corner).

    As infer judges the ends of the window and the region's edges: a nucleation in the
    window's first frame is a core ``present`` there, an annihilation in its last one a
    core that ``survived``; an event whose cores (``cores``' labels in the item's pixels,
    at the event's frame; without labels, the event's place) lie outside the region or all
    within ``border_nm`` of an edge that cuts the frames entered or left (a dipole with
    one of its two cores there still nucleates or annihilates as a pair); a dipole of which
    the region holds one core only (the other labelled outside) is that core's own event.
    """
    labels = _labels_by_frame_and_particle(cores)
    band_px = border_nm / pixel_size_nm
    rows = []
    for ev in events.itertuples(index=False):
        frame, kind = int(ev.frame), str(ev.kind)
        first_or_last = part.start if kind.endswith("nucleation") else part.stop - 1
        if not part.start <= frame < part.stop or frame == first_or_last:
            continue
        seen = _event_in_region(ev, labels, part, band_px, pixel_size_nm)
        if seen is not None:
            kind, x_nm, y_nm = seen
            rows.append({"frame": frame - part.start, "kind": kind,
                         "x_nm": x_nm - part.x0 * pixel_size_nm, "y_nm": y_nm - part.y0 * pixel_size_nm,
                         "particles": getattr(ev, "particles", "")})
    return pd.DataFrame(rows, columns=["frame", "kind", "x_nm", "y_nm", "particles"])


def _labels_by_frame_and_particle(cores: pd.DataFrame) -> dict[tuple[int, int], tuple[float, float]]:
    """Labelled positions [px] by (frame, particle); none without particle ids."""
    if "particle" not in cores or not len(cores):
        return {}
    known = cores[cores.particle != UNKNOWN_PARTICLE]
    return {(int(f), int(p)): (float(x), float(y))
            for f, p, x, y in known[["frame", "particle", "x", "y"]].itertuples(index=False)}


def _event_in_region(ev: tuple, labels: dict, part: Part, band_px: float,
                     pixel_size_nm: float) -> tuple[str, float, float] | None:
    """(kind, x_nm, y_nm [item nm]) of true event ``ev`` as an analysis of ``part``'s
    region sees it, or None where it sees none (`part_events`' rules)."""
    frame = int(ev.frame)
    cores = [labels[k] for p in _particle_ids(getattr(ev, "particles", "")) if (k := (frame, p)) in labels]
    if not cores:  # out of the field (a generated partner): the truth's own place
        cores = [(ev.x_nm / pixel_size_nm, ev.y_nm / pixel_size_nm)]
    inside = [c for c in cores if part.contains(*c)]
    if not inside or all(part.cut_edge_distance(*c) <= band_px for c in inside):
        return None  # out of the region, or entered / left through its edge
    if len(inside) < len(cores) and ev.kind.startswith("dipole_"):  # the region cut the pair
        return ev.kind.removeprefix("dipole_"), inside[0][0] * pixel_size_nm, inside[0][1] * pixel_size_nm
    return ev.kind, float(ev.x_nm), float(ev.y_nm)


def _particle_ids(value: object) -> list[int]:
    """The whole-number ids in an events table's ``particles`` cell ("3 4"); none from a
    blank (NaN) cell or one of other text (a hand-made table), whose event is then
    judged by its own place."""
    ids = pd.to_numeric(pd.Series(str(value).split(), dtype=object), errors="coerce").to_numpy(float)
    return [int(i) for i in ids if np.isfinite(i) and i == int(i)]


def part_tracks(true_tracks: pd.DataFrame, cores: pd.DataFrame, part: Part, *,
                drift: pd.DataFrame | None, pixel_size_nm: float,
                frame_interval_s: float | None, min_frames: int) -> tuple[pd.DataFrame, int]:
    """The true tracks (`tracking_scores`' ``true_tracks``) labelled in ``part``, and how
    many of those whose velocities are scored (``min_frames`` labelled frames in the
    part) it cuts.

    A track whose every labelled core lies in the part keeps the truth's velocities; one
    the part cuts (frames or cores outside it) gets the velocity of the piece inside, as
    infer can measure it: a straight-line fit of its labels there, less the true
    ``drift`` (frame, dx, dy [px]), split along the labels' mean **h** (glide, climb
    [nm/s]; NaN without a drift table or frame interval, or under two labelled frames).
    """
    inside = part.holds(cores)
    n_in, n_all = cores[inside].groupby("particle").size(), cores.groupby("particle").size()
    kept = true_tracks[true_tracks.particle.isin(n_in.index)].copy()
    cut = kept.particle.map(n_in) < kept.particle.map(n_all)
    for i in kept.index[cut]:
        labelled = cores[inside & (cores.particle == kept.at[i, "particle"])]
        glide, climb = _fitted_velocities(labelled, drift, pixel_size_nm=pixel_size_nm,
                                          frame_interval_s=frame_interval_s)
        kept.loc[i, ["glide_velocity_nm_s", "climb_velocity_nm_s"]] = glide, climb
    return kept.reset_index(drop=True), int((cut & (kept.particle.map(n_in) >= min_frames)).sum())


def _fitted_velocities(labelled: pd.DataFrame, drift: pd.DataFrame | None, *, pixel_size_nm: float,
                       frame_interval_s: float | None) -> tuple[float, float]:
    """Glide and climb velocity [nm/s] of one track's labels (frame, x, y [px], hx, hy),
    drift removed (`part_tracks`); NaN where they cannot be fitted."""
    if drift is None or not frame_interval_s or labelled.frame.nunique() < 2:
        return np.nan, np.nan
    shift = drift.set_index("frame").reindex(labelled.frame)[["dx", "dy"]].to_numpy(float)
    xy = (labelled[["x", "y"]].to_numpy(float) - shift) * pixel_size_nm  # the specimen's frame
    h = np.nanmean(labelled[["hx", "hy"]].to_numpy(float), axis=0)
    if not np.isfinite(xy).all() or not np.isfinite(h).all() or not h.any():
        return np.nan, np.nan
    glide, climb = glide_climb(xy - xy[0], h)
    t = labelled.frame.to_numpy(float) * frame_interval_s
    return float(np.polyfit(t, glide, 1)[0]), float(np.polyfit(t, climb, 1)[0])
