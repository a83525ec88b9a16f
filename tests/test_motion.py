"""Glide / climb decomposition and velocity fits on hand-made tracks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dislotrack.data_gen.conventions import b_hat_from_h
from dislotrack.infer.motion import track_motion, track_velocities

PIXEL_NM = 0.1


def _track(particle, frames, start_px, velocity_px, h, *, rng=None, noise_px=0.0, h_noise=0.0):
    """One track moving at ``velocity_px`` (x, y) [px/frame] with noisy positions and h."""
    frames = np.asarray(list(frames))
    xy = np.asarray(start_px) + np.outer(frames - frames[0], velocity_px)
    angle = np.arctan2(h[1], h[0]) + (rng.normal(scale=h_noise, size=len(frames)) if rng else 0)
    if rng is not None:
        xy = xy + rng.normal(scale=noise_px, size=xy.shape)
    return pd.DataFrame(
        {
            "particle": particle,
            "frame": frames,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "hx": np.cos(angle),
            "hy": np.sin(angle),
        }
    )


@pytest.mark.parametrize(
    ("velocity_px", "glide_nm", "climb_nm"),
    [
        ((1.0, 0.0), 0.1, 0.0),  # +x is along b_hat = (1, 0): positive glide
        ((-1.0, 0.0), -0.1, 0.0),
        ((0.0, 1.0), 0.0, 0.1),  # +y is along h: towards the half-plane, positive climb
        ((0.0, -1.0), 0.0, -0.1),
    ],
)
def test_glide_and_climb_signs_for_h_pointing_down(velocity_px, glide_nm, climb_nm):
    np.testing.assert_allclose(b_hat_from_h(np.array([0.0, 1.0])), [1.0, 0.0], atol=0)
    moved = track_motion(_track(0, [0, 1], (5.0, 5.0), velocity_px, (0.0, 1.0)), pixel_size_nm=0.1)
    assert moved["glide_nm"].tolist() == pytest.approx([0.0, glide_nm])
    assert moved["climb_nm"].tolist() == pytest.approx([0.0, climb_nm])


@pytest.mark.parametrize(
    ("velocity_px", "glide_nm", "climb_nm"),
    [
        ((0.0, -1.0), 0.1, 0.0),  # up the screen is b_hat = (hy, -hx) = (0, -1): positive glide
        ((0.0, 1.0), -0.1, 0.0),
        ((1.0, 0.0), 0.0, 0.1),  # +x is along h: positive climb
        ((-1.0, 0.0), 0.0, -0.1),
    ],
)
def test_glide_and_climb_signs_for_h_pointing_right(velocity_px, glide_nm, climb_nm):
    np.testing.assert_allclose(b_hat_from_h(np.array([1.0, 0.0])), [0.0, -1.0], atol=0)
    moved = track_motion(_track(0, [0, 1], (5.0, 5.0), velocity_px, (1.0, 0.0)), pixel_size_nm=0.1)
    assert moved["glide_nm"].tolist() == pytest.approx([0.0, glide_nm])
    assert moved["climb_nm"].tolist() == pytest.approx([0.0, climb_nm])


def test_displacement_is_cumulative_per_track_and_uses_corrected_positions():
    a = _track(3, range(2, 6), (10.0, 10.0), (0.0, 2.0), (0.0, 1.0))
    b = _track(1, range(0, 3), (50.0, 50.0), (2.0, 0.0), (0.0, 1.0))
    tracks = pd.concat([a, b]).sample(frac=1.0, random_state=0)  # shuffled rows
    tracks["x_corr"] = tracks["x"] - 1.0 * tracks["frame"]  # drift of +1 px/frame in x
    tracks["y_corr"] = tracks["y"]
    moved = track_motion(tracks, pixel_size_nm=PIXEL_NM, frame_interval_s=2.0)
    assert moved["particle"].tolist() == [1, 1, 1, 3, 3, 3, 3]
    assert moved["t_s"].tolist() == [0.0, 2.0, 4.0, 4.0, 6.0, 8.0, 10.0]
    # Track 1: raw +2 px/frame in x, drift +1: 0.1 nm of glide per frame.
    assert moved["glide_nm"].iloc[:3].tolist() == pytest.approx([0.0, 0.1, 0.2])
    # Track 3: +2 px/frame in y is pure climb; the x drift appears as negative glide.
    assert moved["climb_nm"].iloc[3:].tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert moved["glide_nm"].iloc[3:].tolist() == pytest.approx([0.0, -0.1, -0.2, -0.3])


def test_velocity_fit_recovers_paper_speeds_on_noisy_tracks():
    rng = np.random.default_rng(21)
    interval, glide_true, climb_true, noise_nm = 1.0, 0.38, -0.18, 0.1
    pieces = []
    for particle, angle in enumerate(np.deg2rad([90.0, 20.0, -75.0, 160.0])):
        h = np.array([np.cos(angle), np.sin(angle)])
        v_nm = glide_true * b_hat_from_h(h) + climb_true * h  # [nm/s]
        v_px = v_nm * interval / PIXEL_NM
        pieces.append(
            _track(particle, range(40), (100.0, 100.0), v_px, h,
                   rng=rng, noise_px=noise_nm / PIXEL_NM, h_noise=np.deg2rad(8.0))
        )
    moved = track_motion(pd.concat(pieces), pixel_size_nm=PIXEL_NM, frame_interval_s=interval)
    fits = track_velocities(moved, frame_interval_s=interval)
    # Slope error with 40 points 1 s apart and 0.1 nm noise: 0.0014 nm/s; the mean h is
    # known to 8 deg / sqrt(40) = 0.022 rad, which mixes 0.022 * 0.38 nm/s of glide into
    # climb and 0.022 * 0.18 nm/s of climb into glide.
    slope_se = noise_nm / np.sqrt(np.sum((np.arange(40) - 19.5) ** 2))
    theta_se = np.deg2rad(8.0) / np.sqrt(40)
    cases = (("glide", glide_true, climb_true), ("climb", climb_true, glide_true))
    for column, truth, other in cases:
        expected_se = np.hypot(slope_se, other * theta_se)
        assert np.abs(fits[f"{column}_velocity_nm_s"] - truth).max() < 3 * expected_se
        assert fits[f"{column}_velocity_se_nm_s"].between(0.5 * expected_se, 2 * expected_se).all()
    assert fits.attrs["velocity_unit"] == "nm/s"
    assert fits["n_frames"].tolist() == [40] * 4
    assert fits["last_frame"].tolist() == [39] * 4


def test_without_frame_interval_time_is_the_frame_index():
    track = _track(0, range(0, 10, 2), (0.0, 0.0), (0.5, 0.0), (0.0, 1.0))  # every other frame
    moved = track_motion(track, pixel_size_nm=PIXEL_NM)
    assert moved["t_s"].isna().all()
    fits = track_velocities(moved)
    assert fits.attrs["velocity_unit"] == "nm/frame"
    assert fits.loc[0, "glide_velocity_nm_s"] == pytest.approx(0.05)  # 0.1 nm per 2 frames
    assert fits.loc[0, "climb_velocity_nm_s"] == pytest.approx(0.0, abs=1e-12)
    assert fits.loc[0, "climb_velocity_se_nm_s"] == pytest.approx(0.0, abs=1e-12)


def test_short_tracks_have_undefined_errors():
    two = _track(0, [4, 5], (0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    one = _track(1, [7], (9.0, 9.0), (1.0, 0.0), (0.0, 1.0))
    fits = track_velocities(track_motion(pd.concat([two, one]), pixel_size_nm=PIXEL_NM))
    assert fits.loc[0, "glide_velocity_nm_s"] == pytest.approx(0.1)
    assert np.isnan(fits.loc[0, "glide_velocity_se_nm_s"])
    assert fits.loc[1, ["glide_velocity_nm_s", "climb_velocity_se_nm_s"]].isna().all()


def test_track_velocities_requires_motion_columns():
    with pytest.raises(ValueError, match="track_motion"):
        track_velocities(_track(0, [0, 1], (0.0, 0.0), (1.0, 0.0), (0.0, 1.0)))


# The eight views of the square: (matrix acting on (x, y), is it a mirror?)
_VIEWS = [(np.array(m, float), mirror) for m, mirror in [
    ([[1, 0], [0, 1]], False), ([[0, 1], [-1, 0]], False), ([[-1, 0], [0, -1]], False),
    ([[0, -1], [1, 0]], False), ([[-1, 0], [0, 1]], True), ([[1, 0], [0, -1]], True),
    ([[0, 1], [1, 0]], True), ([[0, -1], [-1, 0]], True)]]


@pytest.mark.parametrize("matrix, mirror", _VIEWS)
def test_a_mirror_turns_glide_s_sign_and_keeps_climb_rotations_keep_both(matrix, mirror):
    rng = np.random.default_rng(3)
    track = _track(0, range(12), (50.0, 60.0), (1.0, 0.5), (0.6, 0.8), rng=rng, noise_px=0.2,
                   h_noise=0.05)
    # The flipped or turned movie (about the centre of a 128 px frame): positions and h
    # move with the image, through the whole decomposition and fit.
    centre = np.array([63.5, 63.5])
    view = track.copy()
    view[["x", "y"]] = (track[["x", "y"]].to_numpy() - centre) @ matrix.T + centre
    view[["hx", "hy"]] = track[["hx", "hy"]].to_numpy() @ matrix.T
    seen, original = (track_velocities(track_motion(t, pixel_size_nm=PIXEL_NM)).iloc[0]
                      for t in (view, track))
    assert abs(original["glide_velocity_nm_s"]) > 0.02 and abs(original["climb_velocity_nm_s"]) > 0.02
    assert seen["climb_velocity_nm_s"] == pytest.approx(original["climb_velocity_nm_s"], abs=1e-12)
    assert seen["glide_velocity_nm_s"] == pytest.approx(
        -original["glide_velocity_nm_s"] if mirror else original["glide_velocity_nm_s"], abs=1e-12)


def test_a_movie_with_dropped_frames_is_timed_by_its_acquisition_clock():
    # 1 s per frame, but frames were dropped after frame 4 (a 5 s step): a core gliding
    # at 0.2 nm/s moves 1 nm in that step. On the clock its velocity is 0.2 nm/s; on
    # frame x interval it would read 0.29 nm/s.
    from dislotrack.infer.tracking import track_detections

    clock = np.r_[np.arange(5.0), 8.0 + np.arange(5.0)]  # 0..4, then 8..12 s
    x = 50.0 + 2.0 * clock  # 0.2 nm/s at 0.1 nm/px, along b_hat of h = (0, -1): -x
    det = pd.DataFrame({"frame": np.arange(10), "x": x, "y": 40.0, "score": 0.9, "hx": 0.0, "hy": -1.0})
    out = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=10,
                           image_shape=(100, 200), min_length=3, frame_times_s=clock)
    assert out.track_summary["glide_velocity_nm_s"].iloc[0] == pytest.approx(-0.2)
    assert out.tracks["t_s"].tolist() == clock.tolist()
    assert out.counts["t_s"].tolist() == clock.tolist()
    even = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=10,
                            image_shape=(100, 200), min_length=3)
    assert even.track_summary["glide_velocity_nm_s"].iloc[0] == pytest.approx(-0.29, abs=0.01)
    for bad in (clock[:-1], clock[::-1], clock + 1.0):  # a time per frame, increasing, from 0
        with pytest.raises(ValueError, match="frame_times_s must hold one increasing time"):
            track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=10,
                             image_shape=(100, 200), min_length=3, frame_times_s=bad)


def test_a_track_keeps_its_identity_across_a_long_clock_step():
    # A core gliding at the seed's 0.38 nm/s across a 10 s pause in a 1 s movie moves
    # 3.8 nm in one step, beyond the 2 nm/s x 1 s search range: gap closing moves it on
    # by the time elapsed, so it stays one track (no false annihilation + nucleation).
    from dislotrack.infer.tracking import track_detections

    clock = np.r_[np.arange(20.0), 29.0 + np.arange(20.0)]
    x = 300.0 - 0.38 * clock / 0.1 + np.random.default_rng(0).normal(0, 0.3, 40)
    det = pd.DataFrame({"frame": np.arange(40), "x": x, "y": 100.0, "score": 0.9, "hx": 0.0, "hy": -1.0})
    out = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=40,
                           image_shape=(200, 600), frame_times_s=clock)
    assert len(out.track_summary) == 1 and out.events.empty
    assert out.track_summary["glide_velocity_nm_s"].iloc[0] == pytest.approx(0.38, abs=0.005)


def test_a_slow_track_across_a_pause_moves_by_its_clock_time():
    # 0.03 nm/s for 28 s on the clock (0.84 nm travelled) but only 9 frames: on frame x
    # median interval it would travel 0.27 nm, under MIN_TRAVEL_NM, and not count as moving.
    from dislotrack.infer.motion import MIN_TRAVEL_NM, moving_tracks
    from dislotrack.infer.tracking import track_detections

    clock = np.r_[np.arange(5.0), 24.0 + np.arange(5.0)]
    x = 50.0 - 0.03 * clock / 0.1 + np.random.default_rng(0).normal(0, 0.05, 10)
    det = pd.DataFrame({"frame": np.arange(10), "x": x, "y": 40.0, "score": 0.9, "hx": 0.0, "hy": -1.0})
    s = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=10,
                         image_shape=(100, 200), min_length=3, frame_times_s=clock).track_summary
    assert 0.03 * 9 < MIN_TRAVEL_NM < 0.03 * 28
    assert moving_tracks(s, "glide", 1.0)[0].empty  # frames x interval: too short a way
    assert moving_tracks(s, "glide", 1.0, clock)[0].index.tolist() == [0]


def test_clock_times_need_an_interval_and_take_frame_numbers_as_floats():
    from dislotrack.infer.tracking import track_detections

    clock = np.r_[np.arange(5.0), 8.0 + np.arange(5.0)]
    det = pd.DataFrame({"frame": np.arange(10.0), "x": 50.0 + 2.0 * clock, "y": 40.0, "score": 0.9,
                        "hx": 0.0, "hy": -1.0})
    out = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=10,
                           image_shape=(100, 200), min_length=3, frame_times_s=clock)
    assert out.track_summary["glide_velocity_nm_s"].iloc[0] == pytest.approx(-0.2)
    # Without an interval velocities are per frame: a clock in seconds cannot time them.
    with pytest.raises(ValueError, match="frame_times_s needs frame_interval_s"):
        track_detections(det, pixel_size_nm=0.1, frame_interval_s=None, n_frames=10,
                         image_shape=(100, 200), min_length=3, frame_times_s=clock)
