"""The projected lattice of a movie, and the Burgers vectors it allows.

The network sees mostly the (003) fringes, which show a misfit dislocation's
Burgers-vector component along the layer normal (c/3) but not its in-plane one, so
its **h** can be off by the in-plane tilt (10 deg for LiNiO2 along [100], 0 along
[1-10]). Where the images also show an in-layer reflection, the 2-D lattice is known:
the misfit Burgers vector is then the shortest lattice vector whose component along
the layer normal is one (003) spacing, the basal one the shortest in-layer vector,
and each track's **h** can be set to the one of these its measured **h** is nearest.

Reciprocal vectors are in cycles/nm and real vectors in nm, in image axes (x right,
y down, as `dislotrack.data_gen.conventions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dislotrack.data_gen.conventions import h_from_b_hat, is_layered_reflection, unit
from dislotrack.infer.fringes import MIN_PROMINENCE, Spectrum, power_spectrum

#: The (003) reflection is searched within this fraction of its expected frequency.
D_SPACING_TOLERANCE = 0.1
#: An in-layer reflection must lie at least this far [deg] from the (003) direction.
MIN_ANGLE_DEG = 30.0
#: A track's **h** is replaced by an allowed one at most this far away [deg].
MAX_SNAP_DEG = 25.0
#: The sign of `Lattice.misfit_tilt_deg` in the generator's ``[100]`` view (about -10 deg
#: for LiNiO2 in image axes), the handedness the bundled networks were trained on: their
#: augmentation never mirrored an image (README, Conventions), so they learnt the misfit
#: b's tilt with this sign only. ``[-100]`` (the specimen seen from its other side) has +10.
TRAINED_TILT_SIGN = -1
#: A lattice whose misfit tilt is at least this far [deg] from zero has a handedness
#: (``[100]`` or its mirror); nearer (``[1-10]``: 0) it is achiral.
CHIRAL_TILT_DEG = 4.0


@dataclass(frozen=True)
class Lattice:
    """Two reciprocal lattice vectors of the projected crystal [cycles/nm].

    ``g003`` is the (003) reflection; ``g_layer`` the strongest reflection off the
    (003) row (None where the images show only (003) fringes).
    """

    g003: np.ndarray
    g_layer: np.ndarray | None

    @property
    def has_layer(self) -> bool:
        """Whether an in-layer reflection was seen, i.e. the Burgers vectors are known."""
        return self.g_layer is not None

    def burgers_vectors(self) -> dict[str, np.ndarray]:
        """Shortest lattice vectors [nm]: ``"misfit"`` (component along the layer
        normal = one (003) spacing) and ``"basal"`` (in the layers); empty without
        ``g_layer``. Sign: either (a Burgers vector's sign comes from **h**)."""
        if not self.has_layer:
            return {}
        # Real basis dual to (g003, g_layer): a_i . g_j = delta_ij.
        a003, a_layer = np.linalg.inv(np.stack([self.g003, self.g_layer])).T
        n = np.arange(-4, 5)[:, None]
        misfit = a003 + n * a_layer  # every lattice vector with (003) index 1
        return {"misfit": misfit[np.argmin(np.hypot(*misfit.T))], "basal": a_layer}

    @property
    def misfit_tilt_deg(self) -> float | None:
        """Signed angle [deg] from the layer normal (along ``g003``) to the misfit Burgers
        vector of (003) index +1, counter-clockwise as displayed: a handedness, unchanged by
        rotations and by the choice of ``g003``'s sign, reversed by a mirror (about -10 for
        LiNiO2 ``[100]``, +10 for ``[-100]``, 0 for ``[1-10]``). None without ``g_layer``."""
        if not self.has_layer:
            return None
        b = self.burgers_vectors()["misfit"]
        n = unit(self.g003)
        return float(np.degrees(np.arctan2(n[0] * b[1] - n[1] * b[0], n @ b)))

    @property
    def is_chiral(self) -> bool:
        """Whether the lattice has a handedness (a ``[100]``-type view, misfit tilt at least
        `CHIRAL_TILT_DEG`): then ``g_layer`` is one of its in-layer reflections. In
        ``[1-10]`` views the in-layer planes (0.144 nm) lie beyond Nyquist at 0.1 nm/px, and
        an off-row spot found there is an alias of them (tilt within 1.5 deg of 0 in the
        tracking benchmark, but up to 9 deg at 0.12 nm/px and in 6 of 101 `[1-10]` images
        at 0.1 nm/px: a known limit), which moves otherwise than the specimen."""
        tilt = self.misfit_tilt_deg
        return tilt is not None and abs(tilt) >= CHIRAL_TILT_DEG

    def registration_reflections(self, pixel_size_nm: float, *,
                                 measured_on_nm: float | None = None) -> np.ndarray | None:
        """The reflections for `dislotrack.infer.drift.measure_drift`'s ``layer_reflections``.

        Parameters
        ----------
        pixel_size_nm : float
            Pixel size [nm/px] of the frames the drift is measured on.
        measured_on_nm : float, optional
            Pixel size [nm/px] of the frames this lattice was measured on, if other.

        Returns
        -------
        ndarray (2, 2) or None
            ``g003`` and ``g_layer`` as rows (kx, ky) [cycles/px of ``pixel_size_nm``];
            None where the in-layer one may be an alias: an achiral view (`is_chiral`), or
            a spot onto or past the Nyquist frequency of either grid, where it folds (a
            0.198 nm spot at 0.1 nm/px, 0.504 cycles/px, sent a benchmark movie's drift 22
            px off; the 0.204 nm ones, 0.46-0.496 cycles/px, are genuine and kept).
        """
        if not self.is_chiral:
            return None
        g_nm = np.stack([self.g003, self.g_layer])
        grids = [pixel_size_nm] if measured_on_nm is None else [pixel_size_nm, measured_on_nm]
        if max(np.abs(g_nm * px).max() for px in grids) >= 0.5:
            return None
        return g_nm * pixel_size_nm

    @property
    def is_mirror_view(self) -> bool:
        """Whether this is the mirror image of the handedness the bundled networks know
        (`TRAINED_TILT_SIGN`): then they see the frames flipped (`analyze`)."""
        return self.is_chiral and np.sign(self.misfit_tilt_deg) == -TRAINED_TILT_SIGN

    def allowed(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit **h** and Burgers vector [nm] of every allowed dislocation, both signs:
        arrays of shape (n, 2) each (n = 0 without ``g_layer``)."""
        b = np.array(list(self.burgers_vectors().values())).reshape(-1, 2)
        b = np.concatenate([b, -b])
        return h_from_b_hat(unit(b)).reshape(-1, 2), b


def measure_lattice(frames: list[np.ndarray], *, pixel_size_nm: float, d_spacing_nm: float,
                    min_prominence: float = MIN_PROMINENCE, max_size: int = 1024) -> Lattice | None:
    """Find the (003) reflection and the strongest in-layer one in the summed power
    spectrum of ``frames`` (Hann-windowed central crops of ``max_size``).

    Parameters
    ----------
    frames : list of ndarray (H, W)
        A few frames of the movie (same shape).
    pixel_size_nm, d_spacing_nm : float
        Pixel size [nm/px]; (003) spacing [nm].
    min_prominence : float
        A reflection counts if its power is this many times the median power at its
        spatial frequency (`dislotrack.infer.fringes`).

    Returns
    -------
    Lattice or None
        None if no (003) reflection stands out. ``g_layer`` is the most prominent
        reflection at least `MIN_ANGLE_DEG` off the (003) direction, up to the
        Nyquist frequency, that the layered lattice can have
        (`dislotrack.data_gen.conventions.is_layered_reflection`; None if none does).
    """
    spec = power_spectrum(frames, max_size=max_size)
    peaks = spec.peaks(min_prominence)
    if not len(peaks):
        return None
    pk = np.c_[spec.kx[peaks[:, 0], peaks[:, 1]], spec.ky[peaks[:, 0], peaks[:, 1]]]  # cycles/px
    strength = spec.prominence[peaks[:, 0], peaks[:, 1]]
    k003 = pixel_size_nm / d_spacing_nm
    near = np.abs(np.hypot(*pk.T) / k003 - 1) <= D_SPACING_TOLERANCE
    if not near.any():
        return None
    best = np.argmax(np.where(near, strength, -np.inf))
    g003 = _refined(spec, peaks[best], pk[best])
    cos = np.abs(pk @ g003) / (np.hypot(*pk.T) * np.hypot(*g003) + 1e-12)
    off_row = (cos <= np.cos(np.deg2rad(MIN_ANGLE_DEG))) & (np.hypot(*pk.T) > 0.5 * k003)
    # Only spots the layered lattice can have: planes beyond Nyquist alias elsewhere
    # (the 0.144 nm planes of [1-10] at 0.1 nm/px) and gave a wrong Burgers vector.
    to_nm = 1.0 / pixel_size_nm
    off_row &= is_layered_reflection(pk * to_nm, g003 * to_nm, tolerance=0.3)  # grid: looser
    g_layer = None
    for best in np.flatnonzero(off_row)[np.argsort(-strength[off_row])]:  # strongest first
        refined = _refined(spec, peaks[best], pk[best])
        if is_layered_reflection(refined * to_nm, g003 * to_nm):
            g_layer = refined
            break
    return Lattice(g003 * to_nm, None if g_layer is None else g_layer * to_nm)


def shows_mirror_view(frame: np.ndarray, *, pixel_size_nm: float, d_spacing_nm: float) -> bool:
    """Whether ``frame``'s lattice is the mirror image of the handedness the bundled
    networks were trained on (`Lattice.is_mirror_view`; False where no in-layer reflection
    tells): `analyze` then shows them the frames flipped.

    Parameters
    ----------
    frame : ndarray (H, W)
    pixel_size_nm, d_spacing_nm : float
        Pixel size [nm/px]; (003) spacing [nm].

    Returns
    -------
    bool
    """
    lattice = measure_lattice([frame], pixel_size_nm=pixel_size_nm, d_spacing_nm=d_spacing_nm)
    return lattice is not None and lattice.is_mirror_view


def _refined(spec: Spectrum, peak: np.ndarray, on_grid: np.ndarray) -> np.ndarray:
    """Sub-bin (kx, ky) [cycles/px] of a spectral peak; its bin where refining fails."""
    refined = spec.refine(peak)
    return on_grid if refined is None else np.asarray(refined)


def snap_h(tracks: pd.DataFrame, lattice: Lattice | None, *,
           max_angle_deg: float = MAX_SNAP_DEG) -> pd.DataFrame:
    """Set each track's **h** and **b** to the allowed dislocation nearest its mean **h**.

    Parameters
    ----------
    tracks : DataFrame
        ``particle``, ``hx``, ``hy`` (and ``bx_nm``, ``by_nm``) per detection.
    lattice : Lattice or None
        The movie's lattice; without one (or without its in-layer reflection)
        ``tracks`` is returned as is.
    max_angle_deg : float
        Tracks whose mean **h** is further from every allowed one keep theirs.

    Returns
    -------
    DataFrame
        ``tracks`` with ``hx, hy`` (``bx_nm, by_nm``) replaced on the snapped tracks.
    """
    h_ok, b_ok = lattice.allowed() if lattice is not None else (np.empty((0, 2)),) * 2
    if not len(h_ok) or tracks.empty:
        return tracks
    # Each detection's direction counts alike (annotated or other detectors' h need not be unit).
    h = pd.DataFrame(unit(tracks[["hx", "hy"]].to_numpy(float)), index=tracks.index, columns=["hx", "hy"])
    mean_h = unit(h.groupby(tracks["particle"]).transform("mean").to_numpy(float))
    cos = mean_h @ h_ok.T
    best = np.argmax(cos, axis=1)
    snap = cos[np.arange(len(best)), best] >= np.cos(np.deg2rad(max_angle_deg))
    out = tracks.copy()
    out.loc[snap, ["hx", "hy"]] = h_ok[best[snap]]
    if {"bx_nm", "by_nm"} <= set(out.columns):
        out.loc[snap, ["bx_nm", "by_nm"]] = b_ok[best[snap]]
    return out


def fringes_twice_apart(frames: list[np.ndarray], *, pixel_size_nm: float, d_spacing_nm: float) -> bool:
    """Whether fringes twice the (003) spacing apart stand out in ``frames`` at
    ``pixel_size_nm`` [nm/px]: no reflection of a layered oxide lies there, but where the
    pixel size is twice the true one (a binned image, a calibration off by 2), the (003)
    fringes do, and the in-layer ones (~0.24 nm) then pass for (003), so that the check
    for (003) fringes (`measure_lattice`) passes.

    Frames of no lattice (blank, vacuum, noise) give False; NaN pixels (alignment
    padding) count as the frame's mean. On the 14 real perfect lattices of other
    materials in the benchmark (tests/benchmarks/bench_accuracy.py) it is False at their
    pixel sizes.
    """
    kept = []
    for frame in frames:
        frame = np.asarray(frame, float)
        finite = np.isfinite(frame)
        if finite.any() and np.ptp(frame[finite]) > 0:
            kept.append(np.where(finite, frame, frame[finite].mean()))
    if not kept:
        return False
    try:
        twice = measure_lattice(kept, pixel_size_nm=pixel_size_nm, d_spacing_nm=2 * d_spacing_nm)
        here = measure_lattice(kept, pixel_size_nm=pixel_size_nm, d_spacing_nm=d_spacing_nm)
    except ValueError:  # too small a frame for a spectrum
        return False
    if twice is None or here is None:
        return False
    # At twice the true pixel size, what passed for (003) is a reflection of the lattice
    # whose (003) lies at twice the spacing: an in-layer one, or its (006). Elsewhere (a
    # coarse frame, ~0.16-0.2 nm/px, aliasing the 0.24 nm fringes near 2d) it is not.
    g, k = twice.g003, here.g003
    along = abs(float(g @ k)) / (np.hypot(*g) * np.hypot(*k))
    if along > np.cos(np.deg2rad(5)):
        return bool(abs(np.hypot(*k) / np.hypot(*g) - 2) < 2 * D_SPACING_TOLERANCE)
    return bool(is_layered_reflection(k, g))
