"""The noise floor that a lattice fringe's band-pass amplitude is judged against.

Shot and read noise are white and isotropic, a lattice is neither: on the ring
``|k| = |g|`` of a reflection ``g`` the Bragg spots cover a few Fourier coefficients and
noise all the others, so the ring's median power stands for the noise (Bragg spots move
a median little). Through a Fourier mask ``M`` on that ring, noise of power ``P`` per
coefficient gives the RMS amplitude ``sqrt(P * sum |M|^2) / N`` (Parseval, with
numpy's unnormalised forward FFT of an ``N``-pixel image). `dislotrack.infer.gpa_detect`
keeps phase windings only where ``|H_g|`` stands above it; `dislotrack.infer.lattice_edge`
calls lattice-free where the (003) amplitude does not.

Pure: arrays in, a number out.
"""

from __future__ import annotations

import numpy as np


def noise_rms(power: np.ndarray, k: np.ndarray, *, radius: float, half_width: float,
              mask_sq: float, n_pixels: int) -> float:
    """RMS amplitude that the image's noise alone gives through a mask on a ring of ``k``.

    The noise power per Fourier coefficient is the median of ``power`` on the ring
    ``| k - radius | < half_width`` divided by ln 2 (the median of an exponential
    distribution, which the power of complex Gaussian noise follows).

    Parameters
    ----------
    power : ndarray
        ``|F|^2`` of the image's (unnormalised) FFT coefficients [image units^2].
    k : ndarray
        Their spatial frequencies' magnitude, broadcastable to ``power`` [any unit].
    radius, half_width : float
        The ring's radius and half-width [the unit of ``k``]; a few coefficients wide.
    mask_sq : float
        ``sum |M|^2`` of the mask over the whole FFT grid (both halves of a real image's
        spectrum) [coefficients].
    n_pixels : int
        Pixels in the image.

    Returns
    -------
    float
        RMS of the band-passed noise [image units]; NaN if the ring holds no coefficient.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = np.fft.fft2(rng.normal(0, 2.0, (128, 128)))  # white noise of SD 2
    >>> k = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128)))
    >>> round(noise_rms(abs(f) ** 2, k, radius=0.2, half_width=0.02, mask_sq=128 * 128,
    ...                 n_pixels=128 * 128), 1)  # an all-pass mask: the noise's SD
    2.0
    """
    on_ring = np.abs(np.broadcast_to(k, np.shape(power)) - radius) < half_width
    if not on_ring.any():
        return float("nan")
    noise_power = np.median(power[on_ring]) / np.log(2)
    return float(np.sqrt(noise_power * mask_sq) / n_pixels)
