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


def edge_distance_px(x: np.ndarray | float, y: np.ndarray | float,
                     shape: tuple[int, int]) -> np.ndarray:
    """Distance [px] of positions ``(x, y)`` from the nearest edge of an image of ``shape``
    (rows, cols): with the pixel-centre origin the image spans -0.5 .. n - 0.5 per axis.

    Examples
    --------
    >>> edge_distance_px(np.array([0.0, 5.0]), np.array([5.0, 5.0]), (10, 10)).tolist()
    [0.5, 4.5]
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rows, cols = shape
    return np.minimum.reduce([x + 0.5, y + 0.5, cols - 0.5 - x, rows - 0.5 - y])


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


#: How far from a whole number `layer_index` a measured spot may be [index units]: a
#: 256 px FFT bin moves a 0.47 nm reflection's index by ~0.06.
LAYER_INDEX_TOLERANCE = 0.2

#: In-layer plane spacings of the layered oxides seen edge-on [nm]: (100)-type planes,
#: a sqrt(3)/2, along [100], and (110)-type, a / 2, along [1-10]; a = 0.282-0.288 nm
#: (LiCoO2 to LiNiO2 and NMC), so 0.244-0.249 and 0.141-0.144 nm.
IN_LAYER_SPACINGS_NM = (0.2465, 0.1425)

#: Relative tolerance on an in-layer spacing (other materials, strain, calibration).
IN_LAYER_SPACING_TOLERANCE = 0.1


def layer_index(k: np.ndarray, g003: np.ndarray) -> np.ndarray:
    """Index l of reciprocal vectors along the layer normal, in the hexagonal setting.

    In a layered oxide (R-3m, and the topotactic rock salt that grows in it) the (003)
    reflection is 3 c*, and every reflection (h k l) projects onto the layer normal as
    l c*: ``l = 3 (k . g003) / |g003|^2`` is a whole number.

    Parameters
    ----------
    k : array_like, shape (..., 2)
        Spatial frequencies, in the units of ``g003``.
    g003 : array_like, shape (2,)
        The (003) reflection.

    Returns
    -------
    ndarray, shape (...)

    Examples
    --------
    >>> float(layer_index(np.array([0.9, 1.4]), np.array([0.0, 2.1])))  # (012)-like
    2.0
    """
    g = np.asarray(g003, float)
    return 3.0 * (np.asarray(k, float) @ g) / (g @ g)


def is_layered_reflection(k_nm: np.ndarray, g003_nm: np.ndarray, *,
                          tolerance: float = LAYER_INDEX_TOLERANCE) -> np.ndarray:
    """Whether spots off the (00l) row can be reflections of the layered lattice.

    They need a whole `layer_index` (within ``tolerance``) and an in-layer component
    that is a whole multiple (1-3) of one of `IN_LAYER_SPACINGS_NM`'s frequencies
    (within `IN_LAYER_SPACING_TOLERANCE`), scaled by the measured (003) spacing over
    `D003_LINIO2_NM` (the layered oxides keep that ratio to 1 %, and a wrong pixel
    size scales both alike). Other spots are aliases of planes beyond
    Nyquist (the 0.144 nm planes of the ``[1-10]`` zone at 0.1 nm/px) or noise, and
    give nonsense Burgers vectors and strain maps.

    Parameters
    ----------
    k_nm : array_like, shape (..., 2)
        Spatial frequencies [1/nm].
    g003_nm : array_like, shape (2,)
        The (003) reflection [1/nm].
    tolerance : float
        Largest distance of the layer index from a whole number.

    Returns
    -------
    ndarray of bool, shape (...)

    Examples
    --------
    >>> g003 = np.array([0.0, 2.114])  # 0.473 nm
    >>> is_layered_reflection(np.array([[4.0, 1.41], [1.76, 4.84]]), g003).tolist()
    [True, False]
    """
    k = np.asarray(k_nm, float)
    g = np.asarray(g003_nm, float)
    l_index = layer_index(k, g)
    along = (k @ g) / np.sqrt(g @ g)
    in_layer = np.sqrt(np.maximum(np.sum(k * k, axis=-1) - along**2, 0.0))
    on_row = np.zeros(in_layer.shape, bool)
    scale = 1.0 / (np.sqrt(g @ g) * D003_LINIO2_NM)  # measured (003) spacing / LiNiO2's
    for d in np.multiply(IN_LAYER_SPACINGS_NM, scale):
        for n in (1, 2, 3):
            on_row |= np.abs(in_layer * d / n - 1) <= IN_LAYER_SPACING_TOLERANCE
    return (np.abs(l_index - np.round(l_index)) <= tolerance) & on_row


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
