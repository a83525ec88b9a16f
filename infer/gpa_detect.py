"""Classical dislocation and rock-salt detection from geometric phases.

A dislocation is a phase vortex: around a closed loop the geometric phase
``P_g = -2 pi g.u`` of reflection ``g`` winds by ``2 pi n`` with ``n = -g.b``
(Hÿtch, Putaux & Pénisson, Nature 423 (2003) 270), where ``b = ∮ du`` along a
loop traversed *clockwise as displayed* (image axes, y down). With that loop,
``b`` obeys the project's convention ``b_hat = (hy, -hx)`` (see
`dislotrack.data_gen.conventions`): for the Volterra field with ``b`` along +x
(``theta = atan2(y, x)`` grows clockwise on screen) the extra fringe lies at +y,
below the core on screen, and ``h_from_b_hat((1, 0)) = (0, 1)``. The tests
establish the side of the extra half-plane by counting fringes in the image.

Rock-salt (cation-mixed) regions keep the fine lattice fringes but lose the
layered (003) contrast, so the local (003) amplitude drops there.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from dislotrack.data_gen.conventions import D003_LINIO2_NM, h_from_b_hat, unit
from dislotrack.infer.fringe_amplitude import noise_rms
from dislotrack.infer.gpa import (
    NoReflectionError,
    _as_image,
    _demodulate,
    _frequencies,
    _interior,
    _lattice_fields,
    _sigma_k,
    _spectrum,
    find_reflections,
)

_COLUMNS = ["x", "y", "score", "hx", "hy", "bx_nm", "by_nm"]
logger = logging.getLogger(__name__)


def _wrap_phase(d: np.ndarray) -> np.ndarray:
    return (d + np.pi) % (2 * np.pi) - np.pi


def _box_sum(a: np.ndarray, size: int) -> np.ndarray:
    """Sums over all ``size`` x ``size`` windows (valid positions), exact for ints."""
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=a.dtype)
    c[1:, 1:] = a.cumsum(0).cumsum(1)
    return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]


def phase_windings(
    phase: np.ndarray,
    *,
    loop_px: int = 1,
    amplitude: np.ndarray | None = None,
    min_amplitude: float = 0.0,
) -> np.ndarray:
    """Winding numbers of a phase around square loops.

    Entry ``[i, j]`` is ``(1 / 2 pi) * sum of wrapped phase steps`` around the
    square with corners at pixel centres ``(x, y) = (j, i)``, ``(j + L, i)``,
    ``(j + L, i + L)``, ``(j, i + L)`` traversed in that order, i.e. clockwise as
    displayed (y down); the loop's centre is ``(j + L / 2, i + L / 2)`` [px].
    Larger loops are sums of the 2x2 plaquettes inside them (Stokes), so noise
    vortex pairs closer than ``L`` cancel.

    Parameters
    ----------
    phase : ndarray, shape (H, W)
        Phase [rad], e.g. the geometric phase of `dislotrack.infer.gpa.geometric_phase`;
        a complex array is replaced by its argument. Steps between neighbouring
        pixels must be below pi.
    loop_px : int
        Side ``L`` of the loops [px].
    amplitude : ndarray, shape (H, W), optional
        Lattice amplitude ``|H_g|``; loops whose mean amplitude along the loop is
        below ``min_amplitude`` get winding 0.
    min_amplitude : float
        Threshold for ``amplitude`` (same unit).

    Returns
    -------
    ndarray of int, shape (H - L, W - L)
    """
    p = np.angle(phase) if np.iscomplexobj(phase) else np.asarray(phase, dtype=float)
    loop = int(loop_px)
    if loop < 1 or loop >= min(p.shape):
        raise ValueError(f"loop_px must be in [1, {min(p.shape) - 1}] px, got {loop_px!r}")
    dx = _wrap_phase(np.diff(p, axis=1))
    dy = _wrap_phase(np.diff(p, axis=0))
    curl = dx[:-1, :] + dy[:, 1:] - dx[1:, :] - dy[:, :-1]
    wind = np.rint(curl / (2 * np.pi)).astype(np.int64)
    if loop > 1:
        wind = _box_sum(wind, loop)
    if amplitude is not None:
        wind[_loop_mean(np.asarray(amplitude, dtype=float), loop) < min_amplitude] = 0
    return wind


def _loop_mean(a: np.ndarray, loop: int) -> np.ndarray:
    """Mean of ``a`` over the 4 L pixels on each loop of `phase_windings`."""
    inner = _box_sum(a, loop - 1)[1:-1, 1:-1] if loop > 1 else 0.0
    return (_box_sum(a, loop + 1) - inner) / (4 * loop)


def _noise_amplitude(spectrum: np.ndarray, g: np.ndarray, pixel_size_nm: float,
                     resolution_nm: float) -> float:
    """RMS of ``|H_g|`` that the noise alone would give [image units].

    `dislotrack.infer.fringe_amplitude.noise_rms` on the ring ``| |k| - |g| | < 2 sigma_k``;
    the Gaussian mask passes ``sum M^2 = pi sigma_k^2 / dk^2`` of the noise.
    """
    kx, ky = _frequencies(spectrum.shape, pixel_size_nm)
    sigma_k = _sigma_k(resolution_nm)
    mask_sq = np.pi * sigma_k**2 * spectrum.size * pixel_size_nm**2
    return noise_rms(np.abs(spectrum) ** 2, np.hypot(kx, ky), radius=np.hypot(*g),
                     half_width=2 * sigma_k, mask_sq=mask_sq, n_pixels=spectrum.size)


def _vortex_zero(hd: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """Zero of the linear fit ``a + b dx + c dy`` of ``hd`` on plaquette (i, j) [px]."""
    corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)  # (dx, dy)
    vals = hd[i + corners[:, 1].astype(int), j + corners[:, 0].astype(int)]
    design = np.column_stack([np.ones(4), corners])
    coef = np.linalg.lstsq(design, vals, rcond=None)[0]
    jac = np.array([[coef[1].real, coef[2].real], [coef[1].imag, coef[2].imag]])
    try:
        dxy = np.linalg.solve(jac, -np.array([coef[0].real, coef[0].imag]))
    except np.linalg.LinAlgError:
        dxy = np.array([0.5, 0.5])
    dxy = np.clip(dxy, 0.0, 1.0)
    return j + dxy[0], i + dxy[1]


def _core_position(centre, charges, plaquettes, demods, radius: float) -> tuple[float, float]:
    """Mean sub-pixel vortex zero of the reflections that wind, near ``centre`` (x, y)."""
    zeros = []
    for n, w, hd in zip(charges, plaquettes, demods, strict=True):
        if n == 0:
            continue
        ii, jj = np.nonzero(np.sign(w) == np.sign(n))
        dist = np.hypot(jj + 0.5 - centre[0], ii + 0.5 - centre[1])
        if dist.size and dist.min() <= radius:
            k = np.argmin(dist)
            zeros.append(_vortex_zero(hd, ii[k], jj[k]))
    return tuple(np.mean(zeros, axis=0)) if zeros else tuple(centre)


def auto_reflections(img: np.ndarray, pixel_size_nm: float, d_spacing_nm: float) -> np.ndarray:
    """(003) and an in-layer reflection of the layered lattice (`find_reflections` with
    ``layered``), or (003) alone where the image shows no second one (logged).

    Raises
    ------
    NoReflectionError
        If not even the (003) reflection stands out.
    """
    kw = dict(pixel_size_nm=pixel_size_nm, d_spacing_nm=d_spacing_nm)
    try:
        return find_reflections(img, n=2, layered=True, **kw)
    except NoReflectionError as err:
        logger.warning("%s; using the d = %s nm reflection alone", err, d_spacing_nm)
        return find_reflections(img, n=1, **kw)


def _clusters(charge: np.ndarray, inside: np.ndarray, min_size: float):
    """Connected groups of loops with equal non-zero windings: (rows, cols, n)."""
    charged = np.any(charge != 0, axis=-1) & inside
    for n in np.unique(charge[charged], axis=0):
        labels, count = ndi.label(charged & np.all(charge == n, axis=-1))
        for lab in range(1, count + 1):
            ii, jj = np.nonzero(labels == lab)
            if ii.size >= min_size:
                yield ii, jj, n


def detect_cores_gpa(
    image: np.ndarray,
    *,
    pixel_size_nm: float,
    g: np.ndarray | None = None,
    resolution_nm: float = 1.0,
    loop_nm: float | None = None,
    min_snr: float = 3.0,
    min_score: float = 0.25,
    border_nm: float | None = None,
    d_spacing_nm: float = D003_LINIO2_NM,
) -> pd.DataFrame:
    """Find dislocation cores as phase vortices of one or two reflections.

    Loops of side ``L = loop_nm`` with the same non-zero windings ``n`` (one per
    reflection) are grouped into connected clusters: an isolated core gives an
    ``L`` x ``L`` cluster, and clusters smaller than ``min_score * L^2`` are
    dropped as noise (so are dipoles closer than ``min_score * L``). Each cluster gives
    ``b = -pinv(G) n`` and ``h = h_from_b_hat(b / |b|)``; the position is the
    sub-pixel zero of the complex lattice signal(s) near the cluster centre.
    Same-sign cores closer than ``L`` merge into one with the summed ``b``.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Lattice image.
    pixel_size_nm : float
        Pixel size [nm/px].
    g : array_like, shape (m, 2), optional
        One or two reflections [1/nm]; default `auto_reflections` (the second only
        where the layered lattice has it). With one, ``b`` is only its component
        along ``g``.
    resolution_nm : float
        Real-space FWHM of the GPA mask [nm] (see `dislotrack.infer.gpa.complex_image`).
    loop_nm : float, optional
        Side of the counting loops [nm]; default ``1.5 * resolution_nm``.
    min_snr : float
        Loops whose mean ``|H_g|`` is below ``min_snr`` times the RMS amplitude
        that noise alone gives (estimated from the power spectrum on the ring
        ``|k| = |g|``) do not count for that reflection; where a reflection is
        that weak around a core, ``b`` is reported along the other one only.
    min_score : float
        Smallest cluster kept, as a fraction of ``L^2`` (see ``score``).
    border_nm : float, optional
        Loops closer than this to the image edge do not count [nm]; default
        ``resolution_nm``.
    d_spacing_nm : float
        Spacing of the first reflection when ``g`` is None [nm].

    Returns
    -------
    pandas.DataFrame
        Columns ``x, y`` [px, pixel-centre origin], ``score`` (fraction of the
        loops enclosing the core that agree on its windings, in [0, 1]),
        ``hx, hy`` (unit vector into the extra half-plane), ``bx_nm, by_nm``
        (projected Burgers vector [nm]).
    """
    img = _as_image(image)
    if g is None:
        g = auto_reflections(img, pixel_size_nm, d_spacing_nm)
    gmat = np.atleast_2d(np.asarray(g, dtype=float))
    if gmat.shape not in ((1, 2), (2, 2)):
        raise ValueError(f"g must hold one or two (gx, gy) reflections [1/nm], got {g!r}")
    loop = max(2, int(round((loop_nm or 1.5 * resolution_nm) / pixel_size_nm)))
    border = int(round((resolution_nm if border_nm is None else border_nm) / pixel_size_nm))
    spectrum = _spectrum(img)
    hgs = [_lattice_fields(spectrum, gi, pixel_size_nm, resolution_nm)[0] for gi in gmat]
    demods = [_demodulate(h, gi, pixel_size_nm) for h, gi in zip(hgs, gmat, strict=True)]
    loops, strong, plaquettes = [], [], []
    for hd, gi in zip(demods, gmat, strict=True):
        noise = _noise_amplitude(spectrum, gi, pixel_size_nm, resolution_nm)
        strong.append(_loop_mean(np.abs(hd), loop) >= min_snr * noise)
        loops.append(np.where(strong[-1], phase_windings(hd, loop_px=loop), 0))
        plaquettes.append(phase_windings(hd, loop_px=1))  # the core itself is weak
    inside = np.zeros(loops[0].shape, dtype=bool)  # loops clear of the border
    inside[border : img.shape[0] - loop - border, border : img.shape[1] - loop - border] = True
    charge = np.stack(loops, axis=-1)  # (..., m): windings of every loop
    rows = []
    for ii, jj, n in _clusters(charge, inside, min_score * loop**2):
        centre = (jj.mean() + loop / 2, ii.mean() + loop / 2)
        x, y = _core_position(centre, n, plaquettes, demods, loop / 2)
        seen = np.array([np.mean(m[ii, jj]) > 0.5 for m in strong])
        b = -np.linalg.pinv(gmat[seen]) @ n[seen].astype(float)
        h = h_from_b_hat(unit(b))
        rows.append([x, y, min(1.0, ii.size / loop**2), h[0], h[1], b[0], b[1]])
    df = pd.DataFrame(rows, columns=_COLUMNS, dtype=float)
    return df.sort_values(["y", "x"], ignore_index=True)


def _smoothed_amplitude(spectrum, g, pixel_size_nm: float, resolution_nm: float) -> np.ndarray:
    """``|H_g|`` smoothed once more by a Gaussian of FWHM ``resolution_nm``."""
    amp = np.abs(_lattice_fields(spectrum, g, pixel_size_nm, resolution_nm)[0])
    return ndi.gaussian_filter(amp, resolution_nm / pixel_size_nm / 2.3548)


def rocksalt_mask_gpa(
    image: np.ndarray,
    *,
    pixel_size_nm: float,
    g003: np.ndarray | None = None,
    g_other: np.ndarray | None = None,
    resolution_nm: float = 1.0,
    threshold: float | str = 0.5,
    min_area_nm2: float | None = None,
    d_spacing_nm: float = D003_LINIO2_NM,
) -> np.ndarray:
    """Rock-salt (cation-mixed) regions: (003) fringes lost, other fringes kept.

    The (003) amplitude ``|H_g003|``, smoothed over ``resolution_nm``, is compared
    with ``threshold`` times its 90th percentile in the image interior (or with
    Otsu's threshold when ``threshold="otsu"``); where a second reflection is
    known, its amplitude must stay above the same fraction of its own 90th
    percentile (so vacuum and amorphous regions are not called rock-salt). The
    90th percentile stands for the layered phase, so at least ~10 % of the image
    must be layered; Otsu assumes both phases are present and splits the noise of
    an image without rock-salt.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Lattice image.
    pixel_size_nm : float
        Pixel size [nm/px].
    g003, g_other : array_like, shape (2,), optional
        (003) and another reflection [1/nm]; both from `find_reflections` when
        ``g003`` is None (``g_other`` only if the zone shows one).
    resolution_nm : float
        Real-space FWHM of the GPA mask and of the extra smoothing [nm].
    threshold : float or "otsu"
        Fraction of the layered (003) amplitude below which a pixel is rock-salt.
    min_area_nm2 : float, optional
        Smallest rock-salt region and largest hole kept [nm^2]; default
        ``(2 * resolution_nm) ** 2``.
    d_spacing_nm : float
        (003) spacing used when ``g003`` is None [nm].

    Returns
    -------
    ndarray of bool, shape (H, W)
        True = rock-salt.
    """
    if threshold != "otsu" and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ValueError(f"threshold must be a fraction in (0, 1) or 'otsu', got {threshold!r}")
    img = _as_image(image)
    if g003 is None:
        found = auto_reflections(img, pixel_size_nm, d_spacing_nm)
        g003 = found[0]
        g_other = found[1] if g_other is None and len(found) == 2 else g_other
    interior = _interior(img.shape, int(round(resolution_nm / pixel_size_nm)))
    spectrum = _spectrum(img)
    a003 = _smoothed_amplitude(spectrum, g003, pixel_size_nm, resolution_nm)
    if threshold == "otsu":
        mask = a003 < threshold_otsu(a003[interior])
    else:
        mask = a003 < threshold * np.percentile(a003[interior], 90)
    if g_other is not None:
        a2 = _smoothed_amplitude(spectrum, g_other, pixel_size_nm, resolution_nm)
        frac = 0.5 if threshold == "otsu" else threshold
        mask &= a2 >= frac * np.percentile(a2[interior], 90)
    area_px = (min_area_nm2 or (2 * resolution_nm) ** 2) / pixel_size_nm**2
    mask = remove_small_objects(mask, max_size=int(area_px))
    return remove_small_holes(mask, max_size=int(area_px))
