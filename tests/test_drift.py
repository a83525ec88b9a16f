"""Drift measurement on synthetic drifting image sequences with known shifts."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from dislotrack.infer.drift import apply_drift, measure_drift

SIZE = 128
MARGIN = 60


def _movie(scene, shifts, noise, rng, shape=(SIZE, SIZE)):
    """Crops of ``scene`` whose content is moved by ``shifts`` (rows, cols) [px], exactly.

    A generator, so `measure_drift` sees the movie one frame at a time.
    """
    spectrum = np.fft.fft2(scene)
    for shift in shifts:
        moved = np.fft.ifft2(ndimage.fourier_shift(spectrum, shift)).real
        crop = moved[MARGIN : MARGIN + shape[0], MARGIN : MARGIN + shape[1]]
        yield crop + noise * rng.normal(size=crop.shape)


def _texture(rng, size=SIZE + 2 * MARGIN + 20):
    scene = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2.0)
    return scene / scene.std()


def _smooth_drift(n_frames):
    """(rows, cols) drift [px]: steady drift with a gentle wobble and acceleration."""
    t = np.arange(n_frames)
    return np.c_[0.37 * t + 0.5 * np.sin(t / 3), 0.83 * t + 0.02 * t**2]


def _recovered(drift: pd.DataFrame) -> np.ndarray:
    return drift[["dy", "dx"]].to_numpy()


def test_frame_zero_has_zero_drift_and_frames_are_numbered():
    rng = np.random.default_rng(3)
    drift = measure_drift(_movie(_texture(rng), _smooth_drift(4), 0.1, rng))
    assert list(drift.columns) == ["frame", "dx", "dy"]
    assert drift["frame"].tolist() == [0, 1, 2, 3]
    assert drift.loc[0, ["dx", "dy"]].tolist() == [0.0, 0.0]


def test_sign_convention_content_moving_right_and_up():
    # Content moves +0.6 px in x and -0.4 px in y (up on screen): dx > 0, dy < 0.
    rng = np.random.default_rng(4)
    drift = measure_drift(_movie(_texture(rng), [(0.0, 0.0), (-0.4, 0.6)], 0.0, rng))
    assert drift.loc[1, "dx"] == pytest.approx(0.6, abs=0.02)
    assert drift.loc[1, "dy"] == pytest.approx(-0.4, abs=0.02)


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (97, 131)])
def test_recovers_subpixel_drift_of_noisy_texture(shape):
    rng = np.random.default_rng(5)
    truth = _smooth_drift(30)
    drift = measure_drift(_movie(_texture(rng), truth, 0.3, rng, shape))
    assert np.abs(_recovered(drift) - truth).max() < 0.1


def test_follows_lattice_drift_over_many_periods_despite_a_moving_defect():
    # A perfect lattice (periods 2.6-4.7 px) drifts 25 px in total, i.e. several
    # periods, while a defect-like blob moves on its own by 1 px per frame.
    rng = np.random.default_rng(6)
    n = 30
    truth = _smooth_drift(n)
    size = SIZE + 2 * MARGIN + 20
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    lattice = np.cos(2 * np.pi * yy / 4.73) + 0.6 * np.cos(2 * np.pi * (xx / 2.88 + yy / 5.76))
    frames = []
    for t, frame in enumerate(_movie(lattice, truth, 0.5, rng)):
        blob = np.exp(-((xx[:SIZE, :SIZE] - 40 - t) ** 2 + (yy[:SIZE, :SIZE] - 60) ** 2) / 18)
        frames.append(frame + 2 * blob)
    drift = measure_drift(iter(frames))
    assert np.abs(_recovered(drift) - truth).max() < 0.1


def test_single_set_of_fringes_fixes_only_the_drift_across_them(caplog):
    # One fringe family (period 5 px, normal at 30 deg): drift along the fringes is
    # invisible. The part across them is measured; along them nothing is invented.
    rng = np.random.default_rng(9)
    size = SIZE + 2 * MARGIN + 20
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    normal = np.array([np.sin(np.pi / 6), np.cos(np.pi / 6)])  # (rows, cols)
    fringes = np.cos(2 * np.pi * (normal[0] * yy + normal[1] * xx) / 5.0)
    t = np.arange(20)
    truth = np.c_[0.3 * t, 0.4 * t]  # (rows, cols) [px]
    with caplog.at_level(logging.WARNING, logger="dislotrack.infer.drift"):
        drift = measure_drift(_movie(fringes, truth, 0.5, rng))
    error = _recovered(drift) - truth
    along = np.array([normal[1], -normal[0]])
    assert np.abs(error @ normal).max() < 0.1
    assert np.abs(_recovered(drift) @ along).max() < 0.1  # none reported along them
    assert any("fringes" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_steady_drift_along_fringes_is_no_step_change(caplog, seed):
    # One strong fringe family plus a faint short-period one along it (a ridge, like
    # (003) fringes over weak in-layer ones): the ridge's maximum falls anywhere along
    # it, which is not a change of the drift step and must not be reported as one.
    size = SIZE + 2 * MARGIN + 20
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    normal = np.array([np.sin(np.pi / 6), np.cos(np.pi / 6)])  # (rows, cols)
    along = np.array([normal[1], -normal[0]])
    scene = (np.cos(2 * np.pi * (normal[0] * yy + normal[1] * xx) / 5.0)
             + 0.05 * np.cos(2 * np.pi * (along[0] * yy + along[1] * xx) / 2.45))
    truth = np.c_[0.3 * np.arange(20), 0.4 * np.arange(20)]
    with caplog.at_level(logging.WARNING, logger="dislotrack.infer.drift"):
        drift = measure_drift(_movie(scene, truth, 0.5, np.random.default_rng(seed)))
    assert np.abs((_recovered(drift) - truth) @ normal).max() < 0.1
    assert any("cannot be seen" in record.getMessage() for record in caplog.records)
    assert not any("drift step between" in record.getMessage() for record in caplog.records)


def test_warns_when_the_drift_jumps_beyond_the_bound(caplog):
    rng = np.random.default_rng(7)
    jump = [(0.0, 0.0), (0.2, 0.3), (0.4, 3.6)]  # second step changes by 3.1 px
    with caplog.at_level(logging.WARNING, logger="dislotrack.infer.drift"):
        measure_drift(_movie(_texture(rng), jump, 0.1, rng), max_step_px=1.0)
    (msg,) = [r.getMessage() for r in caplog.records if "drift step between frames" in r.getMessage()]
    assert "max_step_px" not in msg  # no setting a user of infer cannot change
    assert "in 1 frame(s) (frames 2; largest change " in msg  # one line naming the frame


def test_unbounded_search_follows_a_jump_in_a_texture():
    rng = np.random.default_rng(8)
    jump = [(0.0, 0.0), (0.2, 0.3), (0.4, 3.6)]
    drift = measure_drift(_movie(_texture(rng), jump, 0.1, rng), max_step_px=None)
    assert np.abs(_recovered(drift) - np.array(jump)).max() < 0.1


def test_apply_drift_restores_frame_zero_positions():
    drift = pd.DataFrame({"frame": [0, 1, 2], "dx": [0.0, 1.5, 3.0], "dy": [0.0, -0.5, -1.0]})
    # A feature at (10, 20) in frame 0 appears at (x + dx, y + dy) later.
    detections = pd.DataFrame(
        {"frame": [2, 0, 1], "x": [13.0, 10.0, 11.5], "y": [19.0, 20.0, 19.5]}, index=[7, 8, 9]
    )
    corrected = apply_drift(detections, drift)
    assert corrected.index.tolist() == [7, 8, 9]
    np.testing.assert_allclose(corrected["x_corr"], 10.0)
    np.testing.assert_allclose(corrected["y_corr"], 20.0)


def test_apply_drift_rejects_frames_without_drift():
    drift = pd.DataFrame({"frame": [0, 1], "dx": [0.0, 1.0], "dy": [0.0, 0.0]})
    detections = pd.DataFrame({"frame": [0, 5], "x": [1.0, 2.0], "y": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"\[5\]"):
        apply_drift(detections, drift)


def test_rejects_empty_movie_and_mismatched_frames():
    with pytest.raises(ValueError, match="at least one frame"):
        measure_drift(iter([]))
    with pytest.raises(ValueError, match="frame 1 has shape"):
        measure_drift([np.zeros((8, 8)), np.zeros((8, 9))])


def _layered_lattice(rng, size=SIZE + 2 * MARGIN + 20):
    """Columns of a layered lattice seen along [100] at 0.1 nm/px: the spots n1 g003 + n2
    g_layer [cycles/px] of one generated STEM frame below Nyquist (periods down to 2 px,
    so correlation peaks narrower than a pixel), plus faint texture."""
    g003, g_layer = np.array([0.0185, -0.2075]), np.array([0.3896, 0.1029])  # (kx, ky)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    scene = 0.2 * _texture(rng, size)
    for n1 in range(-4, 5):
        for n2 in range(0, 3):
            kx, ky = n1 * g003 + n2 * g_layer
            if (n2 > 0 or n1 > 0) and max(abs(kx), abs(ky)) < 0.5:
                scene += np.exp(-(kx**2 + ky**2) / 0.08) * np.cos(2 * np.pi * (kx * xx + ky * yy))
    return scene


def test_a_step_at_the_bound_is_not_taken_for_its_lattice_neighbour(caplog):
    # Steady drift of 1.007 px per frame (just beyond max_step_px = 1 at the first step):
    # on the integer lags the window's edge won and the drift ran off by a lattice
    # period (2.5 px) per frame.
    rng = np.random.default_rng(11)
    shifts = [(0.57 * t, 0.83 * t) for t in range(6)]
    with caplog.at_level(logging.WARNING, logger="dislotrack.infer.drift"):
        drift = measure_drift(_movie(_layered_lattice(rng), shifts, 0.05, rng), max_step_px=1.0)
    assert np.abs(_recovered(drift) - np.array(shifts)).max() < 0.1
    # Followed within a grid step of the window: no jump to warn of.
    assert not [r for r in caplog.records if "drift step between frames" in r.getMessage()]


def test_drift_along_dominant_fringes_is_read_from_the_in_layer_spots(caplog):
    # Strong (003) fringes and faint in-layer ones: the correlation peak is a ridge
    # along the fringes, where the drift was extrapolated from the first step (0 here).
    g003, g_layer = np.array([0.0, 0.2114]), np.array([0.4, 0.1057])  # (kx, ky) cycles/px
    size = SIZE + 2 * MARGIN + 20
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    rng = np.random.default_rng(12)
    scene = 3 * np.cos(2 * np.pi * (g003[0] * xx + g003[1] * yy)) + 0.05 * _texture(rng, size)
    for g in (g_layer, g_layer - g003, g_layer - 2 * g003):
        scene += 0.12 * np.cos(2 * np.pi * (g[0] * xx + g[1] * yy))
    shifts = [(0.05 * t, 0.3 * t + 0.02 * t**2) for t in range(8)]  # mostly along the fringes
    plain = measure_drift(_movie(scene, shifts, 0.05, rng), max_step_px=1.0, warn=False)
    assert np.abs(_recovered(plain) - np.array(shifts))[:, 1].max() > 1.0  # the ridge
    with caplog.at_level(logging.WARNING, logger="dislotrack.infer.drift"):
        read = measure_drift(_movie(scene, shifts, 0.05, rng), max_step_px=1.0,
                             layer_reflections=np.stack([g003, g_layer]))
    assert np.abs(_recovered(read) - np.array(shifts)).max() < 0.15
    assert not [r for r in caplog.records if "cannot be seen" in r.getMessage()]
    # Counted for summary.json: every frame after the first was read from the spots.
    from dislotrack.infer.drift import READ_FROM_LAYER_SPOTS, UNSEEN_ALONG_FRINGES

    assert read.attrs[READ_FROM_LAYER_SPOTS] == 7 and read.attrs[UNSEEN_ALONG_FRINGES] == 0
    assert plain.attrs[READ_FROM_LAYER_SPOTS] == 0 and plain.attrs[UNSEEN_ALONG_FRINGES] == 7


def test_lattice_weights_keep_the_spots_off_the_003_row_below_nyquist():
    from dislotrack.infer.drift import _Grid, lattice_weights

    grid = _Grid((64, 64))
    w = lattice_weights(grid, np.array([[0.0, 0.25], [0.375, 0.0]]))  # (kx, ky)
    assert w[0, 24] == pytest.approx(1.0)  # g_layer: row 0 (ky 0), column 24 (kx 0.375)
    assert w[16, 24] == pytest.approx(1.0)  # g_layer + g003
    assert w[16, 0] < 1e-6 and w[32, 0] < 1e-6  # (003), (006): the row it ridges along
    assert w[8, 12] < 1e-6  # between spots
    with pytest.raises(ValueError, match="independent"):
        lattice_weights(grid, np.array([[0.0, 0.25], [0.0, 0.5]]))


def test_without_in_layer_spots_the_ridge_stays_unseen_not_read_from_noise():
    # layer_reflections given, but the frames show the (003) fringes only: the in-layer
    # spots hold noise, which must not be read as drift along the fringes.
    from dislotrack.infer.drift import UNSEEN_ALONG_FRINGES

    g003, g_layer = np.array([0.0, 0.2114]), np.array([0.4, 0.1057])
    size = SIZE + 2 * MARGIN + 20
    yy = np.mgrid[0:size, 0:size][0].astype(float)
    rng = np.random.default_rng(13)
    scene = 3 * np.cos(2 * np.pi * g003[1] * yy) + 0.05 * _texture(rng, size)
    shifts = [(0.05 * t, 0.3 * t) for t in range(8)]
    plain = measure_drift(_movie(scene, shifts, 0.3, np.random.default_rng(1)), warn=False)
    given = measure_drift(_movie(scene, shifts, 0.3, np.random.default_rng(1)), warn=False,
                          layer_reflections=np.stack([g003, g_layer]))
    assert plain.attrs[UNSEEN_ALONG_FRINGES] == 7
    assert given.attrs[UNSEEN_ALONG_FRINGES] == 7
    assert given.attrs["frames_along_fringes_from_layer_spots"] == 0
    np.testing.assert_allclose(_recovered(given), _recovered(plain), atol=1e-9)
