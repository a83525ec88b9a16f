"""The options of `analyze` (and ``dislotrack infer``) checked before any frame is read,
their defaults, and their record in summary.json."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import numpy as np

from dislotrack.infer.calibration import is_number
from dislotrack.infer.interface import option

#: Default shortest track [detections] (``min_length``, ``--min-length``).
DEFAULT_MIN_LENGTH = 6


def check_linking_options(*, max_speed_nm_s: float, memory: int, min_length: int,
                          max_gap: int, min_track_score: float = 0.0, border_nm: float = 2.0) -> None:
    """Refuse impossible analysis options before any frame is read.

    Raises
    ------
    ValueError
        Naming the option as the user gave it (`dislotrack.infer.interface.option`).
    """
    checks = [(option("max_speed_nm_s"), max_speed_nm_s, "a positive speed [nm/s]", 0.0, False),
              (option("memory"), memory, "a number of frames >= 0", 0, True),
              (option("min_length"), min_length, "a number of frames >= 1", 1, True),
              (option("max_gap"), max_gap, "a number of frames >= 0 (0: none)", 0, True),
              ("min_track_score", min_track_score, "a core score in [0, 1) (0: none)", 0.0, None),
              ("border_nm", border_nm, "a distance >= 0 [nm]", 0.0, None)]
    for name, value, what, lowest, frames in checks:
        _check_number(name, value, what)  # before comparing: "2" > 0 is itself a TypeError
        if frames and not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be a whole number of frames, got {value!r}")
        # frames None: a bound that may be reached (a score or a distance).
        low_ok = value > lowest if frames is False else value >= lowest
        if not (low_ok and np.isfinite(value)) or (name == "min_track_score" and value >= 1):
            raise ValueError(f"{name} must be {what}, got {value}")


def as_typed(value: float | None) -> float | None:
    """A number as the user typed it: a float32 0.1 (from an array's dtype) is 0.1, not the
    0.10000000149 its exact value prints as; other values unchanged (None stays None).

    Examples
    --------
    >>> as_typed(np.float32(0.1)), as_typed(0.25), as_typed(None)
    (0.1, 0.25, None)
    """
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        return float(str(value))  # numpy prints the shortest decimal that reads back the same
    return value


def frame_window(frames: str | slice | tuple[int | None, int | None], n_frames: int) -> tuple[int, int]:
    """``(start, stop)`` of a window of a movie's ``n_frames`` frames, from ``"START:STOP"``
    (either end may be left out: 0, the end) or a pair.

    Raises
    ------
    ValueError
        Naming the option, if it is no such window.

    Examples
    --------
    >>> frame_window("100:250", 400), frame_window("100:", 400), frame_window((0, None), 5)
    ((100, 250), (100, 400), (0, 5))
    """
    example = option("frames", "100:250", text=True)
    syntax = ValueError(f"{option('frames')} must be START:STOP (frame numbers from 0, e.g. "
                        f"{example}; either end may be left out"
                        + ("" if example.startswith("--") else ", or a pair such as (100, None)")
                        + f"), got {frames!r}")
    if isinstance(frames, str):
        parts = frames.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            start, stop = (int(p) if p.strip() else None for p in parts)
        except ValueError:
            raise syntax from None
    elif isinstance(frames, slice) and frames.step in (None, 1):
        start, stop = frames.start, frames.stop
    elif isinstance(frames, (tuple, list)) and len(frames) == 2:
        start, stop = frames
    else:
        raise syntax
    if not all(v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool))
               for v in (start, stop)):
        raise syntax
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise ValueError(f"{option('frames')} takes frame numbers from 0, got {frames!r}")
    start = 0 if start is None else start
    if stop is not None and start >= stop:
        raise ValueError(f"{option('frames', f'{start}:{stop}', text=True)} holds no frame: START "
                         "must be below STOP")
    stop = n_frames if stop is None else stop
    if not start < stop <= n_frames:
        raise ValueError(f"{option('frames', f'{start}:{stop}', text=True)} is not a window of the "
                         f"movie's {n_frames} frame{'s' * (n_frames != 1)} (0 <= START < STOP <= "
                         f"{n_frames})")
    return int(start), int(stop)


#: Fewest pixels a region may span each way: four periods of the finest fringes that
#: show (2.5 px, `dislotrack.infer.pipeline.MIN_FRINGE_PERIOD_PX`), around a core.
MIN_REGION_PX = 10

Bounds = tuple[int | None, int | None]


def region_bounds(region: str | tuple[Bounds, Bounds]) -> tuple[Bounds, Bounds]:
    """``((x0, x1), (y0, y1))`` of ``"X0:X1,Y0:Y1"`` or a pair of pairs, ends left out as
    None; checked as far as it can be without the frames (`region_box` checks the rest).

    Raises
    ------
    ValueError
        Naming the option: not that syntax, a negative end, or an end below its start.

    Examples
    --------
    >>> region_bounds("100:612, :512")
    ((100, 612), (None, 512))
    """
    text = isinstance(region, str)
    syntax = ValueError(f"{option('region')} must be X0:X1,Y0:Y1 (pixel columns, then rows, from 0, "
                        f"e.g. {option('region', '100:612,0:512', text=True)}; any end may be left "
                        f"out), got {region!r}")
    if text:
        try:
            axes = [tuple(int(v) if v.strip() else None for v in part.split(":"))
                    for part in region.split(",")]
        except ValueError:
            raise syntax from None
    elif isinstance(region, (tuple, list)):
        axes = [tuple(a) if isinstance(a, (tuple, list)) else () for a in region]
    else:
        raise syntax
    if len(axes) != 2 or any(len(a) != 2 or not all(map(_whole_or_none, a)) for a in axes):
        raise syntax
    for (start, stop), what in zip(axes, ("columns", "rows"), strict=True):
        if any(v is not None and v < 0 for v in (start, stop)):
            raise ValueError(f"{option('region', region, text=text)}: pixels count from 0 "
                             f"(no negative {what})")
        if start is not None and stop is not None and stop <= start:
            raise ValueError(f"{option('region', region, text=text)} holds no {what}: each START "
                             "must be below its STOP")
    return tuple(tuple(None if v is None else int(v) for v in a) for a in axes)


def region_box(region: str | tuple[Bounds, Bounds], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x0, x1, y0, y1)`` of a rectangle of frames of ``shape`` (rows, columns), from
    ``"X0:X1,Y0:Y1"`` (pixel columns ``X0`` to ``X1 - 1`` and rows ``Y0`` to ``Y1 - 1``;
    any end may be left out: 0, the edge) or a pair of pairs ``((x0, x1), (y0, y1))``.

    Raises
    ------
    ValueError
        Naming the option, if it is no rectangle of these frames (`region_bounds`) or
        spans under `MIN_REGION_PX` either way (an axis left whole is accepted, however
        narrow).

    Examples
    --------
    >>> region_box("100:612,0:512", (1024, 2048)), region_box(":,:256", (512, 640))
    ((100, 612, 0, 512), (0, 640, 0, 256))
    >>> region_box(((None, 300), (20, None)), (400, 500))
    (0, 300, 20, 400)
    """
    text = isinstance(region, str)
    box = []
    for (start, stop), size, what in zip(region_bounds(region), (shape[1], shape[0]),
                                         ("columns", "rows"), strict=True):
        start, stop = 0 if start is None else start, size if stop is None else stop
        if not 0 <= start < stop <= size:
            raise ValueError(f"{option('region', region, text=text)} is not a "
                             f"rectangle of the {shape[1]} x {shape[0]} px frames: {what} must "
                             f"satisfy 0 <= start < stop <= {size}")
        box += [start, stop]
    # An axis left whole is accepted however narrow the frames are.
    small = [what for what, n, size in (("columns", box[1] - box[0], shape[1]),
                                        ("rows", box[3] - box[2], shape[0]))
             if n < min(MIN_REGION_PX, size)]
    if small:
        raise ValueError(f"{option('region', region, text=text)} spans under "
                         f"{MIN_REGION_PX} {' and '.join(small)}: too small to hold a dislocation "
                         "core and the lattice fringes around it")
    return tuple(box)


def part_label(options: dict) -> str:
    """``" (frames A:B; x X0:X1, y Y0:Y1)"`` for an analysis of a window or region of its
    input (``options`` as recorded: `AnalysisResult.options`), "" for the whole.

    Examples
    --------
    >>> part_label({"frames": "5:9", "region": "10:74,20:84"}), part_label({"frames": None})
    (' (frames 5:9; x 10:74, y 20:84)', '')
    """
    parts = [f"frames {options['frames']}"] if options.get("frames") else []
    if options.get("region"):  # "X0:X1,Y0:Y1"
        parts.append("x {}, y {}".format(*options["region"].split(",")))
    return f" ({'; '.join(parts)})" if parts else ""


def _whole_or_none(v: object) -> bool:
    return v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def _check_number(name: str, value: object, what: str) -> None:
    """Refuse a value that is not a real number (e.g. "0.5" from a notebook) by name."""
    if not is_number(value):
        raise TypeError(f"{name} must be {what}, got {value!r} (a {type(value).__name__})")


#: Finest plausible pixel size [nm/px] (1 pm; aberration-corrected STEM samples at 5 pm
#: and coarser): anything finer is a unit slip, e.g. metres given as nm.
MIN_PIXEL_SIZE_NM = 1e-3


def check_calibration_options(*, pixel_size_nm: float | None, frame_interval_s: float | None,
                              d_spacing_nm: float) -> None:
    """Refuse a pixel size, frame interval or (003) spacing that is not a positive number.

    Parameters
    ----------
    pixel_size_nm, frame_interval_s : float or None
        The user's overrides (None: from the file).
    d_spacing_nm : float
        The (003) spacing the pixel size is estimated from.

    Raises
    ------
    ValueError
        Naming the option as the user gave it (`dislotrack.infer.interface.option`).
    """
    checks = [(option("pixel_size_nm"), pixel_size_nm, "a positive size [nm/px]"),
              (option("frame_interval_s"), frame_interval_s, "a positive time [s]"),
              (option("d_spacing_nm"), d_spacing_nm, "a positive spacing [nm]")]
    for name, value, what in checks:
        if value is not None:
            _check_number(name, value, what)
        if value is not None and not (value > 0 and np.isfinite(value)):  # also NaN
            raise ValueError(f"{name} must be {what}, got {value}")
    if pixel_size_nm is not None and pixel_size_nm < MIN_PIXEL_SIZE_NM:
        as_nm = [f"{pixel_size_nm:g} {unit} is {pixel_size_nm * f:.4g} nm"
                 for unit, f in (("m", 1e9), ("µm", 1e3)) if MIN_PIXEL_SIZE_NM <= pixel_size_nm * f <= 10]
        raise ValueError(f"{option('pixel_size_nm')} is in nm per pixel: {pixel_size_nm:g} nm is "
                         f"finer than any microscope samples (< {MIN_PIXEL_SIZE_NM:g} nm)"
                         + (f"; {as_nm[0]}" if as_nm else ""))


def analysis_options(**options: Any) -> dict[str, Any]:
    """``options`` as plain JSON values: numpy scalars as Python numbers, paths as text.

    Parameters
    ----------
    **options
        Option names and values (`analyze` keyword arguments, ``device_used``).

    Returns
    -------
    dict
        The same keys, values that strict JSON takes (non-finite numbers and other
        objects, e.g. paths and torch devices, as text).
    """
    def plain(v: Any) -> Any:
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, float) and not np.isfinite(v):
            return str(v)  # strict JSON has no inf / nan
        # Paths, torch devices, ...: as text.
        return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)

    return {k: plain(v) for k, v in options.items()}


#: Default of ``weak_fraction`` (``--weak-fraction``): weak peaks from half the threshold.
DEFAULT_WEAK_FRACTION = 0.5


def check_detector_options(detector: str, *, model: str | Path | None = None,
                           threshold: float | None = None, tta: bool | int | None = None,
                           weak_fraction: float = DEFAULT_WEAK_FRACTION, precision: str = "auto") -> None:
    """Refuse an unknown detector, values out of range, and U-Net options given to another
    detector.

    Parameters
    ----------
    detector : str
        ``"unet"`` or ``"gpa"``.
    model, threshold, tta, weak_fraction, precision
        As given to `analyze` (None / None, False or 1 / `DEFAULT_WEAK_FRACTION` / "auto":
        not given). ``precision``'s name is checked by
        `dislotrack.infer.predict.network_dtype`, with the device.

    Raises
    ------
    ValueError
        Naming the detector and each option (and its ``dislotrack infer`` flag) it
        would silently ignore.
    """
    if not 0 < weak_fraction <= 1:  # also NaN
        raise ValueError(f"{option('weak_fraction')} must be in (0, 1]: a fraction of the "
                         f"threshold (1 disables the track-end extension), got {weak_fraction}")
    if threshold is not None and not 0 < threshold < 1:  # also NaN
        raise ValueError(f"{option('threshold')} is a core score in (0, 1), got {threshold}")
    if detector not in ("unet", "gpa"):
        raise ValueError(f"{option('detector')} must be 'unet' or 'gpa', got {detector!r}")
    views = 1 if tta is None else tta_views(tta)  # a bad value: refused here, before any frame is read
    if detector == "unet":
        return
    given = {"model": model is not None, "threshold": threshold is not None, "tta": views > 1,
             "weak_fraction": weak_fraction != DEFAULT_WEAK_FRACTION, "precision": precision != "auto"}
    unused = [option(name) for name, is_set in given.items() if is_set]
    if unused:
        raise ValueError(f"the {detector} detector ({option('detector', detector, text=True)}) does not use "
                         f"{' or '.join(unused)}: {'it sets' if len(unused) == 1 else 'they set'} "
                         f"the U-Net only ({option('detector', 'unet', text=True)}); leave "
                         f"{'it' if len(unused) == 1 else 'them'} out")


#: The view counts of test-time augmentation (`tta_views`).
TTA_VIEWS = (1, 2, 4, 8)

#: Views for a single image when ``tta`` is not given: on the real perfect lattices of
#: README's Detection accuracy, 2 views cut false cores from 0.33 to 0.08 per 100 nm² at
#: the same F1; a movie's tracks already drop most false cores, at twice the time.
SINGLE_IMAGE_TTA = 2


def default_tta(n_frames: int) -> int:
    """The views of test-time augmentation `analyze` uses when ``tta`` is not given.

    Parameters
    ----------
    n_frames : int
        Frames of the input.

    Returns
    -------
    int
        `SINGLE_IMAGE_TTA` for a single image, 1 (none) for a movie.

    Examples
    --------
    >>> default_tta(1), default_tta(30)
    (2, 1)
    """
    return SINGLE_IMAGE_TTA if n_frames == 1 else 1


def tta_views(tta: bool | int) -> int:
    """The number of views test-time augmentation averages.

    Parameters
    ----------
    tta : bool or int
        False or 1: none; True or 8: the 8 flips and transposes; 2: identity and the 180°
        turn; 4: the four quarter turns.

    Returns
    -------
    int
        1, 2, 4 or 8.

    Raises
    ------
    ValueError
        For any other value.
    """
    views = (8 if tta else 1) if isinstance(tta, (bool, np.bool_)) else tta
    if not isinstance(views, (int, np.integer)) or views not in TTA_VIEWS:
        raise ValueError(f"{option('tta')} must be one of 1, 2, 4, 8 (views averaged), got {tta!r}")
    return int(views)


def check_folder(path: str | Path, label: str) -> None:
    """Raise NotADirectoryError naming ``label`` (e.g. "annotation folder") unless
    ``path`` is an existing folder."""
    if not Path(path).is_dir():
        what = "is a file, not a folder" if Path(path).exists() else "does not exist"
        raise NotADirectoryError(f"{label} {path} {what}")
