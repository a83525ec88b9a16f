"""Physical and geometric conventions shared by every part of dislotrack.

Everything that has a sign or an origin is defined here, once:

* Image arrays are indexed ``(t, y, x)``; a position ``(x, y)`` is in pixels with
  ``x`` = column, ``y`` = row and the origin at the *centre* of the top-left pixel
  (scikit-image convention). ``y`` points down on screen.
* Physical units are nm and s. A pixel centre ``i`` sits at ``i * pixel_size`` nm.
* An edge dislocation in projection is a core position plus the unit vector
  **h** pointing from the core into the extra half-plane. The in-plane Burgers
  direction is **h** turned 90 degrees counter-clockwise *as displayed*:
  ``b_hat = (hy, -hx)`` (with ``y`` down).
* Glide is the displacement component along ``b_hat``; climb is the component
  along **h**. Motion towards ``+h`` shortens the extra half-plane (positive
  climb); towards ``-h`` lengthens it (negative climb).
"""

from __future__ import annotations

import numpy as np

#: (003) interplanar spacing of LiNiO2 [nm]; c/3 with c = 1.419 nm.
D003_LINIO2_NM = 0.473

#: Pixel size at which the bundled network sees images [nm/px].
CANONICAL_PIXEL_SIZE_NM = 0.1


def px_to_nm(coord_px: np.ndarray | float, pixel_size: float) -> np.ndarray | float:
    """Convert pixel coordinates (pixel-centre origin) to nm.

    Parameters
    ----------
    coord_px : array_like
        Coordinates [px].
    pixel_size : float
        Pixel size [nm/px].
    """
    return np.asarray(coord_px, dtype=float) * pixel_size


def nm_to_px(coord_nm: np.ndarray | float, pixel_size: float) -> np.ndarray | float:
    """Convert nm to pixel coordinates (pixel-centre origin); inverse of `px_to_nm`."""
    return np.asarray(coord_nm, dtype=float) / pixel_size


def unit(v: np.ndarray) -> np.ndarray:
    """Normalise vectors along the last axis (zero vectors stay zero)."""
    v = np.asarray(v, dtype=float)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


def b_hat_from_h(h: np.ndarray) -> np.ndarray:
    """In-plane Burgers direction from the half-plane direction.

    ``b_hat`` is **h** turned 90 degrees counter-clockwise as displayed, i.e.
    ``(hx, hy) -> (hy, -hx)`` in image axes (``y`` down).

    Parameters
    ----------
    h : array_like, shape (..., 2)
        Unit vectors ``(hx, hy)`` pointing into the extra half-plane.

    Returns
    -------
    ndarray, shape (..., 2)

    Examples
    --------
    >>> b_hat_from_h(np.array([0.0, 1.0]))   # half-plane below the core
    array([ 1., -0.])
    """
    h = np.asarray(h, dtype=float)
    return np.stack([h[..., 1], -h[..., 0]], axis=-1)


def h_from_b_hat(b_hat: np.ndarray) -> np.ndarray:
    """Inverse of `b_hat_from_h`: ``(bx, by) -> (-by, bx)``."""
    b = np.asarray(b_hat, dtype=float)
    return np.stack([-b[..., 1], b[..., 0]], axis=-1)


def glide_climb(displacement: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split displacements into glide (along ``b_hat``) and climb (along **h**).

    Parameters
    ----------
    displacement : array_like, shape (..., 2)
        Displacements ``(dx, dy)`` in image axes [any length unit].
    h : array_like, shape (2,) or (..., 2)
        Half-plane direction(s); normalised here.

    Returns
    -------
    glide, climb : ndarray
        Components in the unit of ``displacement``. Positive climb = motion
        towards ``+h`` (the extra half-plane shortens).
    """
    d = np.asarray(displacement, dtype=float)
    hh = unit(np.asarray(h, dtype=float))
    bb = b_hat_from_h(hh)
    return (d * bb).sum(axis=-1), (d * hh).sum(axis=-1)


def electron_wavelength_nm(voltage_kv: float) -> float:
    """Relativistic electron wavelength [nm] at an accelerating voltage [kV]."""
    h = 6.62607015e-34
    m0 = 9.1093837015e-31
    e = 1.602176634e-19
    c = 299792458.0
    v = voltage_kv * 1e3
    lam_m = h / np.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c**2)))
    return float(lam_m * 1e9)


def interaction_constant(voltage_kv: float) -> float:
    """Electron interaction constant sigma [rad / (V nm)] at a voltage [kV]."""
    m0c2_kev = 510.99895
    lam = electron_wavelength_nm(voltage_kv)
    # Kirkland (2010) eq. 5.6: sigma = 2 pi / (lambda V) (m0c^2 + eV) / (2 m0c^2 + eV).
    return float(
        2 * np.pi / (lam * voltage_kv * 1e3) * (m0c2_kev + voltage_kv) / (2 * m0c2_kev + voltage_kv)
    )
