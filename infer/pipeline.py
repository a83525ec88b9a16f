"""``analyze``: one movie in, the output tables out (the notebook API of infer; README › Outputs).

>>> from dislotrack.infer.pipeline import analyze           # doctest: +SKIP
>>> res = analyze("movie.dm4", frame_interval_s=1.0)       # doctest: +SKIP
>>> res.track_summary[["particle", "glide_velocity_nm_s", "climb_velocity_nm_s"]]  # doctest: +SKIP

Without a frame interval the velocity columns are ``*_nm_per_frame`` instead, as in
track_summary.csv.

The movie is streamed once: each frame is resampled to the model's canonical pixel
size, batched through the network, decoded, and fed to the drift estimator (the input
frame instead where the model's grid is finer: `UPSAMPLE_WARN`); rock-salt
masks go to an optional sink (the CLI writes them to a TIFF as they come), so memory
does not grow with movie length. Tracking, motion and events then work on the small
detection table.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import TqdmWarning

from dislotrack.data_gen.conventions import CANONICAL_PIXEL_SIZE_NM, D003_LINIO2_NM
from dislotrack.data_gen.text import first_few
from dislotrack.infer.calibration import (
    NO_INTERVAL_NOTE,
    NON_SQUARE_NOTE,
    RECIPROCAL_NOTE,
    UNEVEN_STEPS,
    Calibration,
    clock_steps_warning,
    resolve_calibration,
    uneven_steps_warning,
)
from dislotrack.infer.cleanup import ANNOTATION_ROCKSALT_MARGIN_NM, FLAGS, clean_frame
from dislotrack.infer.columns import DETECTION_COLUMNS
from dislotrack.infer.detectors import CORE_COLUMNS, GPADetector, NetworkDetector, empty_cores
from dislotrack.infer.drift import measure_drift
from dislotrack.infer.fringes import pixel_size_from_fringes_or_none
from dislotrack.infer.interface import option
from dislotrack.infer.lattice import Lattice, fringes_twice_apart, measure_lattice
from dislotrack.infer.linking import DEFAULT_MAX_SPEED_NM_S
from dislotrack.infer.options import (
    DEFAULT_MIN_LENGTH,
    DEFAULT_WEAK_FRACTION,
    analysis_options,
    as_typed,
    check_calibration_options,
    check_detector_options,
    check_linking_options,
    default_tta,
    frame_window,
    region_box,
    tta_views,
)
from dislotrack.infer.overlays import MARGIN_NM as OVERLAY_MARGIN_NM
from dislotrack.infer.overlays import shows_nothing
from dislotrack.infer.predict import network_dtype, pick_device
from dislotrack.infer.preprocess import scale_factor, to_canonical
from dislotrack.infer.readers import IN_MEMORY, Movie, movie_from_array, open_movie
from dislotrack.infer.result import NO_FRINGES, RELINK_OPTIONS, AnalysisResult, require_result
from dislotrack.infer.tracking import TrackedTables, add_stage_jumps, track_detections
from dislotrack.infer.warning_log import (
    LEADS,
    AnalysisWarning,
    collected_warnings,
    keeping_logged_warnings,
)
from dislotrack.models import io as models_io
from dislotrack.models.io import load_model
from dislotrack.models.unet import prepare_for_inference

with warnings.catch_warnings():  # a Jupyter kernel without ipywidgets: text bars, silently
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

#: The notebook API, and names that moved to smaller modules (imported from here before).
__all__ = ["RELINK_OPTIONS", "AnalysisResult", "AnalysisWarning", "TrackedTables", "analyze",
           "calibrate", "collected_warnings", "file_sha256", "require_result", "track_detections"]

logger = logging.getLogger(__name__)

#: Frames with a shorter side [input px] are not warned about when `measure_lattice`
#: finds no (003) reflection: on 64-px generated lattices it misses one in three.
MIN_SIDE_FOR_LATTICE_PX = 128

#: Fringes of fewer pixels per period are not resolved (Nyquist: 2, plus margin).
MIN_FRINGE_PERIOD_PX = 2.5

#: Frames whose summed power spectrum gives the lattice (`measure_lattice`).
LATTICE_FRAMES = 8





def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda *_: 0


#: Hands freed heap pages back to the OS. The per-frame arrays (network input, outputs,
#: FFTs) are freed, but glibc keeps the pages, so without it the resident size grows by
#: ~2 MB per 512^2 frame although nothing is kept (measured).
_release_freed_memory = _malloc_trim()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of the sorted per-file hashes of a folder."""
    p = Path(path)
    if not p.is_dir():
        return models_io.file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(models_io.file_sha256(f).encode())
    return h.hexdigest()


def _chosen_signal(movie: Movie, asked: int | str | None) -> int | str | None:
    """The image read from a file that holds several (logged as a warning when the
    reader chose it), for ``options``; ``asked`` otherwise, None where the format has no
    images to choose from (the reader warns that ``asked`` was ignored)."""
    if "signals" not in movie.metadata:
        return None
    names = movie.metadata["signals"] or []
    if len(names) < 2:
        return asked
    read = movie.metadata.get("signal")
    if asked is None:
        other = next((n for n in names if n != read), names[-1])
        logger.warning("the file holds %d images (%s) and %r was analysed; pick another with %s",
                       len(names), ", ".join(map(repr, names)), read,
                       option("signal", other, text=True), extra={LEADS: True})
    return read


def _with_clock(cal: Calibration, times_s: np.ndarray | None, n_frames: int) -> Calibration:
    """``cal`` timed by the file's acquisition clock (`Calibration.frame_times_s`) where its
    interval came from that clock and the clock steps unevenly (dropped frames, pauses): an
    even clock keeps frame x interval (the same within its jitter)."""
    if times_s is None or len(times_s) != n_frames or cal.frame_interval_source != "file":
        return cal
    times = np.asarray(times_s, dtype=float) - float(times_s[0])
    if np.any(np.diff(times) <= 0) or uneven_steps_warning(times, cal.frame_interval_s) is None:
        return cal
    said = [w for w in cal.warnings if not w.startswith(UNEVEN_STEPS)]
    return replace(cal, frame_times_s=tuple(times.tolist()),
                   warnings=(*said, clock_steps_warning(times, cal.frame_interval_s)))


def _first_shown_frame(movie: Movie, look: int = 10) -> np.ndarray:
    """The first of the first ``look`` frames that shows something (a movie may start with
    the beam blanked, its scale bar still drawn), else frame 0."""
    for i in range(min(len(movie), look)):
        frame = movie[i]
        if not shows_nothing(frame):
            return frame
    return movie[0]


def calibrate(movie: Movie, *, pixel_size_nm: float | None, frame_interval_s: float | None,
              d_spacing_nm: float) -> Calibration:
    """User > file > (003)-fringe estimate; an error if no pixel size can be found."""
    check_calibration_options(pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s,
                              d_spacing_nm=d_spacing_nm)
    pixel_size_nm, frame_interval_s = (as_typed(v) for v in (pixel_size_nm, frame_interval_s))
    cal = resolve_calibration(
        movie.calibration, pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s,
        estimate=lambda: pixel_size_from_fringes_or_none(_first_shown_frame(movie),
                                                         d_spacing_nm=d_spacing_nm),
        estimate_basis=f"{d_spacing_nm:g} nm (003) fringes ({option('d_spacing_nm')})")
    if cal.pixel_size_nm is None:
        # e.g. a scale without a unit: the user may know the unit, so show the number
        unusable = [n for n in movie.metadata.get("notes", []) if "pixel size" in n]
        why = f" ({unusable[0]})" if unusable else ""
        bare = re.search(r"([-+0-9.eE]+) has no unit", unusable[0]) if unusable else None
        hint = (f" ({option('pixel_size_nm', f'{float(bare.group(1)):.6g}')} if the file's number is "
                "in nm)" if bare else "")
        if unusable and RECIPROCAL_NOTE in unusable[0]:  # a pixel size would not make it a lattice image
            raise ValueError(f"{movie.path}: {unusable[0].split(': ', 1)[1]}; pass a real-space image")
        raise ValueError(
            f"{movie.path}: no usable pixel size in the "
            f"{'frames' if movie.path.is_dir() else 'file'}{why} and none could be estimated "
            f"from {d_spacing_nm} nm fringes; pass {option('pixel_size_nm', 'NM')}{hint}")
    # What the reader could not do as asked or as expected (e.g. read one channel of several).
    said = (*cal.warnings, *movie.metadata.get("warnings", []))
    if cal.pixel_size_source != "file":  # the file's x and y sizes were not used
        said = tuple(w for w in said if not w.startswith(NON_SQUARE_NOTE))
    cal = replace(cal, warnings=said)
    cal = _with_clock(cal, movie.timestamps_s, len(movie))
    caveat = movie.metadata.get("frame_interval_caveat")  # e.g. a video's playback rate
    if caveat and cal.frame_interval_source == "file":
        cal = replace(cal, warnings=(*cal.warnings, caveat))
    if movie.shape[0] == 1:  # a single image has no velocities to put in per-frame units
        cal = replace(cal, warnings=tuple(w for w in cal.warnings if not w.startswith(NO_INTERVAL_NOTE)))
    period_px = d_spacing_nm / cal.pixel_size_nm
    if period_px <= 2:  # beyond Nyquist: nothing to analyse (and resampling would blow up)
        raise ValueError(
            f"{movie.path}: at {cal.pixel_size_nm:.3g} nm/px ({cal.pixel_size_source}) the "
            f"{d_spacing_nm} nm lattice fringes span {period_px:.2g} px, below the 2 px that can "
            f"show them: atomic-resolution images are needed (or pass the right "
            f"{option('pixel_size_nm')})" + slipped_calibration_hint(movie[0], cal, d_spacing_nm))
    why = cores_cannot_show(cal.pixel_size_nm, movie.shape[1:], d_spacing_nm)
    if why:
        cal = replace(cal, warnings=(*cal.warnings,
                                     why + slipped_calibration_hint(movie[0], cal, d_spacing_nm)))
    return cal


#: Ratios of a true to a recorded pixel size that a slip explains: binning the image (or
#: not recording it) and a factor of ten between units (Å for nm).
SLIP_FACTORS = (2.0, 3.0, 4.0, 8.0, 10.0)
#: How close a ratio must come to one of `SLIP_FACTORS` (or its inverse) [relative]: the
#: fringe estimate is good to 2 %; two real dumbbell lattices (at their right calibration)
#: give 2.07 and would be hinted at 4 %.
SLIP_TOLERANCE = 0.025


def slipped_calibration_hint(frame: np.ndarray, cal: Calibration, d_spacing_nm: float) -> str:
    """A sentence for warnings where the (003) fringes were not found at the calibrated
    pixel size: the pixel size the image's own strongest fringes give, when it differs
    from the calibrated one by a typical slip (`SLIP_FACTORS`); else "".

    Only such ratios are named: the strongest fringes of another material (e.g. a
    perovskite's 0.39 nm) at the right calibration must not suggest a wrong one.
    """
    if cal.pixel_size_source == "estimated":  # already from the fringes
        return ""
    est = pixel_size_from_fringes_or_none(frame, d_spacing_nm=d_spacing_nm)
    if est is None:
        return ""
    ratio = est / cal.pixel_size_nm
    if not any(abs(ratio * f - 1) < SLIP_TOLERANCE or abs(ratio / f - 1) < SLIP_TOLERANCE
               for f in SLIP_FACTORS):
        return ""
    return (f". The image's strongest fringes repeat every {d_spacing_nm / est:.3g} px, which "
            f"would make them the {d_spacing_nm:g} nm (003) fringes at {est:.3g} nm/px, "
            f"{ratio:.2g} times the {cal.pixel_size_source}'s {cal.pixel_size_nm:g}: if the "
            f"calibration is off (binning? units?), pass {option('pixel_size_nm', f'{est:.3g}')}")


def cores_cannot_show(pixel_size_nm: float, shape: tuple[int, int], d_spacing_nm: float) -> str | None:
    """Why frames of this ``shape`` (H, W) and pixel size cannot show a dislocation core,
    else None: (003) fringes under `MIN_FRINGE_PERIOD_PX` per period (not resolved), or
    frames under 4 fringe periods across. `analyze` then reports no cores: any it found
    would be spurious.
    """
    period_px = d_spacing_nm / pixel_size_nm
    if period_px < MIN_FRINGE_PERIOD_PX:
        return (f"at {pixel_size_nm:.3g} nm/px the {d_spacing_nm} nm lattice fringes span "
                f"{period_px:.2g} px: not resolved, so no dislocation core or rock salt can show "
                f"and none is reported; atomic-resolution images are needed (or pass the right "
                f"{option('pixel_size_nm')})")
    if min(shape) < 4 * period_px:  # a core needs a few fringes around it
        return (f"the frames ({shape[1]} x {shape[0]} px) span under 4 lattice fringes "
                f"({period_px:.3g} px each) across: too small to show a dislocation core or rock "
                "salt, so none is reported")
    return None


def check_region_size(cal: Calibration, frame_shape: tuple[int, int], region_shape: tuple[int, int],
                      d_spacing_nm: float) -> None:
    """Refuse a region too small to show a core (`cores_cannot_show`) where the whole
    frames could show one: a region is the user's choice, so a typo should not cost an
    analysis that can find nothing.

    Parameters
    ----------
    cal : Calibration
        Made on the whole frames, so that every region of a movie shares it.
    frame_shape, region_shape : tuple of int
        (H, W) of the frames and of the region [px].
    d_spacing_nm : float
        The (003) spacing [nm].

    Raises
    ------
    ValueError
        Saying how many pixels the region needs each way.
    """
    if cores_cannot_show(cal.pixel_size_nm, frame_shape, d_spacing_nm):
        return  # the frames themselves cannot: warned of as for any movie
    if cores_cannot_show(cal.pixel_size_nm, region_shape, d_spacing_nm):
        need = math.ceil(4 * d_spacing_nm / cal.pixel_size_nm)
        raise ValueError(f"the region ({region_shape[1]} x {region_shape[0]} px) spans under 4 "
                         f"lattice fringes ({d_spacing_nm / cal.pixel_size_nm:.3g} px each at "
                         f"{cal.pixel_size_nm:.3g} nm/px) across: too small to show a dislocation "
                         f"core; choose one of at least {need} px each way")


#: Input-to-model zoom above which the input is called upsampled (warned; drift is then
#: registered on the input frames).
UPSAMPLE_WARN = 1.25


@keeping_logged_warnings
def analyze(path: str | Path | Movie | np.ndarray, *, model: str | Path | None = None,
            pixel_size_nm: float | None = None, frame_interval_s: float | None = None,
            device: str = "auto", precision: str = "auto", threshold: float | None = None,
            batch_size: int = 4, d_spacing_nm: float = D003_LINIO2_NM,
            max_speed_nm_s: float = DEFAULT_MAX_SPEED_NM_S, memory: int = 5,
            min_length: int = DEFAULT_MIN_LENGTH, max_gap: int = 12, min_track_score: float = 0.0,
            weak_fraction: float = DEFAULT_WEAK_FRACTION, border_nm: float = 2.0, detector: str = "unet",
            tta: int | bool | None = None, lattice_h: bool = True, signal: int | str | None = None,
            frames: str | tuple[int, int] | None = None,
            region: str | tuple | None = None,
            calibration: Calibration | None = None,
            mask_sink: Callable[[int, np.ndarray], None] | None = None,
            frame_sink: Callable[[int, np.ndarray, pd.DataFrame], None] | None = None,
            progress: bool = True) -> AnalysisResult:
    """Detect, track and measure the dislocations of one movie.

    Parameters
    ----------
    path : str, Path, Movie or ndarray
        Any input `dislotrack.infer.readers.open_movie` reads, or a movie it opened
        (left open: its opener closes it; ``signal`` is then the one it was opened with),
        or an in-memory (y, x) image or (t, y, x) stack (`movie_from_array`: no
        calibration, so pass ``pixel_size_nm`` and ``frame_interval_s``).
    model : str or Path, optional
        A model ``<stem>`` (safetensors + JSON card); default: the bundled model.
    pixel_size_nm, frame_interval_s : float, optional
        Override the file's calibration [nm/px], [s].
    device : {"auto", "cpu", "cuda", "cuda:N"}
        Where the network runs (`dislotrack.infer.predict.pick_device`: an unavailable
        one is a ValueError listing those available).
    precision : {"auto", "float32", "bfloat16", "float16"}
        The network's arithmetic (`dislotrack.infer.predict.network_dtype`): ``auto`` is
        float16 on CUDA, bfloat16 on CPUs with AMX matrix units (about twice as fast
        there, nearly the same results: README, Network), else float32.
    threshold : float, optional
        Heatmap threshold of the decoding (default: the model card's, else 0.5).
    batch_size : int
        Frames per network call.
    d_spacing_nm : float
        (003) spacing of the material [nm]: pixel-size estimate and |b| of the
        misfit Burgers vector reported in ``bx_nm``, ``by_nm``.
    max_speed_nm_s, memory, min_length, max_gap
        Linking: largest plausible speed (without a frame interval, at an assumed
        `dislotrack.infer.linking.ASSUMED_FRAME_INTERVAL_S` per frame, and a warning if
        ``max_speed_nm_s`` was changed), frames a core may be missed, shortest track
        (at most the movie's length: a single image keeps every core as a track; a
        warning says so if ``min_length`` was changed from its default),
        longest gap bridged by gap closing (0: none).
    min_track_score : float
        Tracks whose detections score lower on average are dropped (0: keep all). On the
        tuning movies 0.35 removed spurious tracks (event F1 0.23 -> 0.26) but also real
        ones (climb error 14 -> 16 %), so it is off by default.
    weak_fraction : float
        Peaks scoring at least ``weak_fraction * threshold`` (but below the threshold)
        may extend the ends of tracks (`dislotrack.infer.linking.extend_tracks`):
        cores fading in at nucleation or out at annihilation. They never start a
        track and are not in ``detections``; 1 disables the extension. Those left
        unused, with strong detections in no track, may still move a dipole event
        (`dislotrack.infer.events.find_events`, the close-dipole blob).
    border_nm : float
        Tracks that start/end this close to the frame edge entered/left the field.
    detector : {"unet", "gpa"}
        The network, or the classical geometric-phase baseline (which refuses
        ``model``, ``threshold`` and ``tta``: `check_detector_options`).
    tta : int or bool, optional
        Test-time augmentation: average the network over this many views of each frame
        (`dislotrack.infer.options.tta_views`: 1 or False, none; 2, the frame and its 180°
        turn; 4, the quarter turns; 8 or True, all flips and transposes), as many times
        slower. Default (`dislotrack.infer.options.default_tta`): 2 for a single image
        (fewer false cores), none for a movie.
    lattice_h : bool
        Where the first frames show an in-layer reflection besides (003), set each
        track's **h** and **b** to those of the nearest Burgers vector the lattice
        allows (`dislotrack.infer.lattice`) before splitting glide and climb; the
        network's **h** misses the in-plane tilt of b (climb error on the tracking
        sets 7.7-14.7 % -> 3.8-6.3 %). ``detections`` keep the network's **h**.
    signal : int or str, optional
        For files holding several images (multi-detector EMD, DM, HDF5): the title or
        dataset path, or the index, of the one to analyse (default: the first; generic
        HDF5: the largest). A warning names the one read when there was a choice.
    frames : str or (int, int), optional
        Analyse only frames ``start`` to ``stop - 1`` of the input (``"START:STOP"``,
        either end may be left out, or a pair), e.g. a window of a long in-situ movie.
        The window's frames are numbered from 0 in every table (``t_s`` from its start);
        ``options["frames"]`` records it.
    region : str or ((int, int), (int, int)), optional
        Analyse only pixel columns ``X0`` to ``X1 - 1`` and rows ``Y0`` to ``Y1 - 1`` of
        every frame (``"X0:X1,Y0:Y1"``, any end may be left out, or
        ``((x0, x1), (y0, y1))``; `dislotrack.infer.options.region_box`): e.g. the
        particle in a large detector frame, or a domain interface whose dislocations are
        to be counted. Positions in every table are the region's pixels (add ``X0``,
        ``Y0`` for the frame's); ``options["region"]`` records it.
    calibration : Calibration, optional
        This movie's calibration as `calibrate` resolved it from the same
        ``pixel_size_nm``, ``frame_interval_s`` and ``d_spacing_nm``: spares a second
        pixel-size estimate (1.5 s on a 1024² frame) to a caller that needed it before
        the analysis (``dislotrack infer`` sizes its mask file with it).
    mask_sink : callable(frame, mask), optional
        Receives each frame's uint8 rock-salt mask (input resolution).
    frame_sink : callable(frame index, frame, detections), optional
        Receives each raw frame with its detections (e.g. to write strain maps).
    progress : bool
        Show a progress bar.

    Returns
    -------
    AnalysisResult
        The tables (detections, tracks, track_summary, events, counts, drift), the
        calibration with its sources, the warnings, the lattice and the options.
    """
    detector = detector.lower() if isinstance(detector, str) else detector  # "GPA" too
    check_detector_options(detector, model=model, threshold=threshold, tta=tta,
                           weak_fraction=weak_fraction, precision=precision)
    check_linking_options(max_speed_nm_s=max_speed_nm_s, memory=memory, min_length=min_length,
                          max_gap=max_gap, min_track_score=min_track_score,
                          border_nm=border_nm)  # d_spacing_nm: `calibrate` checks it
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of frames >= 1, got {batch_size!r}")
    for name, flag in (("lattice_h", lattice_h), ("progress", progress)):
        if not isinstance(flag, (bool, np.bool_)):  # "no" is truthy; None meant False here
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    lattice_h = bool(lattice_h)
    pixel_size_nm, frame_interval_s = (as_typed(v) for v in (pixel_size_nm, frame_interval_s))
    dev = pick_device(device)
    # A bad name: refused before any frame is read. The GPA baseline has no network.
    dtype = network_dtype(precision, dev) if detector == "unet" else None
    used = "float32" if dtype is None else str(dtype).removeprefix("torch.")  # resolved once
    net, card = load_model(model)
    thr = threshold if threshold is not None else float(card.get("decode_threshold", 0.5))
    canonical = float(card["canonical_pixel_size_nm"])
    # A movie opened by the caller is read again, not reopened: opening a folder of DM
    # frames reads every file's header (about 20 ms each).
    if isinstance(path, (list, tuple)):  # e.g. frames read one by one in a notebook
        raise TypeError(f"analyze takes a path, a Movie or an array, got a {type(path).__name__}: "
                        "for a list of frames, pass np.stack(frames) (a (t, y, x) array)")
    if not isinstance(path, (str, os.PathLike, np.ndarray, Movie)):
        raise TypeError(f"analyze takes a path, a Movie or a (t, y, x) array, got {path!r}")
    if isinstance(path, np.ndarray):
        if signal is not None:  # as open_movie says for files without images to choose from
            logger.warning("%s was ignored: an array holds one image stack",
                           option("signal", signal, text=isinstance(signal, str)))
            signal = None
        path = movie_from_array(path)
    opened = contextlib.nullcontext(path) if isinstance(path, Movie) else open_movie(path, signal=signal)
    with opened as movie:
        path = movie.path
        signal = _chosen_signal(movie, signal)
        span = None if frames is None else frame_window(frames, len(movie))
        if span is not None and span != (0, len(movie)):  # the whole movie is no window
            movie = movie.window(*span)
        window = "{}:{}".format(*movie.metadata["frames"]) if "frames" in movie.metadata else None
        box = None if region is None else region_box(region, movie.shape[1:])
        cal = calibration if calibration is not None else calibrate(
            movie, pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s,
            d_spacing_nm=d_spacing_nm)  # on whole frames: the same for every region
        if box is not None and box != (0, movie.shape[2], 0, movie.shape[1]):  # not the whole frame
            check_region_size(cal, movie.shape[1:], (box[3] - box[2], box[1] - box[0]), d_spacing_nm)
            movie = movie.crop(*box)
        area = "{}:{},{}:{}".format(*movie.metadata["region"]) if "region" in movie.metadata else None
        s = scale_factor(cal.pixel_size_nm, canonical)
        views = 1 if detector != "unet" else default_tta(len(movie)) if tta is None else tta_views(tta)
        if detector == "unet" and s > UPSAMPLE_WARN and canonical < CANONICAL_PIXEL_SIZE_NM:
            # e.g. `fine` on 0.1 nm/px data; data coarser than the default's grid has no
            # better bundled model to point to.
            logger.warning("the model works at %.3g nm/px, finer than this input's %.3g nm/px: "
                           "frames are upsampled %.2gx, which adds no detail; the bundled "
                           "default model (%.3g nm/px, %s) suits it better", canonical,
                           cal.pixel_size_nm, s, CANONICAL_PIXEL_SIZE_NM,
                           option("model", "default", text=True))
        first = movie[0]
        # The bundled networks know one handedness of the chiral [100] view (their
        # augmentation never mirrored): a specimen seen from its other side is shown to
        # them flipped (on [-100] their h was 15 deg off, and tracks' climb took glide).
        # Eight views are the whole group: flipped or not, the same.
        lattice0 = measure_lattice([first], pixel_size_nm=cal.pixel_size_nm, d_spacing_nm=d_spacing_nm)
        mirror = (detector == "unet" and views < 8 and lattice0 is not None
                  and lattice0.is_mirror_view)
        if detector == "gpa":
            det = GPADetector(pixel_size_nm=cal.pixel_size_nm, d_spacing_nm=d_spacing_nm)
            card = {**card, "model_id": "gpa-baseline", "sha256": None}
        else:  # "unet" (`check_detector_options`)
            det = NetworkDetector(prepare_for_inference(net).to(dev), device=dev,
                                  threshold=min(weak_fraction, 1.0) * thr,
                                  scale=s, d_spacing_nm=d_spacing_nm, tta=views,
                                  precision=used, mirror=mirror)
        n, h, w = movie.shape
        blind = cores_cannot_show(cal.pixel_size_nm, (h, w), d_spacing_nm)  # warned by `calibrate`
        rows: list[pd.DataFrame] = []
        rs_frac: list[float] = []
        blank: list[int] = []  # frames of one value (nearly) throughout: `shows_nothing`
        overlaid: dict[int, float] = {}  # frame -> its fraction under `overlay_mask`
        first_mask: list[np.ndarray] = []  # frame 0's rock salt, for trajectories.png

        def flush(raw: list[np.ndarray], can: list[np.ndarray], start: int) -> None:
            # Frames that cannot show a core cannot tell rock salt by its fringes either:
            # the network is not run (348 frames of 16 px took 29 s to report nothing).
            found = [(empty_cores(), np.zeros(f.shape, bool)) for f in raw] if blind else det(raw, can)
            for k, (table, rs) in enumerate(found):
                f = clean_frame(raw[k], table, rs, pixel_size_nm=cal.pixel_size_nm,
                                d_spacing_nm=d_spacing_nm, blind=blind,
                                report_threshold=thr if detector == "unet" else None)
                if f.blank:
                    blank.append(start + k)
                if f.overlaid:
                    overlaid[start + k] = f.overlaid
                rows.append(f.cores.assign(frame=start + k))
                rs_frac.append(f.rocksalt_fraction)
                if start + k == 0:
                    first_mask.append(np.asarray(f.rocksalt, bool))
                if mask_sink is not None:
                    mask_sink(start + k, f.rocksalt.astype(np.uint8))
                if frame_sink is not None:  # the cores as reported (a sink sees no weak ones)
                    strong = f.cores[f.cores["score"] > thr] if detector == "unet" else f.cores
                    frame_sink(start + k, raw[k], strong)
            _release_freed_memory(0)

        n_read = 0
        lattice_frames: list[np.ndarray] = []  # the first few, for `measure_lattice`

        # Drift is registered on the canonical frames, or on the input frames where the
        # model's grid is finer: upsampling adds no detail and blurs the in-layer fringes
        # that show drift along the (003) ones (`--model fine` on 0.1 nm/px lost it). The
        # GPA baseline follows the same rule (its detections are at the input's pixels).
        drift_on_input = s > UPSAMPLE_WARN

        def canonical_frames() -> Iterator[np.ndarray]:
            nonlocal n_read
            raw: list[np.ndarray] = []
            can: list[np.ndarray] = []
            for frame in tqdm(movie, total=n, desc="frames", unit="frame", disable=not progress):
                c = to_canonical(frame, pixel_size_nm=cal.pixel_size_nm, canonical_nm=canonical)
                if len(lattice_frames) < LATTICE_FRAMES:
                    lattice_frames.append(frame)
                raw.append(frame)
                can.append(c)
                n_read += 1
                if len(raw) == batch_size:
                    flush(raw, can, n_read - len(raw))
                    raw, can = [], []
                yield frame if drift_on_input else c
            if raw:  # also when the reader yields fewer frames than its header said
                flush(raw, can, n_read - len(raw))

        # Frames too small or coarse for a core: drift.csv is kept, its warnings are noise.
        # Where the (003) fringes dominate, the in-layer spots give the drift along them.
        drift_px_nm = cal.pixel_size_nm if drift_on_input else canonical
        drift = measure_drift(canonical_frames(), warn=not blind, layer_reflections=None if (
            lattice0 is None) else lattice0.registration_reflections(
            drift_px_nm, measured_on_nm=cal.pixel_size_nm))
    if n_read < n:  # the reader stopped early (`Movie.__iter__`): a cut-off file
        logger.warning("only %d of the %d frames %s's header lists could be read (a truncated or "
                       "damaged file?): the results cover frames 0-%d of those read", n_read, n,
                       Path(str(path)).name, n_read - 1)
    n = n_read
    if blank:
        logger.warning("%d of %d frames are blank or saturated (one value nearly throughout): %s %s; "
                       "no cores or rock salt are reported there (rocksalt_fraction NaN)",
                       len(blank), n, "frame" if len(blank) == 1 else "frames",
                       first_few([str(f) for f in blank], 8))
    if overlaid:
        logger.warning("burned-in annotations or clipped areas (a scale bar, text, a zero-filled "
                       "border) cover up to %.1f %% of a frame, in %d of %d frames (the first: "
                       "frame %d): no cores are reported within %.1f nm of them, nor rock salt "
                       "within %.1f nm", 100 * max(overlaid.values()), len(overlaid), n, min(overlaid),
                       OVERLAY_MARGIN_NM, ANNOTATION_ROCKSALT_MARGIN_NM)
    lattice = measure_lattice(lattice_frames, pixel_size_nm=cal.pixel_size_nm,
                              d_spacing_nm=d_spacing_nm) if lattice_frames else None
    if lattice is None and not blind and min(h, w) >= MIN_SIDE_FOR_LATTICE_PX:  # small frames often miss it
        found = sum(int((r["score"] > thr).sum()) if detector == "unet" else len(r) for r in rows)
        _warn_without_lattice(lattice_frames[0], cal, d_spacing_nm, n_frames=n, found=found,
                              rocksalt_fraction=rs_frac)
    if (lattice is not None and cal.pixel_size_source != "estimated"
            and fringes_twice_apart(lattice_frames, pixel_size_nm=cal.pixel_size_nm,
                                    d_spacing_nm=d_spacing_nm)):
        # The in-layer fringes (~0.24 nm) pass for (003) at twice the true pixel size.
        logger.warning("lattice fringes %.3g nm apart, twice the %.3g nm (003) spacing, stand out at "
                       "the pixel size %.4g nm/px (%s), the (003) fringes' place if it were twice "
                       "the true one (a binned image, a calibration off by 2), the in-layer ones "
                       "passing for (003): then cores and velocities are wrong; check it and, if "
                       "so, give the true one (%s)", 2 * d_spacing_nm, d_spacing_nm, cal.pixel_size_nm,
                       cal.pixel_size_source, option("pixel_size_nm", "NM"))
    snap_asked = lattice_h
    lattice_h = lattice_h and lattice is not None and lattice.has_layer  # snapped or not, once
    if lattice_h:
        b = lattice.burgers_vectors()["misfit"]
        logger.info("lattice: in-layer reflection at %.3f nm; misfit b = (%.3f, %.3f) nm; "
                    "track h snapped to it", 1 / np.hypot(*lattice.g_layer), *b)
    # Drift measured on the canonical grid: express it in input pixels, with the zoom
    # actually applied per axis (rescale rounds the output size).
    sy, sx = (1.0, 1.0) if drift_on_input else (np.array(to_canonical(
        first, pixel_size_nm=cal.pixel_size_nm, canonical_nm=canonical).shape) / first.shape)
    drift["dx"] = drift["dx"] / sx
    drift["dy"] = drift["dy"] / sy
    detections = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        {c: pd.Series(dtype=float) for c in ["frame", *CORE_COLUMNS, *FLAGS]})
    detections = detections.assign(x_nm=detections.x * cal.pixel_size_nm,
                                   y_nm=detections.y * cal.pixel_size_nm)
    detections = detections[[*DETECTION_COLUMNS, *FLAGS]].astype({"frame": int, **dict.fromkeys(FLAGS, bool)})
    # The GPA baseline's scores are not probabilities: it gets no weak detections.
    strong = (detections["score"] > thr) | (detector != "unet")  # decode_cores keeps > thr
    if n > 1:
        drift = add_stage_jumps(detections[strong], drift, cal, max_speed_nm_s, (h, w))
    in_memory = path == IN_MEMORY
    res = _track(detections[strong].reset_index(drop=True), drift, cal, np.asarray(rs_frac),
                 # absolute (without resolving links): summary.json must find the input
                 (n, h, w), str(path) if in_memory else os.path.abspath(path),
                 movie.metadata["sha256"] if in_memory else file_sha256(path), card,
                 max_speed_nm_s=max_speed_nm_s, memory=memory,
                 min_length=min_length, max_gap=max_gap, min_track_score=min_track_score,
                 border_nm=border_nm, first=first, first_mask=first_mask[0] if first_mask else None,
                 weak=detections[~strong].reset_index(drop=True),
                 lattice=lattice, lattice_h=lattice_h)
    unet = detector == "unet"
    # As `analyze` takes them (the threshold as used), so a result can be reproduced; the
    # calibration overrides are None where the file's (or the estimate) was used.
    res.options = analysis_options(
        detector=detector, model=model, threshold=thr if unet else None, tta=views,
        weak_fraction=weak_fraction if unet else None, max_speed_nm_s=max_speed_nm_s,
        memory=memory, min_length=min_length, max_gap=max_gap, min_track_score=min_track_score,
        border_nm=border_nm, d_spacing_nm=d_spacing_nm, lattice_h=snap_asked,
        pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s, signal=signal, device=device,
        device_used=str(dev) if unet else "cpu", precision=precision,
        precision_used=used, frames=window, region=area,
        network_view=("mirrored" if mirror else "as read") if unet else None)
    return res


def _track(detections: pd.DataFrame, drift: pd.DataFrame, cal: Calibration, rs_frac: np.ndarray,
           shape: tuple[int, int, int], path: str, sha256: str, card: dict, *, first: np.ndarray,
           first_mask: np.ndarray | None = None,
           weak: pd.DataFrame | None = None, lattice: Lattice | None = None,
           lattice_h: bool = False, **options) -> AnalysisResult:
    """`track_detections`, wrapped into an `AnalysisResult` for ``path``; ``lattice_h``:
    whether to snap track **h** to ``lattice`` (which must then have an in-layer reflection)."""
    t = track_detections(detections, pixel_size_nm=cal.pixel_size_nm,
                         frame_interval_s=cal.frame_interval_s, frame_times_s=cal.frame_times_s,
                         n_frames=shape[0],
                         image_shape=shape[1:], drift=drift, weak=weak, rocksalt_fraction=rs_frac,
                         lattice=lattice if lattice_h else None, **options)
    return AnalysisResult(
        detections=detections[[c for c in (*DETECTION_COLUMNS, *FLAGS) if c in detections]],
        tracks=t.tracks,
        track_summary=t.track_summary,
        events=t.events,
        counts=t.counts, drift=drift, calibration=cal, rocksalt_fraction=rs_frac, shape=shape,
        input_path=path, input_sha256=sha256, model_card=card,
        warnings=list(cal.warnings), first_frame=first, first_mask=first_mask, lattice=lattice,
        lattice_h=lattice_h, weak=weak, tracking_warnings=t.warnings)


def _warn_without_lattice(frame: np.ndarray, cal: Calibration, d_spacing_nm: float, *, n_frames: int,
                          found: int, rocksalt_fraction: list[float]) -> None:
    """Warn (first) that no (003) fringes stood out, so that ``found`` cores and any rock
    salt reported are doubtful; with a hint where the calibration looks slipped."""
    where, noisy = ("the image", "image") if n_frames == 1 else ("the first frames", "movie")
    doubtful = ("none could be found here" if not found else "the detection here is doubtful"
                if found == 1 else f"the {found} detections here are doubtful")
    # Rock salt is the layered lattice without its (003) order: without those fringes
    # anywhere, it cannot be told from another material.
    judged = [f for f in rocksalt_fraction if not np.isnan(f)]
    if judged and max(judged) > 0:
        doubtful += (f"; the rock salt reported (up to {100 * max(judged):.2g} % of a frame) is "
                     "doubtful too: it is told from the layered lattice by those fringes")
    logger.warning("no %.3g nm " + NO_FRINGES + " in %s: check the pixel size "
                   "and %s (another material?), unless the %s is just "
                   "noisy; cores are found where those fringes end, so %s%s",
                   d_spacing_nm, where, option("d_spacing_nm"), noisy, doubtful,
                   slipped_calibration_hint(frame, cal, d_spacing_nm), extra={LEADS: True})
