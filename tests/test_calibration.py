"""Unit conversion, calibration validation and user > file > estimated precedence."""

from __future__ import annotations

import math

import pytest

from dislotrack.infer.calibration import (
    Calibration,
    interval_from_timestamps,
    length_nm_or_none,
    parse_frame_interval,
    parse_pixel_size,
    resolve_calibration,
    to_nm,
    to_seconds,
)
from dislotrack.infer.interface import command_line


@pytest.mark.parametrize(
    ("value", "unit", "nm"),
    [
        (0.5, "nm", 0.5),
        (1.5, "Å", 0.15),
        (1.5, "\u212b", 0.15),  # ANGSTROM SIGN, distinct from LATIN CAPITAL A WITH RING
        (1.5, "A\u030a", 0.15),  # A + COMBINING RING ABOVE (decomposed Å)
        (2.0, "A", 0.2),  # microscope files mean angstrom, not ampere
        (2.0, "angstrom", 0.2),
        (0.1687, "µm", 168.7),
        (0.1687, "μm", 168.7),  # Greek mu
        (0.1687, "um", 168.7),
        (0.1687, "micron", 168.7),
        (8.17, "pm", 0.00817),
        (3.5e-11, "m", 0.035),
        (0.012, "n_m", 0.012),  # Berkeley EMD spelling
    ],
)
def test_to_nm(value, unit, nm):
    assert to_nm(value, unit) == pytest.approx(nm, rel=1e-12)


def test_values_already_in_nm_or_s_need_no_unit_registry():
    from dislotrack.infer import calibration

    calibration._ureg.cache_clear()
    assert (to_nm(0.25, " NM "), to_seconds(2.0, "sec")) == (0.25, 2.0)
    assert calibration._ureg.cache_info().currsize == 0  # ~0.5 s saved per movie
    assert to_nm(2.5, "Å") == pytest.approx(0.25)
    assert calibration._ureg.cache_info().currsize == 1


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        ("1/nm", "reciprocal"),
        ("nm^-1", "reciprocal"),
        ("s", "not a length"),
        ("px", "pixels"),
        ("pixel", "pixels"),
        ("", "no unit"),
        (None, "no unit"),
        ("parsec-ish", "unknown"),
    ],
)
def test_to_nm_rejects(unit, message):
    with pytest.raises(ValueError, match=message):
        to_nm(1.0, unit)


@pytest.mark.parametrize(
    ("value", "unit", "s"),
    [(0.5, "s", 0.5), (2, "sec", 2.0), (250, "ms", 0.25), (40, "µs", 4e-5), (40, "us", 4e-5),
     (1.5, "min", 90.0), (1, "h", 3600.0), (10, "ns", 1e-8), (3, "seconds", 3.0)],
)
def test_to_seconds(value, unit, s):
    assert to_seconds(value, unit) == pytest.approx(s, rel=1e-12)


@pytest.mark.parametrize("unit", ["nm", "Hz", "", "frame"])
def test_to_seconds_rejects(unit):
    with pytest.raises(ValueError):
        to_seconds(1.0, unit)


@pytest.mark.parametrize(("text", "nm"), [
    ("0.12", 0.12), (".05", 0.05), ("1e-1", 0.1), ("-1", -1.0),  # a bare number is in nm
    ("1.2 Å", 0.12), ("1.2A", 0.12), ("1.2 A/px", 0.12), ("0.1 nm/pixel", 0.1), ("12 pm", 0.012),
    ("0.0012um", 1.2),
])
def test_a_pixel_size_on_the_command_line_may_carry_its_unit(text, nm):
    assert parse_pixel_size(text) == pytest.approx(nm, rel=1e-12)


@pytest.mark.parametrize(("text", "message"), [
    ("abc", "must be a number"), ("nan", "must be a number"), ("1.2 px", "in pixels"),
    ("0.1 1/nm", "reciprocal"), ("1 s", "not a length"), ("0.1 nm 2", "unknown"),
])
def test_a_pixel_size_that_is_no_length_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_pixel_size(text)


@pytest.mark.parametrize(("text", "s"), [
    ("2", 2.0), ("40 ms", 0.04), ("0.5s", 0.5), ("1 min", 60.0),
    ("25 fps", 0.04), ("10 Hz", 0.1), ("2 kHz", 5e-4),  # a frame rate is inverted
])
def test_a_frame_interval_on_the_command_line_may_carry_its_unit_or_be_a_rate(text, s):
    assert parse_frame_interval(text) == pytest.approx(s, rel=1e-12)


@pytest.mark.parametrize(("text", "message"), [
    ("1 nm", "not a time"), ("0 fps", "must be positive"), ("-5 Hz", "must be positive"), ("x", "number"),
])
def test_a_frame_interval_that_is_no_time_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_frame_interval(text)


@pytest.mark.parametrize("bad", [0.0, -0.1, math.inf, math.nan])
def test_calibration_rejects_bad_pixel_size_quoting_value_and_unit(bad):
    with pytest.raises(ValueError, match=rf"{bad!r} nm/px"):
        Calibration(pixel_size_nm=bad, pixel_size_source="file")


def test_calibration_rejects_bad_interval_and_sources():
    with pytest.raises(ValueError, match="-2.0 s"):
        Calibration(frame_interval_s=-2.0, frame_interval_source="user")
    with pytest.raises(ValueError, match="source"):
        Calibration(pixel_size_nm=0.1, pixel_size_source="guess")
    with pytest.raises(ValueError, match="source"):
        Calibration(pixel_size_nm=0.1)  # a value needs a source
    with pytest.raises(ValueError, match="no pixel size"):
        Calibration(pixel_size_source="file")


def test_from_file_sets_sources_and_units():
    cal = Calibration.from_file(pixel_size_nm=0.05)
    assert (cal.pixel_size_source, cal.frame_interval_source) == ("file", None)
    assert (cal.length_unit, cal.time_unit) == ("nm", "frame")
    assert Calibration().length_unit == "px"
    assert cal.to_dict()["pixel_size_nm"] == 0.05


def _never() -> float:
    raise AssertionError("the estimate must not be called when a pixel size is known")


def test_user_beats_file_and_says_so():
    file_cal = Calibration.from_file(pixel_size_nm=0.05, frame_interval_s=1.0)
    cal = resolve_calibration(file_cal, pixel_size_nm=0.06, frame_interval_s=0.5, estimate=_never)
    assert (cal.pixel_size_nm, cal.pixel_size_source) == (0.06, "user")
    assert (cal.frame_interval_s, cal.frame_interval_source) == (0.5, "user")
    assert any("overrides the file's 0.05 nm/px" in w for w in cal.warnings)
    assert any("overrides the file's 1 s" in w for w in cal.warnings)
    assert not any("check the units" in w for w in cal.warnings)  # 1.2 and 0.5 times: plausible


def test_an_override_ten_times_off_the_file_asks_about_units():
    # Å typed as nm; ms typed as s.
    file_cal = Calibration.from_file(pixel_size_nm=0.01, frame_interval_s=0.8)
    cal = resolve_calibration(file_cal, pixel_size_nm=0.1, frame_interval_s=0.0008, estimate=_never)
    (px,) = [w for w in cal.warnings if "pixel size" in w]
    assert "10 times it: check the units (nm/px)" in px
    (dt,) = [w for w in cal.warnings if "frame interval" in w]
    assert "0.001 times it: check the units (s)" in dt


def test_file_beats_estimate():
    cal = resolve_calibration(Calibration.from_file(pixel_size_nm=0.05), estimate=_never)
    assert (cal.pixel_size_nm, cal.pixel_size_source) == (0.05, "file")
    assert (cal.frame_interval_s, cal.frame_interval_source) == (None, None)
    note = "no frame interval: velocities in per-frame units (pass frame_interval_s=S for nm/s)"
    assert note in cal.warnings
    with command_line():  # the same note, on the command line
        cal = resolve_calibration(Calibration.from_file(pixel_size_nm=0.05), estimate=_never)
    assert note.replace("frame_interval_s=S", "--frame-interval S") in cal.warnings


def test_estimate_used_only_when_needed_and_reported():
    calls = []

    def estimate() -> float:
        calls.append(1)
        return 0.0473

    cal = resolve_calibration(None, frame_interval_s=1.0, estimate=estimate)
    assert calls == [1]
    assert (cal.pixel_size_nm, cal.pixel_size_source) == (0.0473, "estimated")
    assert any("estimated from (003) fringes" in w for w in cal.warnings)
    assert cal.frame_interval_source == "user"
    # What the estimate assumed is named, so a user of another material sees it is wrong.
    other = resolve_calibration(None, estimate=estimate, estimate_basis="0.2 nm (104) fringes")
    assert any("estimated from 0.2 nm (104) fringes, not read from the file: right only if the "
               "material shows those fringes" in w for w in other.warnings)


def test_failed_estimate_leaves_pixels():
    cal = resolve_calibration(Calibration(), estimate=lambda: None)
    assert cal.pixel_size_nm is None and cal.pixel_size_source is None
    assert any("no pixel size" in w for w in cal.warnings)
    assert cal.length_unit == "px" and cal.time_unit == "frame"


def test_file_warnings_are_kept():
    file_cal = Calibration.from_file(frame_interval_s=0.5, warnings=["playback rate"])
    assert "playback rate" in resolve_calibration(file_cal).warnings


@pytest.mark.parametrize("bad", [0, -1.0, math.nan])
def test_resolve_rejects_bad_user_values(bad):
    with pytest.raises(ValueError, match="nm/px"):
        resolve_calibration(None, pixel_size_nm=bad)
    with pytest.raises(ValueError, match=" s$"):
        resolve_calibration(None, frame_interval_s=bad)
    with pytest.raises(ValueError, match="estimated pixel size"):
        resolve_calibration(None, estimate=lambda: bad)


def test_interval_from_timestamps():
    assert interval_from_timestamps([10.0, 10.5, 11.0, 11.6, 12.0]) == pytest.approx(0.5)
    assert interval_from_timestamps([3.0]) is None
    assert interval_from_timestamps([1.0, 1.0, 2.0]) is None  # not increasing
    # whole-second clock: 31 frames over 15 s -> 0.5 s; too short a span -> None
    assert interval_from_timestamps([100 + i // 2 for i in range(31)], resolution_s=1) == 0.5
    assert interval_from_timestamps([0, 0, 0, 1, 1], resolution_s=1) is None


def test_a_frame_interval_given_later_follows_the_same_rule():
    # `AnalysisResult.relink(frame_interval_s=)`: the user's value, as resolve_calibration.
    per_frame = resolve_calibration(Calibration.from_file(pixel_size_nm=0.05), estimate=_never)
    given = per_frame.with_frame_interval(0.5)
    assert (given.frame_interval_s, given.frame_interval_source) == (0.5, "user")
    assert given.pixel_size_source == "file" and given.warnings == ()
    odd = Calibration.from_file(pixel_size_nm=0.05, frame_interval_s=0.8).with_frame_interval(0.0008)
    (note,) = odd.warnings
    assert note.startswith("frame interval 0.0008 s given by the user overrides the file's 0.8 s")
    with pytest.raises(ValueError):
        per_frame.with_frame_interval(-1.0)
    # A video's playback rate, then the user's interval: the caveat goes, the override is said.
    video = Calibration.from_file(frame_interval_s=0.04, warnings=[
        "frame interval 0.04 s is the container's playback rate (25 fps), not necessarily the "
        "acquisition rate: pass frame_interval_s=S if it differs"])
    (note,) = video.with_frame_interval(0.5).warnings
    assert note.startswith("frame interval 0.5 s given by the user overrides the file's 0.04 s")
    # An override corrected again: the earlier note no longer holds.
    assert odd.with_frame_interval(0.8).warnings == ()


@pytest.mark.parametrize("unit", ["Hz", "kHz", "fps", "1/s"])
def test_a_rate_is_refused_as_a_frame_interval_saying_why(unit):
    with pytest.raises(ValueError, match=rf"^2 {unit} is a frequency \(a frame rate\), not a time: give "
                                         "the frame interval, one over the rate$"):
        to_seconds(2, unit)


@pytest.mark.parametrize(("scale", "said"), [(math.nan, "non-finite"), (math.inf, "non-finite"),
                                             (-1.0, "non-positive"), (0.0, "non-positive")])
def test_an_unusable_pixel_size_is_named_for_what_it_is(scale, said):
    notes: list[str] = []
    assert length_nm_or_none(scale, "nm", notes, "x axis") is None
    assert notes == [f"x axis: ignored {said} pixel size {scale} nm"]


def test_the_reader_notes_travel_with_the_calibration():
    file_cal = Calibration(pixel_size_nm=0.1, pixel_size_source="file", notes=("read whole",))
    assert resolve_calibration(file_cal, pixel_size_nm=0.2).notes == ("read whole",)
    assert file_cal.with_frame_interval(1.0).notes == ("read whole",)


def test_times_that_do_not_increase_name_the_frame_that_goes_back():
    from dislotrack.infer.calibration import non_increasing_warning

    assert non_increasing_warning([0.0, 1.0, 2.0]) is None
    assert non_increasing_warning([0, 1, 1, 2], ["a", "b", "c", "d"]) == (
        "the frames' acquisition times do not increase: frame 2 (c) has the time of frame 1 "
        "(frames out of order?); no frame interval")
    # One time in every frame (e.g. a sequence's start): no clock, nothing out of order.
    said = non_increasing_warning([5.0] * 4)
    assert said == "the 4 frames all carry one acquisition time; no frame interval"


def test_an_unevenly_clocked_movie_is_timed_by_its_clock_unless_an_interval_is_given():
    from pathlib import Path

    import numpy as np

    from dislotrack.infer.calibration import CLOCK_STEPS, UNEVEN_STEPS, interval_from_timestamps
    from dislotrack.infer.calibration import uneven_steps_warning as uneven
    from dislotrack.infer.movie import Movie
    from dislotrack.infer.pipeline import calibrate

    clock = np.r_[np.arange(5.0), 8.0 + np.arange(5.0)]  # frames dropped after frame 4
    dt = interval_from_timestamps(clock)
    cal = Calibration.from_file(pixel_size_nm=0.1, frame_interval_s=dt, warnings=[uneven(clock, dt)])
    frame = np.cos(2 * np.pi * np.arange(64) * 0.1 / 0.473)[:, None] * np.ones((1, 64))
    movie = Movie(Path("m.tif"), (10, 64, 64), cal, {}, lambda i: frame.astype(np.float32),
                  timestamps_s=clock)
    timed = calibrate(movie, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=0.473)
    assert timed.frame_times_s == tuple(clock)
    assert any(w.startswith(CLOCK_STEPS) for w in timed.warnings)
    assert not any(w.startswith(UNEVEN_STEPS) for w in timed.warnings)
    # The user's interval wins: one interval for every step, no clock.
    given = calibrate(movie, pixel_size_nm=None, frame_interval_s=1.0, d_spacing_nm=0.473)
    assert given.frame_times_s is None and not any(w.startswith(CLOCK_STEPS) for w in given.warnings)
    assert timed.with_frame_interval(1.0).frame_times_s is None
    # ... the same said both ways (analyze's interval, relink's): steps now one interval.
    assert [w for w in given.warnings if w.startswith(UNEVEN_STEPS)] == \
        [w for w in timed.with_frame_interval(1.0).warnings if w.startswith(UNEVEN_STEPS)] != []
    assert not any(w.startswith(CLOCK_STEPS) for w in timed.with_frame_interval(1.0).warnings)
    # An even stretch (--frames 5:10) keeps frame x interval.
    assert calibrate(movie.window(5, 10), pixel_size_nm=None, frame_interval_s=None,
                     d_spacing_nm=0.473).frame_times_s is None


@pytest.mark.parametrize("unit", ["1/nm", "nm^-1", "1/Å", "Å^-1", "1/A", "A^-1", "1/angstrom", "µm^-1"])
def test_reciprocal_units_are_named_a_diffraction_pattern_or_fft(unit):
    with pytest.raises(ValueError, match=r"is a reciprocal length: the image is a diffraction "
                                         r"pattern or FFT, not the real-space lattice image"):
        to_nm(1.0, unit)


def test_a_stack_axis_in_a_length_or_angle_is_not_time():
    from dislotrack.infer.calibration import NO_INTERVAL_NOTE, stack_axis_warning

    assert stack_axis_warning("z", "µm").startswith("the stack's third axis is z, not time (axis 'z' "
                                                    "in µm: a z or focal series?)")
    assert stack_axis_warning("tilt", "deg").startswith("the stack's third axis is tilt, not time")
    assert stack_axis_warning("t", "ms") is None and stack_axis_warning("z", "") is None
    # a z or tilt series draws no advice to pass a frame interval
    said = resolve_calibration(Calibration.from_file(warnings=[stack_axis_warning("tilt", "°")]),
                               pixel_size_nm=0.1).warnings
    assert [w for w in said if w.startswith(NO_INTERVAL_NOTE)] == [
        "no frame interval: velocities in per-frame units"]
