"""Where a frame shows no (003) lattice: vacuum beyond the specimen's edge, amorphous
layers, and rock salt, which keeps no (003) fringes.

A core whose track ends beside such a region went out through the specimen's edge
rather than annihilating in the crystal, as at the frame's border (one that begins there
nucleated at the surface: nothing glides in from vacuum); `dislotrack.infer.cleanup`
flags those detections. Below about 200 e/Å² (HRTEM) the (003) signal is too weak to
tell vacuum from crystal and little or nothing is flagged. The map is the amplitude of
the frame's (003) ring — every orientation at once, so no reflection need be known —
smoothed over `RESOLUTION_NM` and compared with its 90th percentile, which stands for the
layered crystal. Pure: an array in, a mask out.
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage

#: Real-space resolution of the amplitude map [nm]: a core's own dip in its (003)
#: amplitude (a few tenths of a nm) is smoothed away, a specimen edge is not.
RESOLUTION_NM = 1.0
#: No lattice where the amplitude is under this fraction of its 90th percentile.
FRACTION = 0.3
#: Smallest lattice-free region kept [nm^2]: a close dipole's joint dip is smaller.
MIN_AREA_NM2 = 4.0
#: Relative half-width (sigma) of the (003) ring in frequency.
RING_WIDTH = 0.2


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
        True where the (003) amplitude is below `FRACTION` of its 90th percentile, in
        regions of at least `MIN_AREA_NM2`; all False for a frame of one value.

    Examples
    --------
    >>> y, x = np.mgrid[:128, :128]
    >>> crystal = np.cos(2 * np.pi * y * 0.1 / 0.473) * (x < 80)  # vacuum beyond x = 80
    >>> mask = lattice_free_mask(crystal, pixel_size_nm=0.1, d_spacing_nm=0.473)
    >>> bool(mask[:, 100:].all()), bool(mask[:, :60].any())
    (True, False)
    """
    image = np.asarray(frame, dtype=np.float32)
    spread = float(image.std())
    if not spread:
        return np.zeros(image.shape, bool)
    image = (image - image.mean()) / spread
    k0 = pixel_size_nm / d_spacing_nm  # cycles per px
    rows = fft.fftfreq(image.shape[0])[:, None]
    cols = fft.rfftfreq(image.shape[1])[None, :]
    ring = np.exp(-0.5 * ((np.hypot(rows, cols) - k0) / (RING_WIDTH * k0)) ** 2).astype(np.float32)
    amplitude = np.abs(fft.irfft2(fft.rfft2(image) * ring, s=image.shape))
    # FWHM RESOLUTION_NM; the ring's own envelope adds its width.
    amplitude = ndimage.gaussian_filter(amplitude, RESOLUTION_NM / pixel_size_nm / 2.3548)
    mask = amplitude < FRACTION * np.percentile(amplitude, 90)
    labels, n = ndimage.label(mask)
    if not n:
        return mask
    large = np.bincount(labels.ravel()) > MIN_AREA_NM2 / pixel_size_nm**2
    large[0] = False  # the background
    return large[labels]
