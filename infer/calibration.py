"""Pixel size and frame interval of a movie, where each came from, and unit conversion.

Precedence is always *user > file > estimated*: a value the user gives wins, then
what the file's metadata says, then (for the pixel size only) an estimate from
the image itself. A missing frame interval is never guessed: velocities are then
reported per frame, and the returned `Calibration` says so in its warnings.

Examples
--------
>>> file_cal = Calibration.from_file(pixel_size_nm=0.05)
>>> cal = resolve_calibration(file_cal, frame_interval_s=2.0)
>>> cal.pixel_size_source, cal.frame_interval_source
('file', 'user')
>>> to_nm(1.5, "Å")
0.15
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from dislotrack.data_gen.text import first_few
from dislotrack.infer.interface import option

if TYPE_CHECKING:
    import pint

SOURCES = ("file", "annotation", "estimated", "user")
#: Sources of values that came with the input: its metadata, or the annotation sidecar
#: (``<stem>.json``) beside a lab's image that lacks them.
FILE_SOURCES = ("file", "annotation")
#: Start of the calibration warning that velocities are per frame.
NO_INTERVAL_NOTE = "no frame interval"

# Spellings that pint does not parse, or parses as something else ("A" is ampere).
_UNIT_ALIASES = {
    "a": "angstrom",
    "å": "angstrom",
    "ang": "angstrom",
    "angstroms": "angstrom",
    "ångström": "angstrom",
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "secs": "s",
    "msec": "ms",
    "usec": "us",
}
# pint defines these as printing lengths (1 px = 1/96 inch); in a file they mean "uncalibrated".
_NOT_PHYSICAL = {"px", "pix", "pixel", "pixels", "dot", "dots", "pt", "point"}


#: Spellings of the target units themselves: no conversion, so no unit registry (building
#: pint's takes ~0.5 s, a tenth of analysing a short movie).
_NM, _SECONDS = {"nm", "nanometer", "nanometers"}, {"s", "sec", "second", "seconds"}


@cache
def _ureg() -> pint.UnitRegistry:
    import pint

    return pint.UnitRegistry()


def _unit_key(value: float, unit: str | None, kind: str) -> str:
    """``unit`` normalised (Unicode composition, case, micro sign, aliases); ValueError if
    missing or pixels."""
    if unit is None or not str(unit).strip():
        raise ValueError(f"{value!r} has no unit; cannot convert it to a {kind}")
    # NFC: "A" + combining ring (as some metadata writes Å) and the Ångström sign become "Å"
    key = unicodedata.normalize("NFC", str(unit)).strip().replace("µ", "u").replace("μ", "u").lower()
    key = key.replace("_", "").replace(" ", "")  # Berkeley EMD writes "n_m"
    key = _UNIT_ALIASES.get(key, key)
    if key in _NOT_PHYSICAL:
        raise ValueError(f"{value!r} {unit} is in pixels, not a physical {kind}")
    return key


def _quantity(value: float, key: str, unit: str, kind: str) -> pint.Quantity:
    import pint

    try:
        return _ureg().Quantity(float(value), key)
    except (pint.UndefinedUnitError, pint.DefinitionSyntaxError, ValueError, TypeError) as err:
        raise ValueError(f"unknown {kind} unit {unit!r} (value {value!r})") from err


def _clean(x: float) -> float:
    """Drop conversion round-off (1 Å -> 0.1 nm, not 0.09999999999999999)."""
    return float(f"{float(x):.12g}")


def to_nm(value: float, unit: str) -> float:
    """Convert a length to nm.

    Parameters
    ----------
    value : float
        Length in ``unit``.
    unit : str
        Any length unit pint knows, plus the microscope spellings "A"/"Å"/
        "angstrom", "um"/"µm"/"micron" and Berkeley EMD's "n_m".

    Raises
    ------
    ValueError
        If the unit is missing, unknown, reciprocal (a diffraction or FFT
        calibration such as "1/nm") or not a length.
    """
    key = _unit_key(value, unit, "length")
    if key in _NM:
        return _clean(value)
    inverse = _reciprocal_of(key)  # "1/Å", "a^-1": pint reads Å and A otherwise or not at all
    q = _quantity(value, inverse or key, unit, "length")
    ureg = _ureg()
    if inverse is not None and q.dimensionality == ureg.meter.dimensionality:
        q = 1 / q
    if q.dimensionality == (1 / ureg.meter).dimensionality:
        raise ValueError(f"{value!r} {unit} is a reciprocal length: {RECIPROCAL_NOTE}")
    if q.dimensionality != ureg.meter.dimensionality:
        raise ValueError(f"{value!r} {unit} is not a length")
    return _clean(q.to("nm").magnitude)


#: What `to_nm` says of a reciprocal length (1/nm, 1/Å): readers and the pipeline look for it.
RECIPROCAL_NOTE = ("the image is a diffraction pattern or FFT, not the real-space lattice "
                   "image that dislotrack analyses")
_RECIPROCAL = re.compile(r"1/(?P<a>.+)|(?P<b>.+?)(?:\^-1|\*\*-1|⁻¹|-1)")


def _reciprocal_of(key: str) -> str | None:
    """The length unit (after `_UNIT_ALIASES`) of a normalised reciprocal unit key such as
    "1/å" or "a^-1", else None."""
    m = _RECIPROCAL.fullmatch(key)
    if m is None:
        return None
    inner = m.group("a") or m.group("b")
    return _UNIT_ALIASES.get(inner, inner)


def to_seconds(value: float, unit: str) -> float:
    """Convert a time to s ("s", "sec", "ms", "us"/"µs", "ns", "min", "h", ...).

    Raises
    ------
    ValueError
        If the unit is missing, unknown, a rate ("Hz", "fps", "1/s") or not a time.
    """
    key = _unit_key(value, unit, "time")
    if key in _SECONDS:
        return _clean(value)
    if _is_rate(unit):
        raise ValueError(f"{value!r} {unit} is a frequency (a frame rate), not a time: give the "
                         "frame interval, one over the rate")
    q = _quantity(value, key, unit, "time")
    if q.dimensionality != _ureg().second.dimensionality:
        raise ValueError(f"{value!r} {unit} is not a time")
    return _clean(q.to("s").magnitude)


#: Spellings of frames per second, which pint does not know.
_FRAMES_PER_SECOND = ("fps", "frames/s", "frame/s")


def _is_rate(unit: str) -> bool:
    """Whether ``unit`` is a frequency: "fps", or one pint reads as 1/time in the case written
    ("Hz", "kHz"; lower-cased, "hz" is unknown to it)."""
    import pint

    text = unicodedata.normalize("NFC", str(unit)).strip()
    if text.lower() in _FRAMES_PER_SECOND:
        return True
    try:
        return _ureg().Quantity(1.0, text).dimensionality == (1 / _ureg().second).dimensionality
    except (pint.UndefinedUnitError, pint.DefinitionSyntaxError, ValueError, TypeError, AttributeError):
        return False


#: A number and an optional unit as a user types them: "0.12", "1.2 Å", "0.12nm/px", "40 ms".
_VALUE_UNIT = re.compile(r"\s*(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>.*?)\s*")
#: "per pixel" suffixes of a pixel size ("nm/px", "Å/pixel"): the length is what counts.
_PER_PIXEL = re.compile(r"\s*/\s*(?:px|pix|pixel|pixels)\s*$", re.IGNORECASE)


def _value_and_unit(text: str, what: str) -> tuple[float, str]:
    """Split a command-line value into its number and (possibly empty) unit."""
    m = _VALUE_UNIT.fullmatch(str(text))
    if m is None:
        raise ValueError(f"{what} must be a number with an optional unit, got {text!r}")
    return float(m.group("num")), m.group("unit")


def parse_pixel_size(text: str) -> float:
    """A pixel size as a user writes it on the command line, in nm/px.

    A bare number is in nm; a unit may follow, with or without "/px": "1.2 Å",
    "1.2A/px", "0.012 um". Positivity is checked where the value is used
    (`dislotrack.infer.options.check_calibration_options`).

    Raises
    ------
    ValueError
        If the text is not a number or its unit is not a length (`to_nm`).
    """
    value, unit = _value_and_unit(text, "a pixel size")
    unit = _PER_PIXEL.sub("", unit)
    return float(value) if not unit else to_nm(value, unit)


def parse_frame_interval(text: str) -> float:
    """A frame interval as a user writes it on the command line, in s.

    A bare number is in s; a unit may follow ("40 ms", "0.5s"), or a frame
    rate, which is inverted ("25 fps", "10 Hz").

    Raises
    ------
    ValueError
        If the text is not a number or its unit is neither a time nor a rate.
    """
    value, unit = _value_and_unit(text, "a frame interval")
    if not unit:
        return float(value)
    if _is_rate(unit):
        rate = 1.0 if unit.strip().lower() in _FRAMES_PER_SECOND else \
            _ureg().Quantity(1.0, unit.strip()).to("1/s").magnitude
        if value <= 0:
            raise ValueError(f"a frame rate must be positive, got {text!r}")
        return _clean(1.0 / (value * rate))
    return to_seconds(value, unit)


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number (numpy's too), not a bool or a string."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def check_positive(value: float, name: str, unit: str) -> float:
    """Return ``value`` as float if it is positive and finite, else raise ValueError."""
    if not is_number(value):
        raise ValueError(f"{name} must be a number, got {value!r} {unit}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r} {unit}")
    return float(value)


def _check_pair(value: float | None, source: str | None, name: str, unit: str) -> None:
    if value is None:
        if source is not None:
            raise ValueError(f"{name} source is {source!r} but there is no {name}")
        return
    check_positive(value, name, unit)
    if source not in SOURCES:
        raise ValueError(f"{name} source must be one of {SOURCES}, got {source!r}")


@dataclass(frozen=True)
class Calibration:
    """Physical scale of a movie and the origin of each number.

    Attributes
    ----------
    pixel_size_nm : float or None
        [nm/px]; None when unknown (positions stay in pixels).
    frame_interval_s : float or None
        [s]; None when unknown (velocities are per frame).
    pixel_size_source, frame_interval_source : {"file", "annotation", "estimated", "user", None}
        Where each value came from; None exactly when the value is None.
    warnings : tuple of str
        Human-readable notes for the report (estimates, overrides, missing values).
    notes : tuple of str
        How the input was read: what its reader assumed or ignored (``Movie.metadata["notes"]``,
        which `dislotrack.infer.readers.open_movie` copies here; summary.json ``input.notes``).
    frame_times_s : tuple of float or None
        The file's acquisition clock, one time [s] per frame (frame 0 at 0 s), where it
        steps unevenly (dropped frames): times and velocities follow it
        (`dislotrack.infer.pipeline.calibrate` sets it; a user's interval drops it).
    """

    pixel_size_nm: float | None = None
    frame_interval_s: float | None = None
    pixel_size_source: str | None = None
    frame_interval_source: str | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    frame_times_s: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _check_pair(self.pixel_size_nm, self.pixel_size_source, "pixel size", "nm/px")
        _check_pair(self.frame_interval_s, self.frame_interval_source, "frame interval", "s")

    @classmethod
    def from_file(
        cls,
        *,
        pixel_size_nm: float | None = None,
        frame_interval_s: float | None = None,
        warnings: Sequence[str] = (),
    ) -> Calibration:
        """Calibration read from a file's metadata (source "file" where known)."""
        return cls(
            pixel_size_nm=pixel_size_nm,
            frame_interval_s=frame_interval_s,
            pixel_size_source=None if pixel_size_nm is None else "file",
            frame_interval_source=None if frame_interval_s is None else "file",
            warnings=tuple(warnings),
        )

    def with_frame_interval(self, frame_interval_s: float) -> Calibration:
        """This calibration with the user's frame interval (`resolve_calibration`'s rule:
        the user's value wins, with a note where it overrides a different one in the file;
        the notes about the interval it replaces go).

        Examples
        --------
        >>> Calibration.from_file(pixel_size_nm=0.1).with_frame_interval(0.5).frame_interval_source
        'user'
        """
        dt = check_positive(frame_interval_s, "frame interval", "s")
        file_dt = self.frame_interval_s if self.frame_interval_source in FILE_SOURCES else None
        # The notes about the interval it replaces go: per-frame units, a video's playback
        # rate, an earlier override (whose file value is then not known here).
        notes = [w for w in self.warnings
                 if not w.startswith((NO_INTERVAL_NOTE, "frame interval"))]
        notes += _override_note("frame interval", dt, file_dt, "s", self.frame_interval_source)
        if self.frame_times_s is not None:  # the clock goes: say its steps are now one interval
            notes = [w for w in notes if not w.startswith((UNEVEN_STEPS, CLOCK_STEPS))]
            notes += [w for w in [uneven_steps_warning(self.frame_times_s, dt)] if w]
        return dataclasses.replace(self, frame_interval_s=dt, frame_interval_source="user",
                                   warnings=tuple(notes), frame_times_s=None)

    @property
    def length_unit(self) -> str:
        """"nm" when the pixel size is known, else "px"."""
        return "px" if self.pixel_size_nm is None else "nm"

    @property
    def time_unit(self) -> str:
        """"s" when the frame interval is known, else "frame"."""
        return "frame" if self.frame_interval_s is None else "s"

    def to_dict(self) -> dict:
        """Plain dict for summary.json."""
        return {
            "pixel_size_nm": self.pixel_size_nm,
            "pixel_size_source": self.pixel_size_source,
            "frame_interval_s": self.frame_interval_s,
            "frame_interval_source": self.frame_interval_source,
            "warnings": list(self.warnings),
        }


#: An override this many times larger or smaller than the file's value is likely a unit
#: slip (Å for nm: 10; ms for s: 1000), and the note says so.
OVERRIDE_RATIO_UNITS = 3.0


def _override_note(name: str, user: float, file: float | None, unit: str,
                   source: str | None = "file") -> list[str]:
    if file is None or math.isclose(user, file, rel_tol=1e-3):
        return []
    whose = "the annotation's" if source == "annotation" else "the file's"
    note = f"{name} {user:g} {unit} given by the user overrides {whose} {file:g} {unit}"
    ratio = user / file if file > 0 else 1.0
    if not 1 / OVERRIDE_RATIO_UNITS < ratio < OVERRIDE_RATIO_UNITS:  # e.g. Å as nm: 10 times
        note += (f", {ratio:.3g} times it: check the units ({unit}), unless {whose} value "
                 "is known to be wrong")
    return [note]


def resolve_calibration(
    file_cal: Calibration | None,
    *,
    pixel_size_nm: float | None = None,
    frame_interval_s: float | None = None,
    estimate: Callable[[], float | None] | None = None,
    estimate_basis: str = "(003) fringes",
) -> Calibration:
    """Combine file, user and estimated calibration: user > file > estimated.

    Parameters
    ----------
    file_cal : Calibration or None
        What the reader found in the file (its warnings are kept).
    pixel_size_nm : float, optional
        User override [nm/px].
    frame_interval_s : float, optional
        User override [s].
    estimate : callable, optional
        Zero-argument function returning an estimated pixel size [nm/px] or None
        (e.g. from the (003) fringe spacing). Called only when neither the user
        nor the file gives a pixel size.
    estimate_basis : str
        What the estimate assumes, for its warning (e.g. "0.473 nm (003) fringes").

    Returns
    -------
    Calibration
        With the source of each value and warnings listing estimates, overrides
        and missing values.

    Raises
    ------
    ValueError
        If a user value or the estimate is not positive and finite.
    """
    file_cal = file_cal or Calibration()
    # A sidecar's disagreement with the file (readers) is moot where the user decides.
    moot = [f" says {key} " for key, given in (("pixel_size_nm", pixel_size_nm),
                                               ("frame_interval_s", frame_interval_s)) if given is not None]
    notes = [n for n in file_cal.warnings if not any(m in n for m in moot)]

    if pixel_size_nm is not None:
        px = check_positive(pixel_size_nm, "pixel size", "nm/px")
        px_src = "user"
        notes += _override_note("pixel size", px, file_cal.pixel_size_nm, "nm/px",
                                file_cal.pixel_size_source)
    elif file_cal.pixel_size_nm is not None:
        px, px_src = file_cal.pixel_size_nm, file_cal.pixel_size_source or "file"
    else:
        px = estimate() if estimate is not None else None
        if px is not None:
            px = check_positive(px, "estimated pixel size", "nm/px")
            px_src = "estimated"
            notes.append(
                f"pixel size {px:.4g} nm/px estimated from {estimate_basis}, not read from the "
                "file: right only if the material shows those fringes; give "
                f"{option('pixel_size_nm')} to override"
            )
        else:
            px_src = None
            notes.append("no pixel size: positions and velocities in pixel units")

    if frame_interval_s is not None:
        dt = check_positive(frame_interval_s, "frame interval", "s")
        dt_src = "user"
        notes += _override_note("frame interval", dt, file_cal.frame_interval_s, "s",
                                file_cal.frame_interval_source)
    elif file_cal.frame_interval_s is not None:
        dt, dt_src = file_cal.frame_interval_s, file_cal.frame_interval_source or "file"
    else:
        dt, dt_src = None, None
        if any(n.startswith(NOT_TIME_NOTE) for n in notes):  # a z or tilt series: no advice
            notes.append(f"{NO_INTERVAL_NOTE}: velocities in per-frame units")
        else:
            notes.append(f"{NO_INTERVAL_NOTE}: velocities in per-frame units (pass "
                         f"{option('frame_interval_s', 'S')} for nm/s)")

    return Calibration(px, dt, px_src, dt_src, tuple(notes), notes=file_cal.notes)


def interval_from_timestamps(
    times_s: Sequence[float], *, resolution_s: float = 0.0
) -> float | None:
    """Frame interval [s] from per-frame acquisition times, or None if they do not give one.

    Parameters
    ----------
    times_s : sequence of float
        Acquisition time of each frame, in frame order [s, any origin].
    resolution_s : float
        Quantisation of the timestamps [s] (e.g. 1 for whole-second clocks).
        With 0 the median frame-to-frame difference is returned and any
        non-increasing step gives None. With a positive resolution the mean
        interval over the whole span is returned, and only if the span is at
        least 10 resolution steps (so the result is good to 10 %).
    """
    t = np.asarray(times_s, dtype=float)
    if t.size < 2 or not np.all(np.isfinite(t)):
        return None
    if resolution_s > 0:
        span = t[-1] - t[0]
        return float(span / (t.size - 1)) if span >= 10 * resolution_s else None
    steps = np.diff(t)
    if np.any(steps <= 0):
        return None
    return float(np.median(steps))


def non_increasing_warning(times_s: Sequence[float], names: Sequence[str] | None = None) -> str | None:
    """Where per-frame acquisition times do not increase, a warning naming the first frame
    that goes back (or stands still) in time, and its file in ``names`` if given (or saying
    that all frames carry one time); else None. `interval_from_timestamps` then gives no
    interval: the frames may be out of order.

    Examples
    --------
    >>> print(non_increasing_warning([0, 1, 2, 1.5, 4]))  # doctest: +ELLIPSIS
    the frames' acquisition times do not increase: frame 3 is 0.5 s before frame 2 (frames ...
    """
    times = np.asarray(times_s, dtype=float)
    steps = np.diff(times)
    back = np.flatnonzero(~(steps > 0))  # NaN steps too
    if not len(back):
        return None
    if np.ptp(times) == 0:  # e.g. a sequence's start time in every frame: no clock at all
        return f"the {len(times)} frames all carry one acquisition time; no frame interval"
    k = int(back[0]) + 1
    frame = f"frame {k}" + (f" ({names[k]})" if names is not None else "")
    step = steps[k - 1]
    when = (f"is {-step:.4g} s before frame {k - 1}" if step < 0 else
            f"has the time of frame {k - 1}" if step == 0 else "has no time")
    return (f"the frames' acquisition times do not increase: {frame} {when} (frames out of "
            "order?); no frame interval")


def uneven_steps_warning(times_s: Sequence[float], interval_s: float | None) -> str | None:
    """Where per-frame acquisition times step unevenly (more than 20 % of the interval
    apart: dropped frames, pauses), a warning that times and velocities assume the even
    ``interval_s``, else None.

    Examples
    --------
    >>> print(uneven_steps_warning([0, 1, 2, 3, 9, 10], 1.0))  # doctest: +ELLIPSIS
    frame steps vary from 1 to 6 s (frames dropped or paused after frame 3?): times and ...
    >>> uneven_steps_warning([0, 1, 2.05, 3], 1.0) is None  # clock jitter
    True
    """
    steps = np.diff(np.asarray(times_s, dtype=float))
    if interval_s is None or len(steps) < 1 or np.ptp(steps) <= 0.2 * interval_s:
        return None
    return (f"{UNEVEN_STEPS} {_step_range(steps, interval_s)}: times and "
            f"velocities assume one interval per frame (the median, {interval_s:.4g} s, unless "
            f"given), so tracks across uneven steps are off (analyse an even stretch with "
            f"{option('frames')}: it takes its own frames' clock)")


#: How `uneven_steps_warning` begins (a window of the movie replaces it with its own).
UNEVEN_STEPS = "frame steps vary from"


def clock_steps_warning(times_s: Sequence[float], interval_s: float) -> str:
    """What `uneven_steps_warning` says once times and velocities follow the clock
    (`Calibration.frame_times_s`): linking searches one typical step per frame, gap
    closing bridges the longer ones.

    Examples
    --------
    >>> print(clock_steps_warning([0, 1, 2, 3, 9, 10], 1.0))  # doctest: +ELLIPSIS
    the acquisition clock steps from 1 to 6 s (frames dropped or paused after frame 3?): ...
    """
    steps = np.diff(np.asarray(times_s, dtype=float))
    return (f"{CLOCK_STEPS} {_step_range(steps, interval_s)}: times and velocities "
            f"follow it (t_s); linking searches each step as far as {option('max_speed_nm_s')} "
            f"allows in the median {interval_s:.4g} s and rejoins a track broken at a longer step "
            f"where its own velocity carries it (a core that changes pace there may still lose "
            f"its track: raise {option('max_speed_nm_s')})")


#: How `clock_steps_warning` begins.
CLOCK_STEPS = "the acquisition clock steps from"


def _step_range(steps: np.ndarray, interval_s: float) -> str:
    """"A to B s", and after which frames steps over 1.5 intervals suggest dropped frames."""
    long = np.flatnonzero(steps > 1.5 * interval_s)
    where = (f" (frames dropped or paused after frame {first_few([str(i) for i in long], 3)}?)"
             if len(long) else "")
    return f"{steps.min():.4g} to {steps.max():.4g} s{where}"


# --- metadata values, read by the file readers (`dislotrack.infer.readers`) ---

#: Start of the warning that a file's x and y pixel sizes differ (`square_pixel_size`): moot
#: where the user gives the pixel size.
NON_SQUARE_NOTE = "non-square pixels"

#: Ends a calibration note that only says where a value came from (a lab's annotation
#: sidecar): the CLI prints it as a note, not a warning.
FROM_ANNOTATION_NOTE = "(the file has none)"


def is_provenance_note(message: str) -> bool:
    """Whether a calibration message only names a value's source (nothing to check)."""
    return message.endswith(FROM_ANNOTATION_NOTE)


#: A pixel size at least this large [nm] in a print unit (inch, cm, mm) is a print or screen
#: resolution (dots per inch), not a microscope calibration.
PRINT_RESOLUTION_NM = 1000.0
_PRINT_UNITS = ("inch", "in", "cm", "mm")


def is_print_resolution(pixel_size_nm: float | None, unit: object) -> bool:
    """Whether a pixel size [nm] read in ``unit`` is a print resolution (`PRINT_RESOLUTION_NM`):
    image editors, Office and ImageJ save a dpi in inch or cm, which no microscope uses."""
    return (pixel_size_nm is not None and pixel_size_nm >= PRINT_RESOLUTION_NM
            and str(unit).strip().lower() in _PRINT_UNITS)


def length_nm_or_none(scale: object, unit: object, notes: list[str], what: str) -> float | None:
    """A calibration length [nm], or None (with a note) if unusable."""
    try:
        value = to_nm(float(scale), str(unit) if unit is not None else "")
    except (TypeError, ValueError) as err:
        # a reciprocal unit's note is a sentence of its own (no nested brackets)
        notes.append(f"{what}: no usable pixel size: {err}" if RECIPROCAL_NOTE in str(err) else
                     f"{what}: no usable pixel size ({err})")
        return None
    if not (np.isfinite(value) and value > 0):
        kind = "non-positive" if np.isfinite(value) else "non-finite"
        notes.append(f"{what}: ignored {kind} pixel size {scale} {unit}")
        return None
    return value


_ANGLES = {"°", "deg", "degree", "degrees", "rad", "radian", "radians", "mrad", "urad"}


def stack_axis_warning(name: object, unit: object) -> str | None:
    """Where a stack's third (frame) axis is calibrated as a length (a z or focal series) or
    an angle (a tilt series) rather than a time, a warning that its frames are analysed as a
    time series all the same; else None (a time, no unit: nothing is guessed).

    Examples
    --------
    >>> print(stack_axis_warning("tilt", "°"))  # doctest: +ELLIPSIS
    the stack's third axis is tilt, not time (axis 'tilt' in °: a tilt series?): ...
    >>> stack_axis_warning("time", "ms") is None
    True
    """
    text = "" if unit is None else unicodedata.normalize("NFC", str(unit)).strip()
    if not text:
        return None
    if text.lower().replace("µ", "u").replace("μ", "u") in _ANGLES:
        kind = "tilt"
    else:
        try:
            to_nm(1.0, text)
        except ValueError:
            return None
        kind = "z"
    return not_time_warning(kind, f"axis {str(name)!r} in {text}")


#: How `not_time_warning` begins.
NOT_TIME_NOTE = "the stack's third axis is"


def not_time_warning(kind: str, why: str) -> str:
    """The warning that a stack's frame axis is ``kind`` ("z" or "tilt"), as ``why`` (the
    metadata that says so) shows, not time."""
    series = "a tilt series" if kind == "tilt" else "a z or focal series"
    return (f"{NOT_TIME_NOTE} {kind}, not time ({why}: {series}?): its frames were analysed "
            "as a time series, so velocities and trajectories are meaningless unless it "
            "really is one")


def seconds_or_none(scale: object, unit: object) -> float | None:
    """A frame interval [s] from a metadata scale and unit, or None if unusable."""
    try:
        value = to_seconds(float(scale), str(unit) if unit is not None else "")
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def square_pixel_size(px_x: float | None, px_y: float | None, warnings: list[str]) -> float | None:
    """One pixel size from x and y; a calibration warning if they differ by more than 1 %
    (distances along y then come out scaled by y/x)."""
    if px_x is None or px_y is None:
        return px_x if px_x is not None else px_y
    if abs(px_x - px_y) > 0.01 * px_x:
        warnings.append(f"{NON_SQUARE_NOTE}: x {px_x:.6g} nm, y {px_y:.6g} nm; using x: positions, "
                        "velocities and strain along y are off by that ratio; resample the movie "
                        "to square pixels first")
    return px_x
