"""Pixel size from (003) fringes on synthetic fringe images with known pixel size."""

from __future__ import annotations

import numpy as np
import pytest

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.infer.calibration import resolve_calibration
from dislotrack.infer.fringes import (
    MIN_COVERAGE,
    NoFringePeakError,
    estimate_pixel_size_from_fringes,
    fringe_coverage,
    fringe_period_px,
    pixel_size_from_fringes_or_none,
    power_spectrum,
)

TOL = 0.02  # the contract: within 2 %


def fringes(
    shape: tuple[int, int],
    pixel_size: float,
    angle_deg: float,
    rng: np.random.Generator,
    *,
    noise: float = 1.0,
    second_amplitude: float = 0.4,
    second_d_nm: float = 0.24,
) -> np.ndarray:
    """(003) cosine fringes, a weaker 0.24 nm periodicity at another angle, Gaussian noise."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)

    def wave(d_nm: float, deg: float) -> np.ndarray:
        k = pixel_size / d_nm  # [cycles/px]
        th = np.radians(deg)
        phase = rng.uniform(0, 2 * np.pi)
        return np.cos(2 * np.pi * k * (np.cos(th) * x - np.sin(th) * y) + phase)

    img = wave(D003_LINIO2_NM, angle_deg) + second_amplitude * wave(second_d_nm, angle_deg + 57)
    return img + noise * rng.normal(size=shape)


@pytest.mark.parametrize(
    ("pixel_size", "angle_deg", "shape"),
    [
        (0.1, 0.0, (256, 256)),  # canonical 0.1 nm/px, fringes along x
        (0.1, 33.0, (256, 256)),
        (0.0473, 117.0, (200, 300)),  # 10 px period, non-square image
        (0.15, 71.0, (256, 256)),  # 3.2 px period; the 0.24 nm wave aliases
        (0.0127, 12.0, (512, 512)),  # 37 px period (the MoS2 DM3's pixel size)
        (0.0321, 149.0, (384, 384)),
    ],
)
def test_recovers_pixel_size_within_2_percent(pixel_size, angle_deg, shape):
    rng = np.random.default_rng(11)
    img = fringes(shape, pixel_size, angle_deg, rng)
    est, prominence = estimate_pixel_size_from_fringes(img)
    assert est == pytest.approx(pixel_size, rel=TOL)
    assert prominence > 50


def test_angle_and_period_are_reported():
    rng = np.random.default_rng(12)
    period, angle, _ = fringe_period_px(fringes((256, 256), 0.0473, 33.0, rng))
    assert period == pytest.approx(10.0, rel=0.005)
    assert angle == pytest.approx(33.0, abs=0.5)


def test_noise_free_and_very_noisy():
    rng = np.random.default_rng(13)
    clean = fringes((256, 256), 0.08, 20.0, rng, noise=0.0)
    noisy = fringes((256, 256), 0.08, 20.0, rng, noise=4.0)  # SNR per pixel well below 1
    assert estimate_pixel_size_from_fringes(clean)[0] == pytest.approx(0.08, rel=0.002)
    assert estimate_pixel_size_from_fringes(noisy)[0] == pytest.approx(0.08, rel=TOL)


def test_lowest_order_wins_over_a_stronger_higher_order_reflection():
    # the 0.24 nm reflection has twice the amplitude (four times the power) of (003)
    rng = np.random.default_rng(14)
    img = fringes((256, 256), 0.06, 50.0, rng, second_amplitude=2.0)
    assert estimate_pixel_size_from_fringes(img)[0] == pytest.approx(0.06, rel=TOL)


def test_other_d_spacing():
    rng = np.random.default_rng(15)
    img = fringes((256, 256), 0.05, 10.0, rng)
    est, _ = estimate_pixel_size_from_fringes(img, d_spacing_nm=0.5)
    # the image's fringes are 0.473 nm; claiming 0.5 nm scales the answer
    assert est == pytest.approx(0.05 * 0.5 / D003_LINIO2_NM, rel=TOL)


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_pure_noise_raises(size):
    rng = np.random.default_rng(16)
    img = rng.normal(size=(size, size))
    with pytest.raises(NoFringePeakError, match="stands out of the noise"):
        estimate_pixel_size_from_fringes(img)
    assert pixel_size_from_fringes_or_none(img) is None


def test_period_outside_search_range_raises():
    rng = np.random.default_rng(17)
    img = fringes((256, 256), 0.0473, 30.0, rng)  # 10 px period
    with pytest.raises(NoFringePeakError):
        estimate_pixel_size_from_fringes(img, search_px=(12.0, 40.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        estimate_pixel_size_from_fringes(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="search_px"):
        estimate_pixel_size_from_fringes(np.zeros((64, 64)), search_px=(10.0, 5.0))
    with pytest.raises(ValueError, match="d_spacing_nm"):
        estimate_pixel_size_from_fringes(np.zeros((64, 64)), d_spacing_nm=-1.0)


def test_plugs_into_resolve_calibration():
    rng = np.random.default_rng(18)
    img = fringes((256, 256), 0.09, 75.0, rng)
    cal = resolve_calibration(None, estimate=lambda: pixel_size_from_fringes_or_none(img))
    assert cal.pixel_size_source == "estimated"
    assert cal.pixel_size_nm == pytest.approx(0.09, rel=TOL)


def test_power_spectrum_sums_frames_and_refines_peaks_below_one_bin() -> None:
    """Two noisy frames of one oblique wave: the summed spectrum's most prominent peak
    (one of the +-k pair) is refined to the true (kx, ky) in image axes, far below
    one Fourier bin (1/128 cycles/px), and both peaks of the pair are found."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:128, :128].astype(float)
    k = np.array([0.1234, -0.0567])  # (kx, ky) [cycles/px], y down
    frames = [np.cos(2 * np.pi * (k[0] * x + k[1] * y) + rng.uniform(0, 6)) + rng.normal(size=x.shape)
              for _ in range(2)]
    spec = power_spectrum(frames, max_size=128)
    peaks = spec.peaks(20.0)
    assert len(peaks) == 2
    found = np.array([spec.refine(p) for p in peaks])
    err = np.min([np.abs(found - s * k).max(axis=1) for s in (1, -1)], axis=0)
    assert err.max() < 0.1 / 128
    assert len(spec.peaks(20.0, (0.2, 0.5))) == 0  # the wave is at 0.136 cycles/px


def test_a_periodicity_confined_to_a_band_is_not_taken_for_lattice_fringes() -> None:
    """Burned-in text or a scale bar can be periodic; lattice fringes fill the field."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[:256, :256].astype(float)
    stripes = np.cos(2 * np.pi * x / 9.0)
    full = stripes + rng.normal(size=x.shape)
    band = np.where(y > 220, 5 * stripes, 0.0) + rng.normal(size=x.shape)  # a 14 % strip
    period, angle, _ = fringe_period_px(band)
    assert period == pytest.approx(9.0, rel=0.02)
    assert fringe_coverage(band, period, angle) < MIN_COVERAGE
    assert fringe_coverage(full, *fringe_period_px(full)[:2]) > 0.8
    with pytest.raises(NoFringePeakError, match="covers only"):
        estimate_pixel_size_from_fringes(band)
    assert estimate_pixel_size_from_fringes(full)[0] == pytest.approx(D003_LINIO2_NM / 9.0, rel=0.02)
