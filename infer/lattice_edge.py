"""Where a frame shows no (003) lattice: vacuum beyond the specimen's edge, amorphous
layers, and rock salt, which keeps no (003) fringes.

A core whose track ends beside such a region went out through the specimen's edge
rather than annihilating in the crystal, as at the frame's border (one that begins there
nucleated at the surface: nothing glides in from vacuum); `dislotrack.infer.cleanup`
flags those detections.

The map is the amplitude of the frame's (003) fringes — a band-pass around the
strongest direction on the (003) ring, smoothed over `RESOLUTION_NM` — over the RMS
amplitude that the frame's noise alone gives through the same band (the ring's median
power: `dislotrack.infer.fringe_amplitude.noise_rms`). Vacuum reads about 1 at any
dose, and crystal stays crystal however weak its fringes, as long as they stand
`MIN_SNR` above the noise: a thickness contour or defocus gradient that dims the fringes
3-10x over several nanometres is not an edge. Where the fringes are strong they spill
about a nanometre into the vacuum above the noise; there a drop to `FRACTION` of the
strongest amplitude within `REACH_NM` marks the edge.

Limits, on generated frames (`tests/benchmarks/bench_lattice_edge.py`): vacuum more than
1 nm from the edge is found at 50-5000 e/Å², HRTEM and STEM, and crystal is not flagged
from 500 e/Å² up. Below that, crystal whose fringes have dimmed to a third or less can
sink into the noise at 1 nm (1-3 % of a crystal whose contrast ramps from 1 to 0.2 at
50 e/Å², more in STEM than in HRTEM). The direction is one per frame: a grain turned more
than about 10-15° from the frame's strongest (003) reflection can read lattice-free. The
frame is mirrored at its border, so fringes that run obliquely to it read weaker within
about 1 nm of it (where a track's end is at the border anyway).

Pure: an array in, a mask out.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft, ndimage
from skimage.morphology import remove_small_holes

from dislotrack.infer.fringe_amplitude import noise_rms

#: Real-space resolution of the amplitude map [nm] (FWHM): a core's own dip in its
#: (003) amplitude (a few tenths of a nm) is smoothed away, a specimen edge is not.
RESOLUTION_NM = 1.0
#: Lattice-free where the (003) amplitude is under this multiple of the noise's RMS:
#: noise alone stays under it in about 9 of 10 pixels at 1 nm, and the regions it
#: leaves (holes in vacuum, specks in crystal) are under `MIN_AREA_NM2`.
MIN_SNR = 1.6
#: ... or under this fraction of the strongest amplitude within `REACH_NM` [nm]: strong
#: fringes' band-pass and smoothing spill past the edge (this puts the mask's edge within
#: about 0.3 nm of the specimen's), a gradual contrast change does not drop 2.5x within 2 nm.
FRACTION = 0.4
REACH_NM = 2.0
#: Smallest lattice-free region, and largest hole in one, kept [nm^2]: a close dipole's
#: joint dip is smaller.
MIN_AREA_NM2 = 4.0
#: Relative radial half-width (sigma) of the (003) band in frequency.
RING_WIDTH = 0.15
#: Angular half-width (sigma) of the band about the strongest (003) direction [deg]: wide
#: enough for lattice rotations of a few degrees, narrow enough to leave out most noise.
ANGULAR_WIDTH_DEG = 8.0
#: Angular bins over 180° in which the strongest direction is sought.
_N_DIRECTIONS = 90
_FWHM_PER_SIGMA = 2.3548


@lru_cache(maxsize=8)
def _ring(shape: tuple[int, int], k0: float) -> tuple[np.ndarray, ...]:
    """The (003) ring of an ``rfft2`` grid: indices of its coefficients, the radial
    Gaussian on them, their |k| [cycles/px], direction mod 180° [rad], and multiplicity
    (2 where the coefficient stands for itself and its conjugate)."""
    rows = fft.fftfreq(shape[0])[:, None]
    cols = fft.rfftfreq(shape[1])[None, :]
    k = np.hypot(rows, cols)
    radial = np.exp(-0.5 * ((k - k0) / (RING_WIDTH * k0)) ** 2)
    idx = np.nonzero(radial > 1e-3)
    row, col = np.broadcast_to(rows, k.shape)[idx], np.broadcast_to(cols, k.shape)[idx]
    twice = (col > 0) & ~((shape[1] % 2 == 0) & (col == 0.5))
    out = (idx, radial[idx], k[idx], np.arctan2(row, col) % np.pi, np.where(twice, 2.0, 1.0))
    for a in out[1:]:
        a.flags.writeable = False
    return out


@lru_cache(maxsize=8)
def _gaussian_transfer(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Fourier transfer function of a Gaussian of ``sigma_px`` on an ``rfft2`` grid."""
    k2 = fft.fftfreq(shape[0])[:, None] ** 2 + fft.rfftfreq(shape[1])[None, :] ** 2
    out = np.exp(-2 * np.pi**2 * sigma_px**2 * k2).astype(np.float32)
    out.flags.writeable = False
    return out


def _strongest_direction(power: np.ndarray, theta: np.ndarray) -> float:
    """Direction mod 180° [rad] of the most power (a parabola through the peak bin)."""
    bins = (theta / np.pi * _N_DIRECTIONS).astype(int) % _N_DIRECTIONS
    hist = np.log(ndimage.gaussian_filter1d(np.bincount(bins, power, _N_DIRECTIONS), 1.0,
                                            mode="wrap") + 1e-30)
    i = int(np.argmax(hist))
    lo, mid, hi = hist[(i - 1) % _N_DIRECTIONS], hist[i], hist[(i + 1) % _N_DIRECTIONS]
    offset = np.clip(0.5 * (lo - hi) / (lo - 2 * mid + hi), -0.5, 0.5) if lo - 2 * mid + hi < 0 else 0.0
    return (i + 0.5 + offset) * np.pi / _N_DIRECTIONS


def _nearby_max(amplitude: np.ndarray, pixel_size_nm: float) -> np.ndarray:
    """Maximum of ``amplitude`` within `REACH_NM` (a square), taken on every ``step``-th
    pixel: the map is smooth over `RESOLUTION_NM`, and this is 4x faster at 0.1 nm/px."""
    step = max(1, int(RESOLUTION_NM / pixel_size_nm / 4))
    size = 2 * int(round(REACH_NM / pixel_size_nm / step)) + 1
    coarse = ndimage.maximum_filter(amplitude[::step, ::step], size)
    full = np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)
    return full[: amplitude.shape[0], : amplitude.shape[1]]


def fringe_snr(frame: np.ndarray, *, pixel_size_nm: float,
               d_spacing_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """The frame's (003) fringe amplitude and its ratio to the noise's RMS amplitude.

    Parameters
    ----------
    frame : ndarray (H, W)
        One frame [input units]; not constant.
    pixel_size_nm, d_spacing_nm : float
        Its calibration [nm/px] and the (003) spacing [nm].

    Returns
    -------
    amplitude, snr : ndarray of float32 (H, W)
        RMS amplitude of the (003) band about its strongest direction, smoothed over
        `RESOLUTION_NM` [input units], and the same over the RMS that noise alone gives
        (about 1 where no (003) fringes show); NaN where the ring holds no coefficient
        (fringes finer than 2 px).
    """
    frame = np.asarray(frame, dtype=np.float32)
    # Mirrored, not wrapped, at the border: the FFT would spill the opposite border in.
    pad = min(int(round(REACH_NM / pixel_size_nm)), min(frame.shape) - 1)
    after = [fft.next_fast_len(n + 2 * pad, real=True) - n - pad for n in frame.shape]
    image = np.pad(frame, [(pad, min(a, n - 1)) for a, n in zip(after, frame.shape, strict=True)],
                   mode="reflect")
    idx, radial, k, theta, twice = _ring(image.shape, pixel_size_nm / d_spacing_nm)
    coef = fft.rfft2(image - image.mean())[idx]
    power = coef.real**2 + coef.imag**2
    offset = (theta - _strongest_direction(power * radial**2 * twice, theta) + np.pi / 2) % np.pi - np.pi / 2
    mask = (radial * np.exp(-0.5 * (offset / np.radians(ANGULAR_WIDTH_DEG)) ** 2)).astype(np.float32)
    band = np.zeros((image.shape[0], image.shape[1] // 2 + 1), np.complex64)
    band[idx] = coef * mask
    fringes = fft.irfft2(band, s=image.shape)
    # x^2 of the real band-pass is 2|H_g|^2 with a ripple at 2g that the smoothing removes.
    sigma_px = RESOLUTION_NM / pixel_size_nm / _FWHM_PER_SIGMA
    smooth = fft.irfft2(fft.rfft2(fringes * fringes) * _gaussian_transfer(image.shape, sigma_px),
                        s=image.shape)
    amplitude = np.sqrt(np.clip(smooth[pad:pad + frame.shape[0], pad:pad + frame.shape[1]], 0, None))
    noise = noise_rms(power, k, radius=pixel_size_nm / d_spacing_nm,
                      half_width=RING_WIDTH * pixel_size_nm / d_spacing_nm,
                      mask_sq=float((twice * mask**2).sum()), n_pixels=image.size)
    # A noise-free frame (noise 0) has every fringe significant.
    return amplitude, amplitude / np.float32(max(noise, np.finfo(np.float32).tiny))


def lattice_free_mask(frame: np.ndarray, *, pixel_size_nm: float, d_spacing_nm: float) -> np.ndarray:
    """Boolean mask (the frame's shape) of where the frame shows no (003) fringes.

    Parameters
    ----------
    frame : ndarray (H, W)
        One frame [input px].
    pixel_size_nm, d_spacing_nm : float
        Its calibration [nm/px] and the (003) spacing [nm].

    Returns
    -------
    ndarray of bool
        True where the (003) amplitude (`fringe_snr`) is under `MIN_SNR` times the
        noise's, or under `FRACTION` of the strongest within `REACH_NM`, in regions of
        at least `MIN_AREA_NM2` (their holes under it filled); all False for a frame of
        one value.

    Examples
    --------
    >>> y, x = np.mgrid[:128, :128]
    >>> crystal = np.cos(2 * np.pi * y * 0.1 / 0.473) * (x < 80)  # vacuum beyond x = 80
    >>> noisy = crystal + np.random.default_rng(0).normal(0, 1, crystal.shape)
    >>> mask = lattice_free_mask(noisy, pixel_size_nm=0.1, d_spacing_nm=0.473)
    >>> bool(mask[:, 95:120].all()), bool(mask[:, 10:65].any())
    (True, False)
    """
    if not np.ptp(frame):
        return np.zeros(np.shape(frame), bool)
    amplitude, snr = fringe_snr(frame, pixel_size_nm=pixel_size_nm, d_spacing_nm=d_spacing_nm)
    mask = (snr < MIN_SNR) | (amplitude < FRACTION * _nearby_max(amplitude, pixel_size_nm))
    area_px = MIN_AREA_NM2 / pixel_size_nm**2
    labels, n = ndimage.label(mask)
    if not n:
        return mask
    large = np.bincount(labels.ravel()) > area_px
    large[0] = False  # the background
    return remove_small_holes(large[labels], max_size=int(area_px))


#: A core this deep [nm] inside a lattice-free region shows that the region is crystal
#: after all (a core ends a (003) fringe): a grain whose fringes run another way than
#: the frame's strongest, which `lattice_free_mask` does not see. A core leaving through
#: the specimen's edge sits at the region's border, not this deep inside it.
CORE_DEPTH_NM = 1.0


def without_regions_holding_cores(mask: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                                  pixel_size_nm: float) -> np.ndarray:
    """``mask`` (`lattice_free_mask`) less its connected regions that hold a core
    `CORE_DEPTH_NM` or more inside them.

    Parameters
    ----------
    mask : ndarray of bool (H, W)
        Lattice-free pixels of one frame.
    x, y : array_like
        The frame's cores [px].
    pixel_size_nm : float
        [nm/px].

    Returns
    -------
    ndarray of bool
        The regions of ``mask`` without such a core (``mask`` itself where none is).

    Examples
    --------
    >>> mask = np.zeros((64, 64), bool); mask[:, 32:] = True  # a region 3.2 nm wide
    >>> kept = without_regions_holding_cores(mask, [48.0], [30.0], pixel_size_nm=0.1)
    >>> bool(kept.any()), bool(without_regions_holding_cores(mask, [33.0], [30.0],
    ...                                                      pixel_size_nm=0.1).all() == mask.all())
    (False, True)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not mask.any() or not len(x):
        return mask
    # Depth tested on a circle of CORE_DEPTH_NM around each core: every point in the region.
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    radius = CORE_DEPTH_NM / pixel_size_nm
    rows = np.rint(y[:, None] + radius * np.sin(angles)).astype(int)
    cols = np.rint(x[:, None] + radius * np.cos(angles)).astype(int)
    inside = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    centre = mask[np.clip(np.rint(y).astype(int), 0, mask.shape[0] - 1),
                  np.clip(np.rint(x).astype(int), 0, mask.shape[1] - 1)]
    deep = centre & np.where(inside, mask[rows.clip(0, mask.shape[0] - 1),
                                          cols.clip(0, mask.shape[1] - 1)], True).all(axis=1)
    if not deep.any():
        return mask
    labels, _ = ndimage.label(mask)
    held = np.unique(labels[np.rint(y[deep]).astype(int), np.rint(x[deep]).astype(int)])
    return mask & ~np.isin(labels, held[held > 0])

