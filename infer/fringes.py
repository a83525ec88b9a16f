"""Estimate the pixel size from a known lattice-fringe spacing.

When a file carries no calibration, the (003) layer spacing of a layered oxide
(0.473 nm for LiNiO2) is a built-in ruler: find the fringe period in pixels and
``pixel size = d / period``. The period is found in the Hann-windowed power
spectrum. A spectral peak counts if its *prominence* (power over the median
power at the same spatial frequency, which flattens the 1/f fall-off of real
images) clears a noise threshold; among those, the lowest-frequency peak whose
excess power is at least ``rel_height`` times that of the strongest is taken as
the lowest-order fringe (window side lobes and weak higher-order reflections
fall below that). Its position is refined to a small fraction of a Fourier bin
with a zoomed (matrix) DFT around the peak and a parabolic fit to the log power.
Lattice fringes fill the field of view; a periodicity confined to a small part of
it (burned-in text, a scale bar) is not taken for them (`fringe_coverage`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage
from scipy.signal import windows
from skimage.feature import peak_local_max

from dislotrack.data_gen.conventions import D003_LINIO2_NM

logger = logging.getLogger(__name__)

#: Default minimum prominence; the best peak of pure Gaussian noise scores 3-9
#: (64-1024 px images), lattice fringes hundreds or more.
MIN_PROMINENCE = 20.0
#: Smallest fraction of the image a periodicity must cover to be taken for lattice
#: fringes: real and synthetic lattice images, vacuum edges included, score 0.45-1,
#: the burned-in annotation band of a diffraction-contrast movie 0.03.
MIN_COVERAGE = 0.2


class NoFringePeakError(ValueError):
    """No periodicity in the search range stands out of the noise."""


def _crop(image: np.ndarray, max_size: int) -> np.ndarray:
    """The central ``max_size`` crop as float, checked to be a finite 2-D image."""
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    h, w = (min(n, max_size) for n in img.shape)
    r0, c0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    img = img[r0 : r0 + h, c0 : c0 + w]
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or infinite values")
    return img


def _windowed(image: np.ndarray, max_size: int) -> np.ndarray:
    """The central crop, mean removed, times a 2-D Hann window."""
    img = _crop(image, max_size)
    win = np.outer(windows.hann(img.shape[0], sym=False), windows.hann(img.shape[1], sym=False))
    return (img - img.mean()) * win


def _parabola(v: np.ndarray) -> float:
    """Offset of the vertex of a parabola through three equally spaced samples."""
    denom = v[0] - 2 * v[1] + v[2]
    return 0.0 if denom >= 0 else float(np.clip(0.5 * (v[0] - v[2]) / denom, -0.5, 0.5))


@dataclass(frozen=True)
class Spectrum:
    """Summed power spectrum of Hann-windowed frames, with each bin's prominence.

    Arrays are fftshifted, (rows, cols) = (ky, kx) in cycles/px, image axes (x right,
    y down). ``excess`` and ``prominence`` are the 3x3-summed power minus, and over,
    the median power at the same spatial frequency (floored at 1e-6 of the maximum so
    that noise-free images give finite prominences). Made by `power_spectrum`.
    """

    windowed: list[np.ndarray]
    power: np.ndarray
    kx: np.ndarray
    ky: np.ndarray
    excess: np.ndarray
    prominence: np.ndarray

    @property
    def k(self) -> np.ndarray:
        """Spatial frequency of each bin [cycles/px]."""
        return np.hypot(self.kx, self.ky)

    def peaks(self, min_prominence: float, k_range: tuple[float, float] = (0.0, np.inf)) -> np.ndarray:
        """Indices (n, 2) of local maxima of the prominence that reach
        ``min_prominence``, with spatial frequency within ``k_range`` [cycles/px]."""
        prom = np.where((self.k >= k_range[0]) & (self.k <= k_range[1]), self.prominence, 0.0)
        return peak_local_max(prom, min_distance=2, threshold_abs=min_prominence, exclude_border=False)

    def refine(self, peak: np.ndarray, *, half: int = 40) -> tuple[float, float] | None:
        """Sub-bin position (kx, ky) [cycles/px] of the peak at index ``peak``: a zoomed
        DFT of the windowed frames (+-2 bins, 0.05-bin steps) and a parabola through the
        log power. None if the maximum lies on the zoom window's edge (no true peak)."""
        r, c = (int(i) for i in peak)
        h, w = self.windowed[0].shape
        steps = 2.0 * np.arange(-half, half + 1) / half
        kxs, kys = self.kx[r, c] + steps / w, self.ky[r, c] + steps / h
        ex = np.exp(-2j * np.pi * np.outer(np.arange(w), kxs))
        ey = np.exp(-2j * np.pi * np.outer(kys, np.arange(h)))
        logp = np.log(sum(np.abs(ey @ g @ ex) ** 2 for g in self.windowed) + 1e-300)
        iy, ix = np.unravel_index(np.argmax(logp), logp.shape)
        if not (0 < iy < 2 * half and 0 < ix < 2 * half):
            return None
        return (
            kxs[ix] + _parabola(logp[iy, ix - 1 : ix + 2]) * (kxs[1] - kxs[0]),
            kys[iy] + _parabola(logp[iy - 1 : iy + 2, ix]) * (kys[1] - kys[0]),
        )


def power_spectrum(frames: list[np.ndarray], *, max_size: int = 1024) -> Spectrum:
    """The `Spectrum` of the central ``max_size`` crops of ``frames`` (same shape).

    Parameters
    ----------
    frames : list of ndarray (H, W)
        One or more frames; their power spectra are summed.
    max_size : int
        Side of the central crop analysed [px].

    Returns
    -------
    Spectrum
    """
    windowed = [_windowed(f, max_size) for f in frames]
    if not windowed:
        raise ValueError("power_spectrum needs at least one frame")
    power = fft.fftshift(sum(np.abs(fft.fft2(g)) ** 2 for g in windowed))
    h, w = power.shape
    ky, kx = np.meshgrid(fft.fftshift(fft.fftfreq(h)), fft.fftshift(fft.fftfreq(w)), indexing="ij")
    smooth = ndimage.uniform_filter(power, size=3, mode="wrap")
    ring = np.rint(np.hypot(kx, ky) / max(1 / h, 1 / w)).astype(int)
    med = np.asarray(ndimage.median(smooth, labels=ring, index=np.arange(ring.max() + 1)))
    background = np.maximum(med[ring], 1e-6 * smooth.max() + np.finfo(float).tiny)
    return Spectrum(windowed, power, kx, ky, smooth - background, smooth / background)


def fringe_period_px(
    image: np.ndarray,
    *,
    search_px: tuple[float, float] = (2.5, 40.0),
    min_prominence: float = MIN_PROMINENCE,
    rel_height: float = 0.1,
    max_size: int = 1024,
) -> tuple[float, float, float]:
    """Period [px], direction [deg] and prominence of the lowest-order strong fringe.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        One frame.
    search_px : (float, float)
        Shortest and longest period to consider [px]. The longest is also
        capped at a quarter of the (cropped) image side.
    min_prominence : float
        Peaks less prominent than this are noise.
    rel_height : float
        A lower-frequency peak is preferred to the strongest one if its excess
        power (above the ring background) is at least this fraction of the
        strongest peak's.
    max_size : int
        The central ``max_size`` x ``max_size`` crop is analysed [px].

    Returns
    -------
    period : float
        Fringe period [px].
    angle : float
        Direction of the fringe wave vector, counter-clockwise from +x as
        displayed (y down) [deg, 0-180).
    prominence : float
        Peak power over the median power at that frequency.

    Raises
    ------
    NoFringePeakError
        If no peak in the search range reaches ``min_prominence``.
    """
    lo, hi = search_px
    if not 0 < lo < hi:
        raise ValueError(f"search_px must be (shortest, longest) periods > 0, got {search_px} px")
    spec = power_spectrum([image], max_size=max_size)
    h, w = spec.power.shape
    hi = min(hi, min(h, w) / 4)
    if hi <= lo:
        raise NoFringePeakError(
            f"image of {h}x{w} px is too small to find periods of {lo:g}-{search_px[1]:g} px"
        )
    peaks = spec.peaks(min_prominence, (1 / hi, 1 / lo))
    if len(peaks) == 0:
        in_range = (spec.k >= 1 / hi) & (spec.k <= 1 / lo)
        raise NoFringePeakError(
            f"no periodicity between {lo:g} and {hi:g} px stands out of the noise "
            f"(best prominence {spec.prominence[in_range].max():.3g} < {min_prominence:g})"
        )
    strength = spec.excess[peaks[:, 0], peaks[:, 1]]
    strong = peaks[strength >= rel_height * strength.max()]
    r, c = strong[np.argmin(spec.k[strong[:, 0], strong[:, 1]])]
    refined = spec.refine((r, c))
    if refined is None or not lo <= 1 / np.hypot(*refined) <= hi:
        raise NoFringePeakError(
            f"the lowest-order strong periodicity lies outside {lo:g}-{hi:g} px "
            "(only its flank is inside); widen search_px or use a larger image"
        )
    kx_f, ky_f = refined
    angle = float(np.degrees(np.arctan2(-ky_f, kx_f)) % 180.0)
    return 1.0 / float(np.hypot(kx_f, ky_f)), angle, float(spec.prominence[r, c])


def fringe_coverage(image: np.ndarray, period_px: float, angle_deg: float, *,
                    max_size: int = 1024) -> float:
    """Fraction of the image where a periodicity is strong.

    The central ``max_size`` crop is band-pass filtered around the periodicity
    (Gaussian of sigma a quarter of its frequency) and the local amplitude, smoothed
    over two periods, compared with its 99th percentile: the fraction of pixels
    above half of it.

    Parameters
    ----------
    image : ndarray (H, W)
        One frame.
    period_px, angle_deg : float
        The periodicity, as `fringe_period_px` returns it.
    max_size : int
        Side of the central crop [px].

    Returns
    -------
    float
        In [0, 1]: about 1 for lattice fringes across the field, small for a
        periodicity confined to one region.
    """
    g = _crop(image, max_size)
    h, w = g.shape
    k = np.array([np.cos(np.radians(angle_deg)), -np.sin(np.radians(angle_deg))]) / period_px
    ky, kx = np.meshgrid(fft.fftfreq(h), fft.fftfreq(w), indexing="ij")
    sigma = 0.25 / period_px
    band = np.exp(-((kx - k[0]) ** 2 + (ky - k[1]) ** 2) / (2 * sigma**2))
    amplitude = np.abs(fft.ifft2(fft.fft2(g - g.mean()) * band))
    amplitude = ndimage.uniform_filter(amplitude, size=2 * int(period_px) + 1)
    return float(np.mean(amplitude >= 0.5 * np.percentile(amplitude, 99)))


def estimate_pixel_size_from_fringes(
    image: np.ndarray,
    *,
    d_spacing_nm: float = D003_LINIO2_NM,
    search_px: tuple[float, float] = (2.5, 40.0),
    min_prominence: float = MIN_PROMINENCE,
) -> tuple[float, float]:
    """Pixel size [nm/px] from the lowest-order strong lattice fringe.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        A frame showing lattice fringes of spacing ``d_spacing_nm``.
    d_spacing_nm : float
        The fringe spacing the strongest low-order periodicity is assumed to be
        [nm]; default the LiNiO2 (003) spacing, 0.473 nm.
    search_px : (float, float)
        Range of fringe periods to search [px].
    min_prominence : float
        See `fringe_period_px`.

    Returns
    -------
    pixel_size : float
        [nm/px].
    prominence : float
        Confidence: peak power over the median power at that spatial frequency
        (the best noise peak scores 3-9; lattice images give hundreds or more).

    Raises
    ------
    NoFringePeakError
        If no clear periodicity exists (e.g. pure noise), or it covers less than
        `MIN_COVERAGE` of the image (`fringe_coverage`).
    """
    if not d_spacing_nm > 0:
        raise ValueError(f"d_spacing_nm must be positive, got {d_spacing_nm!r} nm")
    period, angle, prominence = fringe_period_px(
        image, search_px=search_px, min_prominence=min_prominence
    )
    coverage = fringe_coverage(image, period, angle)
    if coverage < MIN_COVERAGE:
        raise NoFringePeakError(
            f"the periodicity of {period:.3g} px covers only {100 * coverage:.0f} % of the image "
            "(burned-in text or a scale bar?): no lattice fringes to calibrate on"
        )
    return d_spacing_nm / period, prominence


def pixel_size_from_fringes_or_none(
    image: np.ndarray,
    *,
    d_spacing_nm: float = D003_LINIO2_NM,
    search_px: tuple[float, float] = (2.5, 40.0),
    min_prominence: float = MIN_PROMINENCE,
) -> float | None:
    """`estimate_pixel_size_from_fringes` that returns None instead of raising.

    Made for ``resolve_calibration(..., estimate=lambda: pixel_size_from_fringes_or_none(f))``.
    """
    try:
        pixel_size, prominence = estimate_pixel_size_from_fringes(
            image, d_spacing_nm=d_spacing_nm, search_px=search_px, min_prominence=min_prominence
        )
    except NoFringePeakError as err:
        logger.info("pixel size not estimated: %s", err)
        return None
    logger.info("pixel size %.4g nm/px from fringes (prominence %.3g)", pixel_size, prominence)
    return pixel_size
