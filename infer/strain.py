"""``--strain``: per-frame GPA strain maps streamed to ImageJ TIFF stacks, and a figure
after the seed's Fig. 1B (image and strain maps side by side, cores marked)."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tifffile
from matplotlib.figure import Figure

from dislotrack.infer.calibration import Calibration
from dislotrack.infer.figures import save_figure, scale_bar
from dislotrack.infer.gpa import NoReflectionError, find_reflections, moire_ripples, strain_maps, strain_noise
from dislotrack.infer.interface import option
from dislotrack.infer.lattice import D_SPACING_TOLERANCE
from dislotrack.infer.overlays import shows_nothing

logger = logging.getLogger(__name__)

COMPONENTS = {"exx": "strain_exx", "eyy": "strain_eyy", "exy": "strain_exy", "omega": "rotation_rad"}

#: What each map's values are: the TIFFs' ImageJ Info and summary.json's notes.
AXES_NOTE = "image axes: x = column, y = row pointing down (Conventions)"
MEANINGS = {
    "exx": "exx = dux/dx, tensor strain [dimensionless]",
    "eyy": "eyy = duy/dy, tensor strain [dimensionless]",
    "exy": "exy = (dux/dy + duy/dx) / 2, tensor (not engineering) shear strain [dimensionless]; "
           "opposite in sign to a y-up frame's",
    "omega": "omega = (dux/dy - duy/dx) / 2, lattice rotation [rad], > 0 counter-clockwise as "
             "displayed",
}
#: The colour bars' quantity (strain is dimensionless).
COLOUR_BAR_LABELS = {"exx": "strain", "eyy": "strain", "exy": "strain", "omega": "ω (rad)"}


def border_width_px(resolution_nm: float, pixel_size_nm: float) -> int:
    """Width of the frame border where GPA maps are not valid [px]: one mask width, over
    which the Fourier filter wraps the opposite edge in (maps up to |0.5| there)."""
    return int(np.ceil(resolution_nm / pixel_size_nm))


def without_border(strain_map: np.ndarray, width: int) -> np.ndarray:
    """``strain_map`` as float32 with a ``width``-px border set to NaN (not measured)."""
    out = np.array(strain_map, dtype=np.float32)
    if width > 0:
        out[:width], out[-width:], out[:, :width], out[:, -width:] = np.nan, np.nan, np.nan, np.nan
    return out


def reference_box(text: str, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``"X0:X1,Y0:Y1"`` [px, end exclusive] as ``(x0, x1, y0, y1)`` inside a frame of
    ``shape`` (rows, columns).

    Examples
    --------
    >>> reference_box("20:236,170:240", (256, 256))
    (20, 236, 170, 240)
    """
    try:
        xs, ys = str(text).split(",")
        (x0, x1), (y0, y1) = (tuple(int(v) for v in part.split(":")) for part in (xs, ys))
    except ValueError:
        raise ValueError(f"{option('strain_reference')} must be X0:X1,Y0:Y1 in pixels (e.g. "
                         f"20:236,170:240), got {text!r}") from None
    if not (0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]):
        raise ValueError(f"{option('strain_reference')} {text!r} is not a box inside the {shape[1]} x "
                         f"{shape[0]} px frames")
    return x0, x1, y0, y1


class StrainWriter:
    """Frame sink (see `analyze`'s ``frame_sink``) writing GPA maps as float32 stacks.

    Parameters
    ----------
    out : Path
        Folder for the TIFFs.
    shape : tuple of int
        ``(frames, rows, columns)``.
    pixel_size_nm : float
        Pixel size [nm/px].
    frame_interval_s : float or None
        Frame interval [s] for the TIFFs' calibration.
    d_spacing_nm : float
        The (003) spacing [nm] the first reflection is looked for at.
    resolution_nm : float
        The maps' resolution [nm] (the GPA mask's real-space FWHM).
    pixel_size_source : str
        Where the pixel size came from (the scale bar says "est." for an estimate).
    reference : tuple of int, optional
        ``(x0, x1, y0, y1)`` [px, end exclusive]: strain and rotation are relative to
        this region's mean lattice in each frame (default: the lattice of the reflections
        found on the first frame with maps, refined over its interior).
    """

    def __init__(self, out: Path, *, shape: tuple[int, int, int], pixel_size_nm: float,
                 frame_interval_s: float | None, d_spacing_nm: float, resolution_nm: float = 1.0,
                 pixel_size_source: str = "file",
                 reference: tuple[int, int, int, int] | None = None):
        self.out, self.ps, self.d, self.res = out, pixel_size_nm, d_spacing_nm, resolution_nm
        self.ps_source = pixel_size_source  # the scale bar says "est." for an estimate
        self.reference = reference
        self.ripples: list[dict] = []
        self.noise: dict[str, float] | None = None  # `strain_noise` of the first maps
        meta: dict = {"unit": "nm", "axes": "TYX"}
        if frame_interval_s:
            meta["finterval"] = frame_interval_s
        self.maps = {k: tifffile.memmap(out / f"{name}.tif", shape=shape, dtype=np.float32,
                                        imagej=True, resolution=(1 / pixel_size_nm, 1 / pixel_size_nm),
                                        metadata={**meta, "Info": self._info(k)})
                     for k, name in COMPONENTS.items()}
        self.g: np.ndarray | None = None
        self.first: tuple[int, np.ndarray, dict, pd.DataFrame] | None = None
        self.said_narrow = False
        self.measured = np.zeros(shape[0], bool)  # frames given maps (the rest: NaN at close)

    def __call__(self, index: int, frame: np.ndarray, detections: pd.DataFrame) -> None:
        if self.g is None and shows_nothing(frame):
            for mm in self.maps.values():  # a blank frame (beam blanked): no strain there,
                mm[index] = np.nan  # and no reflections to find: the next frame is tried
            return
        if self.g is None:
            try:
                self.g = find_reflections(frame, pixel_size_nm=self.ps, d_spacing_nm=self.d,
                                          layered=True)
            except NoReflectionError as e:
                shows = ("no (003) fringes" if "reflection 1" in str(e) else
                         "no second reflection besides (003) that a layered lattice has (the "
                         "(003) fringes alone: e.g. a [1-10] view, or a pixel size too coarse "
                         "for the in-layer planes)")
                logger.warning("no strain maps (no strain TIFFs are written): 2-D strain needs two "
                               "lattice reflections, and frame %d shows %s. Detail: %s", index, shows, e)
                self.g = np.zeros((0, 2))
            else:
                self._check_first_reflection()
        if len(self.g) < 2:
            return
        edge = border_width_px(self.res, self.ps)
        if 2 * edge >= min(frame.shape):
            if not self.said_narrow:  # once, on the first frame that gets this far
                logger.warning("no strain maps: the frames (%d x %d px) are not wider than the two "
                               "%d px borders a %g nm resolution leaves out", frame.shape[1],
                               frame.shape[0], edge, self.res)
                self.said_narrow = True
            return
        ref = None if self.reference is None else np.s_[self.reference[2]:self.reference[3],
                                                          self.reference[0]:self.reference[1]]
        m = strain_maps(frame, self.g[0], self.g[1], pixel_size_nm=self.ps, resolution_nm=self.res,
                        reference=ref)
        for k in COMPONENTS:
            m[k] = without_border(m[k], edge)
            self.maps[k][index] = m[k]
        self.measured[index] = True
        if self.first is None:
            self.first = (index, frame, {k: m[k] for k in COMPONENTS}, detections)
            self._check_ripples(index, frame, m)
            self.noise = strain_noise(frame, m["g"], pixel_size_nm=self.ps, resolution_nm=self.res)

    def _check_ripples(self, index: int, frame: np.ndarray, maps: dict) -> None:
        # An aliased reflection inside a mask makes regular stripes that look like strain
        # (perfect LiNiO2 at 33-39 deg: +-0.01): say so, once, from the first maps.
        self.ripples = moire_ripples(frame, maps, pixel_size_nm=self.ps, resolution_nm=self.res)
        if not self.ripples:
            return
        r = self.ripples[0]
        n1, n2 = r["combination"]
        logger.warning(
            "strain maps carry a moiré ripple (stripes of ±%.1g or more, period %.2g nm, their normal "
            "at %.0f° from x, counter-clockwise as displayed; frame %d): the lattice reflection "
            "%d·g1 %+d·g2, beyond the Nyquist frequency, aliases to within the GPA mask around g%d. "
            "The stripes are not strain; a coarser %s (about %g nm) suppresses them",
            r["amplitude"], r["period_nm"], r["angle_deg"], index, n1, n2, r["g_index"],
            option("strain_resolution_nm"), r["coarser_resolution_nm"])

    def _check_first_reflection(self) -> None:
        # GPA takes the strongest spot near the (003) spacing, more loosely than the lattice
        # check of detection: say where it is another reflection (another material?).
        d = 1 / float(np.hypot(*self.g[0]))
        if abs(d / self.d - 1) > D_SPACING_TOLERANCE:
            logger.warning("strain maps are from the %.3g nm reflection, %.0f %% off the %g nm "
                           "(003) spacing: check the pixel size and %s (another material?)",
                           d, 100 * abs(d / self.d - 1), self.d, option("d_spacing_nm"))

    def _info(self, component: str) -> str:
        # The reflections found on the first frame with maps are every frame's reference.
        ref = ("the mean lattice of the first measured frame's interior (frame 0 unless blank)"
               if self.reference is None else
               "the mean lattice of x {}:{}, y {}:{} px in each frame".format(*self.reference))
        return (f"{MEANINGS[component]}; {AXES_NOTE}. GPA at {self.res:g} nm resolution (dislotrack "
                f"--strain); relative to {ref}; NaN: not measured (a {border_width_px(self.res, self.ps)}"
                " px border where the Fourier filter wraps, weak lattice, frames without maps)")

    def settings(self) -> dict:
        """How the maps were made, for summary.json: resolution, reflections, reference,
        conventions, border and any moiré ripple found (`moire_ripples`)."""
        g = [] if self.g is None else [[float(v) for v in gi] for gi in self.g]
        return {
            "written": bool(self.measured.any()),
            "resolution_nm": self.res,
            "g_per_nm": g,  # (gx, gy) [cycles/nm], image axes
            "spacings_nm": [1 / float(np.hypot(*gi)) for gi in g],
            "reflections_from_frame": None if self.first is None else int(self.first[0]),
            "reference": (f"mean lattice of frame {self.first[0] if self.first else 0}'s interior"
                          if self.reference is None else
                          dict(zip(("x0", "x1", "y0", "y1"), self.reference, strict=True))),
            "axes": AXES_NOTE,
            "components": {COMPONENTS[k]: v for k, v in MEANINGS.items()},
            "border_px": border_width_px(self.res, self.ps),
            # The rms image noise alone gives each map (first frame with maps): below it,
            # a map's values are not strain.
            "noise_rms": None if self.noise is None else {COMPONENTS[k]: v for k, v in self.noise.items()},
            "moire_ripples": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()}
                              for r in self.ripples],
        }

    def discard(self) -> None:
        """Drop the maps unwritten (an analysis that failed; its folder goes)."""
        self.maps = {}

    def close(self) -> None:
        """Write the maps (NaN in every frame without maps: frames past the last one given,
        e.g. a video that yields fewer than its header says, or blank); where no frame got
        maps (no reflections, frames too narrow, all blank), remove the files instead: the
        warning says why."""
        if self.g is None and self.maps:  # every frame was blank
            logger.warning("no strain maps (no strain TIFFs are written): 2-D strain needs two "
                           "lattice reflections, and every frame is blank (one grey level)")
        paths = [Path(mm.filename) for mm in self.maps.values()]
        keep = bool(self.measured.any())
        for mm in self.maps.values():
            if keep:  # a frame without maps: NaN, not a strain of 0
                mm[~self.measured] = np.nan
                mm.flush()
        self.maps = {}  # closes the memory maps (before their files go)
        if not keep:
            for path in paths:
                path.unlink(missing_ok=True)

    def figure(self, path: Path) -> None:
        """The first frame with maps (frame 0 unless it was blank) and its strain maps,
        cores marked (`strain_figure`)."""
        if self.first is None:
            return
        index, frame, maps, det = self.first
        spacings = " and ".join(f"{1 / np.hypot(*g):.3g} nm" for g in self.g)
        ref = ("its mean lattice" if self.reference is None else
               "the mean lattice of x {}:{}, y {}:{} px".format(*self.reference))
        ripple = "" if not self.ripples else (
            f"\nmoiré ripple (aliased reflection, not strain): ±{self.ripples[0]['amplitude']:.1g} or more, "
            f"period {self.ripples[0]['period_nm']:.2g} nm")
        fig = strain_figure(frame, maps, det, title=(
            f"GPA at {self.res:g} nm from the {spacings} reflections of frame {index}; strain relative "
            f"to {ref};\nω > 0 counter-clockwise as displayed; grey: not measured (1 "
            f"filter width at the edges, and where a reflection is weak, e.g. rock salt){ripple}"),
            calibration=Calibration(pixel_size_nm=self.ps, pixel_size_source=self.ps_source),
            frame_index=index, noise=self.noise)
        save_figure(fig, path, dpi=110)


#: Frames at least this many times wider than tall get their panels stacked in a column.
WIDE_ASPECT = 2.5


def strain_figure(frame: np.ndarray, maps: dict[str, np.ndarray], cores: pd.DataFrame, *,
                  title: str = "", calibration: Calibration | None = None,
                  frame_index: int | None = None, noise: dict[str, float] | None = None) -> plt.Figure:
    """The image and its strain maps as equal panels, cores marked on each.

    Panels sit in a row, or in a column for frames `WIDE_ASPECT` times wider than tall;
    each map's colour bar hangs beside its panel (an inset) rather than taking its width,
    so every panel shows the frame at the same size and the maps line up with the image.

    Parameters
    ----------
    frame : ndarray
        The image (rows, columns).
    maps : dict of str to ndarray
        `COMPONENTS`' maps, each of ``frame``'s shape (NaN where not measured); other
        keys (e.g. `strain_maps`' ``ux``, ``g``) are ignored.
    cores : DataFrame
        ``x, y`` [px] to mark.
    title : str
        The figure's title.
    calibration : Calibration, optional
        With a pixel size: a scale bar on the image.
    frame_index : int, optional
        The frame shown, named over the image.
    noise : dict, optional
        Each map's rms from image noise alone (`dislotrack.infer.gpa.strain_noise`): named
        in its title, and its colour scale spans at least `NOISE_SPAN` times it, so that
        noise on a perfect lattice does not fill the colour bar.

    Returns
    -------
    Figure
        Outside pyplot: display or save it.

    Raises
    ------
    ValueError
        Where ``maps`` lacks one of `COMPONENTS`.
    """
    missing = [k for k in COMPONENTS if k not in maps]
    if missing:
        raise ValueError(f"maps must hold {', '.join(COMPONENTS)} (e.g. gpa.strain_maps' result); "
                         f"missing: {', '.join(missing)}")
    maps = {k: maps[k] for k in COMPONENTS}
    h, w = frame.shape
    column = w >= WIDE_ASPECT * h
    n = 1 + len(maps)
    # Panel size [in]: in a column at most 10 wide and 3.5 tall (20 in for the five); in
    # a row about 3.3 square, at most 3.5 wide (22 in for the row) and 6 tall.
    panel_w = 10.0 if column else min(3.3 * min(max(w / h, 0.5), 1.5), 3.5)
    panel_h = min(panel_w * h / w, 3.5 if column else 6.0)
    panel_w = panel_h * w / h
    rows, cols = (n, 1) if column else (1, n)
    # Room per panel for its title and, beside it, a colour bar with tick labels.
    size = (cols * (panel_w + 1.1), rows * (panel_h + 0.45) + 0.5)
    fig = Figure(figsize=size, layout="constrained")  # outside pyplot, as figures.py's
    axes = fig.subplots(rows, cols, squeeze=False)
    axes = axes.ravel()
    # Stretched between percentiles: a few bright pixels left the fringes washed out.
    lo, hi = np.nanpercentile(frame, [0.5, 99.5]) if np.isfinite(frame).any() else (0.0, 1.0)
    axes[0].imshow(frame, cmap="gray", vmin=lo, vmax=hi if hi > lo else None)
    axes[0].set_title(("image" if frame_index is None else f"frame {frame_index}") + " (circles: cores)")
    if calibration is not None and calibration.pixel_size_nm:
        scale_bar(axes[0], frame.shape, calibration)
    # Not measured: grey, not the white of zero strain.
    diverging = plt.get_cmap("RdBu_r").with_extremes(bad="0.55")
    # One colour scale for the three strains (side by side, maps of their own scales
    # made a 0.015 strain look like a 0.05 one); the rotation keeps its own.
    strains = [v for k, v in maps.items() if k != "omega"]
    for ax, (k, v) in zip(axes[1:], maps.items(), strict=True):
        lim = _colour_limit(strains if k != "omega" else [v])
        if noise is not None:
            group = [c for c in maps if c != "omega"] if k != "omega" else [k]
            lim = max(lim, NOISE_SPAN * max(noise[c] for c in group))
        im = ax.imshow(v, cmap=diverging, vmin=-lim, vmax=lim)
        name = {"exx": "εxx", "eyy": "εyy", "exy": "εxy", "omega": "ω (rad)"}[k]
        ax.set_title(name if noise is None else f"{name}, noise ±{noise[k]:.1g} rms")
        bar = fig.colorbar(im, cax=ax.inset_axes((1.03, 0.0, 0.04 if not column else 0.015, 1.0)))
        bar.set_label(COLOUR_BAR_LABELS[k])
    for ax in axes:
        # Black with a white rim: seen on grey, red and blue alike (green is not, by
        # red-green colour-blind readers, on a red-blue map).
        ax.plot(cores.x, cores.y, "o", mfc="none", mec="white", ms=8, mew=3.0)
        ax.plot(cores.x, cores.y, "o", mfc="none", mec="black", ms=8, mew=1.5)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10, wrap=True)
    return fig


#: strain.png's colour scales span at least this many times a map's noise rms.
NOISE_SPAN = 3.0


def _colour_limit(maps: list[np.ndarray]) -> float:
    """Symmetric colour limit of ``maps`` together: the 98th percentile of |value| (1e-3
    where nothing was measured)."""
    values = np.concatenate([np.abs(m[np.isfinite(m)]).ravel() for m in maps])
    lim = float(np.percentile(values, 98)) if values.size else 0.0
    return lim if lim > 0 else 1e-3  # all (or 98 %) zero: still a valid range
