"""Where a frame shows no (003) lattice (`dislotrack.infer.lattice_edge`), the noise floor
it is judged against (`dislotrack.infer.fringe_amplitude`), and what that makes of the
cores beside it (cleanup flags, births and deaths)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dislotrack.data_gen.sample import GeneratorConfig, make_sample
from dislotrack.infer.cleanup import clean_frame
from dislotrack.infer.events import birth_death
from dislotrack.infer.fringe_amplitude import noise_rms
from dislotrack.infer.lattice_edge import fringe_snr, lattice_free_mask
from dislotrack.infer.tracking import track_detections

PS, D = 0.1, 0.473


def specimen(shape=(128, 128)) -> np.ndarray:
    """(003) fringes up to column 80 (vacuum beyond, with noise) and none in rows 100-127
    of columns 0-59 (a rock-salt domain keeps no (003) fringes)."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    fringes = np.cos(2 * np.pi * y * PS / D) * (x < 80)
    fringes[100:, :60] = 0
    return (fringes + np.random.default_rng(0).normal(0, 0.2, shape)).astype(np.float32)


def test_vacuum_and_fringe_free_regions_are_found_cores_are_not():
    mask = lattice_free_mask(specimen(), pixel_size_nm=PS, d_spacing_nm=D)
    assert mask[:, 90:].all() and not mask[:90, :70].any()
    assert mask[110:, 10:50].all()  # the rock-salt domain: no (003) fringes either
    # A generated lattice with dislocations and no vacuum: a core's own dip is no edge.
    s = make_sample(np.random.default_rng(3), GeneratorConfig(size=128, mode="hrtem", dose=(2000, 2000),
                                                              realism=0.0, rocksalt_probability=0.0))
    assert len(s.cores) >= 2
    free = lattice_free_mask(s.image, pixel_size_nm=s.meta["pixel_size"], d_spacing_nm=D)
    rows, cols = np.round(s.cores[["y", "x"]].to_numpy()).astype(int).T
    assert not free[rows, cols].any()


def fringes(shape=(128, 128)) -> np.ndarray:
    """Unit-amplitude (003) fringes along y at 0.1 nm/px."""
    y = np.arange(shape[0])[:, None] * np.ones(shape[1])
    return np.cos(2 * np.pi * y * PS / D)


def test_vacuum_is_found_at_low_dose_noise_twice_the_fringes():
    # Per-pixel noise SD twice the fringes' amplitude (a few tens of e/A^2): the whole
    # ring's noise drowns the old 90th-percentile threshold; the noise floor does not.
    x = np.arange(128)[None, :]
    frame = fringes() * (x < 64) + np.random.default_rng(1).normal(0, 2.0, (128, 128))
    mask = lattice_free_mask(frame, pixel_size_nm=PS, d_spacing_nm=D)
    assert mask[:, 80:112].all() and not mask[:, 8:56].any()
    amplitude, snr = fringe_snr(frame, pixel_size_nm=PS, d_spacing_nm=D)
    assert 0.7 < np.median(snr[:, 80:112]) < 1.3  # vacuum reads the noise: about 1
    assert np.median(snr[:, 8:56]) > 3


def test_crystal_whose_fringes_fade_tenfold_is_not_lattice_free():
    # A thickness contour or defocus gradient: contrast from 1 down to 0.1 across the frame.
    x = np.arange(128)[None, :]
    frame = fringes() * (1 - 0.9 * x / 127) + np.random.default_rng(2).normal(0, 0.2, (128, 128))
    assert not lattice_free_mask(frame, pixel_size_nm=PS, d_spacing_nm=D).any()


def test_noise_rms_is_the_band_passed_noise_and_ignores_bragg_spots():
    rng = np.random.default_rng(4)
    k = np.hypot(np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :])
    mask = np.exp(-0.5 * ((k - 0.2) / 0.02) ** 2)  # a ring band-pass
    noise = rng.normal(0, 3.0, (256, 256))
    measured = np.fft.ifft2(np.fft.fft2(noise) * mask).real.std()  # a real band-pass
    for image in (noise, noise + 5 * fringes((256, 256))):  # strong fringes on the ring
        power = np.abs(np.fft.fft2(image)) ** 2
        rms = noise_rms(power, k, radius=0.2, half_width=0.02, mask_sq=float((mask**2).sum()),
                        n_pixels=image.size)
        assert rms == pytest.approx(measured, rel=0.05)
    assert np.isnan(noise_rms(power, k, radius=2.0, half_width=0.02, mask_sq=1.0, n_pixels=1))


def test_a_core_beside_vacuum_is_at_the_specimen_edge_one_in_rock_salt_is_in_rock_salt():
    frame = specimen()
    rocksalt = np.zeros(frame.shape, bool)
    rocksalt[100:, :60] = True  # the network's mask
    cores = pd.DataFrame({"x": [40.0, 78.0, 30.0], "y": [40.0, 40.0, 110.0], "score": 0.9,
                          "hx": 0.0, "hy": 1.0})
    f = clean_frame(frame, cores, rocksalt, pixel_size_nm=PS, d_spacing_nm=D)
    assert f.cores["at_specimen_edge"].tolist() == [False, True, False]
    assert f.cores["in_rocksalt"].tolist() == [False, False, True]


def test_a_grain_holding_a_core_is_crystal_not_the_specimen_edge():
    # Two grains: (003) fringes along x left of column 80, along y right of it (90 deg
    # turned), which the one-direction map reads as lattice-free. A core deep in the
    # second grain shows it is crystal: a core beside it is not at the specimen's edge.
    y, x = np.mgrid[:128, :128]
    frame = np.where(x < 80, np.cos(2 * np.pi * y * PS / D), np.cos(2 * np.pi * x * PS / D))
    frame = (frame + np.random.default_rng(5).normal(0, 0.2, frame.shape)).astype(np.float32)
    assert lattice_free_mask(frame, pixel_size_nm=PS, d_spacing_nm=D)[:, 90:].mean() > 0.9
    cores = pd.DataFrame({"x": [82.0, 108.0], "y": [40.0, 80.0], "score": 0.9, "hx": 0.0, "hy": 1.0})
    f = clean_frame(frame, cores, np.zeros(frame.shape, bool), pixel_size_nm=PS, d_spacing_nm=D)
    assert not f.cores["at_specimen_edge"].any()
    # Alone, the core beside the second grain is at its (apparent) edge, as beside vacuum.
    f = clean_frame(frame, cores.iloc[:1], np.zeros(frame.shape, bool), pixel_size_nm=PS, d_spacing_nm=D)
    assert f.cores["at_specimen_edge"].tolist() == [True]


def test_a_weak_peak_in_vacuum_does_not_make_it_crystal():
    # infer runs the detector at half its threshold (weak peaks extend tracks) but reports
    # only cores above it: a weak peak deep in vacuum must not erase the specimen's edge.
    frame = specimen()
    cores = pd.DataFrame({"x": [78.0, 110.0], "y": [40.0, 60.0], "score": [0.9, 0.3],
                          "hx": 0.0, "hy": 1.0})
    rocksalt = np.zeros(frame.shape, bool)
    f = clean_frame(frame, cores, rocksalt, pixel_size_nm=PS, d_spacing_nm=D, report_threshold=0.45)
    assert f.cores["at_specimen_edge"].tolist() == [True, True]
    # Had it been reported, it would testify to crystal there (as a grain's core does).
    f = clean_frame(frame, cores, rocksalt, pixel_size_nm=PS, d_spacing_nm=D, report_threshold=0.2)
    assert f.cores["at_specimen_edge"].tolist() == [False, False]


def _track(particle, frames, x, edge_at=()):
    return pd.DataFrame({"particle": particle, "frame": list(frames), "x": x, "y": 50.0,
                         "score": 0.9, "hx": 0.0, "hy": 1.0,
                         "at_specimen_edge": [f in edge_at for f in frames]})


def test_a_track_ending_at_the_specimen_edge_left_one_beginning_there_nucleated():
    tracks = pd.concat([_track(0, range(5, 15), 100.0, edge_at=(14,)),  # ends at the edge
                        _track(1, range(5, 15), 150.0, edge_at=(5,)),  # begins there: the surface
                        _track(2, range(5, 15), 200.0, edge_at=(9,))])  # passes it
    fates = birth_death(tracks, pixel_size_nm=PS, n_frames=20, image_shape=(300, 300))
    assert fates[["birth", "death"]].values.tolist() == [
        ["nucleated", "left"], ["nucleated", "annihilated"], ["nucleated", "annihilated"]]
    out = track_detections(tracks.drop(columns="particle"), pixel_size_nm=PS, frame_interval_s=1.0,
                           n_frames=20, image_shape=(300, 300))
    assert sorted(out.events["kind"]) == ["annihilation", "annihilation", "nucleation", "nucleation",
                                          "nucleation"]
    with pytest.raises(ValueError, match="at_specimen_edge must be boolean"):
        track_detections(tracks.drop(columns="particle").assign(at_specimen_edge=1.0), pixel_size_nm=PS,
                         frame_interval_s=1.0, n_frames=20, image_shape=(300, 300))
