"""Image formation: HRTEM (phase grating + lens) and HAADF-STEM (incoherent
columns * probe), then the detector (MTF, dose, Poisson noise, gain, offset).

Columns are splatted onto an internal grid oversampled 2x with a margin, so
that the lens' delocalisation does not wrap around; the detector pixel then
integrates 2x2 internal pixels.

Validity: the HRTEM model is a *phase-object* approximation with an effective
phase scale (``Optics.phase``, the peak phase of a transition-metal column,
0.15-1.5 rad) standing in for thickness. It is faithful for specimens of a few
nm; beyond ~5 nm channelling and multiple scattering (contrast reversals with
thickness) are not simulated, only mimicked by the random phase scale,
absorption and contrast polarity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from dislotrack.data_gen.conventions import D003_LINIO2_NM, electron_wavelength_nm

OVERSAMPLE = 2
PAD_INTERNAL = 24  # internal pixels of margin on each side


@dataclass(frozen=True)
class Grid:
    """Output pixel grid plus the oversampled internal grid used for rendering."""

    size: int  # output side [px]
    pixel_size: float  # output pixel size [nm/px]

    @property
    def n_internal(self) -> int:
        return sfft.next_fast_len(OVERSAMPLE * self.size + 2 * PAD_INTERNAL, real=True)

    @property
    def internal_pixel(self) -> float:
        return self.pixel_size / OVERSAMPLE

    @property
    def fov_nm(self) -> float:
        return self.size * self.pixel_size

    def bounds(self, margin_nm: float = 0.0) -> tuple[float, float, float, float]:
        """Region [nm] covered by the internal grid (plus a margin)."""
        lo = -(PAD_INTERNAL + 0.5) * self.internal_pixel - margin_nm
        hi = (self.n_internal - PAD_INTERNAL - 0.5) * self.internal_pixel + margin_nm
        return (lo, hi, lo, hi)

    def frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """Spatial frequencies kx (1, n) and ky (n, 1) of the internal grid [1/nm]."""
        k = sfft.fftfreq(self.n_internal, d=self.internal_pixel).astype(np.float32)
        return k[None, :], k[:, None]


@lru_cache(maxsize=8)
def _polar(grid: Grid) -> dict[str, np.ndarray]:
    """Cached float32 powers of |k| and |k|^2 cos/sin(2 phi_k) of the internal grid.

    Also, under ``"order"``, the flat indices of the grid sorted by |k|, and each
    array flattened in that order (suffix ``_s``): everything outside an objective
    aperture is then a contiguous tail that the lens never needs to evaluate.
    """
    kx, ky = grid.frequencies()
    k2 = kx**2 + ky**2
    k = np.sqrt(k2)
    # k2 * cos(2 phi) = kx^2 - ky^2 and k2 * sin(2 phi) = 2 kx ky: no division needed.
    out = {"k2": k2, "k": k, "k3": k2 * k, "k4": k2 * k2,
           "k2cos2": kx**2 - ky**2, "k2sin2": 2 * kx * ky}
    order = np.argsort(k.ravel(), kind="stable")
    out.update({f"{name}_s": np.ascontiguousarray(a.ravel()[order]) for name, a in out.items()})
    out["order"] = order
    return out


def splat(xy: np.ndarray, weight: np.ndarray, grid: Grid) -> np.ndarray:
    """Bilinear deposit of point weights onto the internal grid.

    A point at ``x`` nm lands at internal index ``x / p_int + PAD + (OVERSAMPLE-1)/2``
    so that, after 2x2 binning, a point at ``i * pixel_size`` is centred on output
    pixel ``i`` (pixel-centre convention).
    """
    n = grid.n_internal
    fx = xy[:, 0] * (1 / grid.internal_pixel) + (PAD_INTERNAL + (OVERSAMPLE - 1) / 2)
    fy = xy[:, 1] * (1 / grid.internal_pixel) + (PAD_INTERNAL + (OVERSAMPLE - 1) / 2)
    ix, iy = np.floor(fx), np.floor(fy)
    # Points off the grid get zero weight (cheaper than boolean indexing every array).
    w = np.where((ix >= 0) & (ix < n - 1) & (iy >= 0) & (iy < n - 1), weight, 0.0)
    tx, ty = fx - ix, fy - iy
    flat = np.clip(iy, 0, n - 2).astype(np.int64) * n + np.clip(ix, 0, n - 2).astype(np.int64)
    idx = np.empty((4, len(flat)), np.int64)
    val = np.empty((4, len(flat)), np.float64)
    wy0, wy1 = w * (1 - ty), w * ty
    np.multiply(wy0, 1 - tx, out=val[0])
    np.multiply(wy0, tx, out=val[1])
    np.multiply(wy1, 1 - tx, out=val[2])
    np.multiply(wy1, tx, out=val[3])
    np.add(flat, 0, out=idx[0])
    np.add(flat, 1, out=idx[1])
    np.add(flat, n, out=idx[2])
    np.add(flat, n + 1, out=idx[3])
    return np.bincount(idx.ravel(), weights=val.ravel(), minlength=n * n).reshape(n, n)


def _field_slice(grid: Grid) -> tuple[slice, slice]:
    """The internal pixels that bin to the output field (the margin cropped)."""
    s = slice(PAD_INTERNAL, PAD_INTERNAL + grid.size * OVERSAMPLE)
    return s, s


def bin_to_output(internal: np.ndarray, grid: Grid, *, padded: bool = True) -> np.ndarray:
    """Crop the margin (unless already cropped: ``padded=False``) and integrate
    OVERSAMPLE x OVERSAMPLE internal pixels."""
    core = internal[_field_slice(grid)] if padded else internal
    # Strided adds: much faster than .mean(axis=(1, 3)) on the 4-d view.
    out = np.zeros((grid.size, grid.size), dtype=core.dtype)
    for i in range(OVERSAMPLE):
        for j in range(OVERSAMPLE):
            out += core[i::OVERSAMPLE, j::OVERSAMPLE]
    out *= 1.0 / OVERSAMPLE**2
    return out


# --------------------------------------------------------------------------- HRTEM
@dataclass(frozen=True)
class Optics:
    """HRTEM lens and illumination (Kirkland's conventions: defocus > 0 = underfocus)."""

    voltage_kv: float = 200.0
    defocus_nm: float = 50.0
    cs_mm: float = 1.0
    astig_nm: float = 0.0
    astig_angle: float = 0.0
    focal_spread_nm: float = 4.0
    convergence_mrad: float = 0.2
    aperture_inv_nm: float = 8.0  # objective aperture radius [1/nm]
    phase: float = 0.5  # peak phase of a TM column at unit thickness [rad]
    absorption: float = 0.05  # imaginary part of the potential relative to the real part
    column_sigma_nm: float = 0.04  # thermal + atomic width of a column's potential

    def as_dict(self) -> dict:
        return asdict(self)


def scherzer_defocus(cs_mm: float, voltage_kv: float) -> float:
    """Scherzer defocus [nm] (positive = underfocus) for spherical aberration Cs [mm]."""
    lam = electron_wavelength_nm(voltage_kv)
    return float(np.sign(cs_mm) * 1.2 * np.sqrt(abs(cs_mm) * 1e6 * lam))


def aberration_phase(k2: np.ndarray, k2cos2: np.ndarray, k2sin2: np.ndarray, o: Optics) -> np.ndarray:
    """Aberration function chi(k) [rad]; ``k2cos2``/``k2sin2`` are |k|^2 cos/sin(2 phi_k)."""
    lam = electron_wavelength_nm(o.voltage_kv)
    cs = o.cs_mm * 1e6
    a = np.pi * lam
    # chi = pi lam (Cs lam^2 k^4 / 2 - df k^2 - A k^2 cos(2 (phi - phi_A)))
    chi = np.float32(a * 0.5 * cs * lam**2) * (k2 * k2)
    chi -= np.float32(a * o.defocus_nm) * k2
    chi -= np.float32(a * o.astig_nm * np.cos(2 * o.astig_angle)) * k2cos2
    chi -= np.float32(a * o.astig_nm * np.sin(2 * o.astig_angle)) * k2sin2
    return chi


def transfer_function(grid: Grid, o: Optics) -> np.ndarray:
    """Coherent transfer function (complex64) with temporal/spatial envelopes and aperture."""
    p = _polar(grid)
    n_inside, values = _transfer_inside(p, o)
    out = np.zeros(p["k"].size, np.complex64)
    out[p["order"][:n_inside]] = values
    return out.reshape(p["k"].shape)


def _transfer_inside(p: dict[str, np.ndarray], o: Optics) -> tuple[int, np.ndarray]:
    """The transfer function at the ``n_inside`` frequencies within the aperture, in
    |k| order (``_polar``'s ``order``); it is zero everywhere else."""
    n = int(np.searchsorted(p["k_s"], np.float32(o.aperture_inv_nm), side="right"))
    k, k2, k3, k4 = (p[f"{name}_s"][:n] for name in ("k", "k2", "k3", "k4"))
    lam = electron_wavelength_nm(o.voltage_kv)
    cs = o.cs_mm * 1e6
    chi = aberration_phase(k2, p["k2cos2_s"][:n], p["k2sin2_s"][:n], o)
    # Quasi-coherent envelopes: focal spread (temporal) and beam convergence (spatial).
    grad_chi = np.float32(cs * lam**3) * k3
    grad_chi -= np.float32(o.defocus_nm * lam) * k
    grad_chi *= grad_chi
    grad_chi *= np.float32(-((np.pi * o.convergence_mrad * 1e-3 / lam) ** 2))
    env = np.float32(-0.5 * (np.pi * lam * o.focal_spread_nm) ** 2) * k4
    env += grad_chi
    np.exp(env, out=env)
    out = np.empty(n, np.complex64)
    np.cos(chi, out=out.real)
    out.real *= env
    np.sin(chi, out=chi)
    np.negative(chi, out=out.imag)
    out.imag *= env
    return n, out


def fringe_transfer(o: Optics, d_nm: float = D003_LINIO2_NM) -> float:
    """|sin chi| x envelopes at spatial frequency 1/d: how visible a fringe is."""
    lam = electron_wavelength_nm(o.voltage_kv)
    k = 1.0 / d_nm
    chi = float(aberration_phase(np.array(k * k), np.array(k * k), np.array(0.0), o))
    e_t = np.exp(-0.5 * (np.pi * lam * o.focal_spread_nm) ** 2 * k**4)
    return float(abs(np.sin(chi)) * e_t)


def draw_optics(rng: np.random.Generator) -> Optics:
    """Random HRTEM conditions over the range of uncorrected and corrected instruments,
    rejecting those that do not transfer the (003) fringes (nobody records those)."""
    for _ in range(50):
        kv = float(rng.choice([200.0, 300.0]))
        corrected = rng.random() < 0.4
        cs = float(rng.uniform(-0.035, 0.035) if corrected else rng.uniform(0.5, 1.5))
        dfs = scherzer_defocus(cs, kv) if abs(cs) > 1e-3 else 10.0
        defocus = float(dfs * rng.uniform(-1.6, 1.6) + rng.normal(0, 8))
        o = Optics(
            voltage_kv=kv, defocus_nm=defocus, cs_mm=cs,
            astig_nm=float(abs(rng.normal(0, 3))), astig_angle=float(rng.uniform(0, np.pi)),
            focal_spread_nm=float(rng.uniform(2, 6)),
            convergence_mrad=float(rng.uniform(0.05, 0.3)),
            aperture_inv_nm=float(rng.uniform(5, 12)),
            phase=float(rng.uniform(0.15, 1.5)),
            absorption=float(rng.uniform(0.0, 0.15)),
            column_sigma_nm=float(rng.uniform(0.03, 0.06)),
        )
        if fringe_transfer(o) > 0.3:
            return o
    return Optics(voltage_kv=kv, cs_mm=1.0, defocus_nm=scherzer_defocus(1.0, kv))


class PhaseGrating:
    """Fourier transform of one structure's transmission function, cached so that
    many lens settings can be drawn from one (expensive) structure."""

    def __init__(self, potential: np.ndarray, grid: Grid, o: Optics, ref_peak: float):
        k2 = _polar(grid)["k2"]
        vk = sfft.rfft2(potential.astype(np.float32))
        prof = np.exp(np.float32(-2 * np.pi**2 * o.column_sigma_nm**2) * k2[:, : vk.shape[1]])
        phi = sfft.irfft2(vk * prof, s=potential.shape) * np.float32(o.phase / ref_peak)
        wave = np.empty(phi.shape, np.complex64)
        amp = np.exp(np.float32(-o.absorption) * phi)
        wave.real = amp * np.cos(phi)
        wave.imag = amp * np.sin(phi)
        self.grid = grid
        # The spectrum in |k| order, so that a lens only touches its aperture's part.
        self._order = _polar(grid)["order"]
        self._wave_s = sfft.fft2(wave, overwrite_x=True).ravel()[self._order]

    def image(self, o: Optics) -> np.ndarray:
        """Intensity on the output grid for one lens setting (vacuum = 1)."""
        n, tf = _transfer_inside(_polar(self.grid), o)
        spectrum = np.zeros(self._wave_s.size, np.complex64)
        spectrum[self._order[:n]] = self._wave_s[:n] * tf
        n_int = self.grid.n_internal
        psi = sfft.ifft2(spectrum.reshape(n_int, n_int), overwrite_x=True)
        psi = psi[_field_slice(self.grid)]  # only the pixels that are binned to the output
        inten = np.square(psi.real)
        inten += np.square(psi.imag)
        return bin_to_output(inten, self.grid, padded=False)


def column_peak(weight: float, sigma_nm: float, grid: Grid) -> float:
    """Approximate peak of the splatted, Gaussian-smoothed potential of one column."""
    return weight / max(1.0, 2 * np.pi * (sigma_nm / grid.internal_pixel) ** 2)


# --------------------------------------------------------------------------- STEM
@dataclass(frozen=True)
class Probe:
    """HAADF-STEM probe (two Gaussians: core + tail) and scan distortions."""

    sigma_nm: float = 0.05
    tail_sigma_nm: float = 0.3
    tail_fraction: float = 0.1
    jitter_px: float = 0.1  # RMS scan-line jitter [output px]
    collection: float = 0.1  # fraction of the beam on the HAADF detector, on a TM column
    background: float = 0.1  # relative incoherent background

    def as_dict(self) -> dict:
        return asdict(self)


def draw_probe(rng: np.random.Generator) -> Probe:
    """Random STEM conditions."""
    return Probe(
        sigma_nm=float(rng.uniform(0.03, 0.08)),
        tail_sigma_nm=float(rng.uniform(0.2, 0.6)),
        tail_fraction=float(rng.uniform(0.0, 0.3)),
        jitter_px=float(rng.uniform(0.0, 0.3)),
        collection=float(rng.uniform(0.05, 0.3)),
        background=float(rng.uniform(0.02, 0.3)),
    )


class ProbeConvolution:
    """Spectrum of one structure's HAADF cross-sections, cached so that many probes can
    be drawn from one structure (the STEM twin of `PhaseGrating`)."""

    def __init__(self, intensity_internal: np.ndarray, grid: Grid):
        self.spectrum = sfft.rfft2(intensity_internal.astype(np.float32))
        self.shape = intensity_internal.shape
        self.grid = grid

    def image(self, probe: Probe) -> np.ndarray:
        """Incoherent image (cross-sections convolved with the probe) on the output grid."""
        k2 = _half_plane_k2(self.grid)
        g = lambda s: np.exp(np.float32(-2 * np.pi**2 * s * s) * k2)  # noqa: E731
        otf = g(probe.sigma_nm)
        if probe.tail_fraction > 0:
            otf *= np.float32(1 - probe.tail_fraction)
            otf += np.float32(probe.tail_fraction) * g(probe.tail_sigma_nm)
        img = sfft.irfft2(self.spectrum * otf, s=self.shape)
        return bin_to_output(img, self.grid)


@lru_cache(maxsize=8)
def _half_plane_k2(grid: Grid) -> np.ndarray:
    """|k|^2 of the internal grid's real-FFT half plane, contiguous (cached)."""
    n = grid.n_internal
    return np.ascontiguousarray(_polar(grid)["k2"][:, : n // 2 + 1])


def stem_image(intensity_internal: np.ndarray, grid: Grid, probe: Probe) -> np.ndarray:
    """Incoherent image: column cross-sections convolved with the probe, on the output grid."""
    return ProbeConvolution(intensity_internal, grid).image(probe)


def scan_jitter(image: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """Shift each row by its own amount [px] (Fourier shift along x)."""
    kx = sfft.rfftfreq(image.shape[1])
    f = sfft.rfft(image, axis=1) * np.exp(-2j * np.pi * kx[None, :] * shifts_px[:, None])
    return sfft.irfft(f, n=image.shape[1], axis=1)


# --------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class Detector:
    """Dose, MTF, gain and offset. ``dose`` is in electrons per square angstrom."""

    dose: float = 1000.0
    mtf_sigma_px: float = 0.5
    gain: float = 1.0
    offset: float = 0.0
    read_noise: float = 0.0  # [electrons]: SD of the read noise, times gain in counts

    def as_dict(self) -> dict:
        return asdict(self)


def draw_detector(rng: np.random.Generator, dose: float | None = None) -> Detector:
    """Random detector; dose log-uniform in 20-5000 e/A^2 unless given."""
    return Detector(
        dose=float(dose if dose is not None else np.exp(rng.uniform(np.log(20), np.log(5000)))),
        mtf_sigma_px=float(rng.uniform(0.0, 0.8)),
        gain=float(np.exp(rng.uniform(np.log(0.2), np.log(20)))),
        offset=float(rng.uniform(-50, 200)),
        read_noise=float(rng.uniform(0, 2)),
    )


#: Mean count above which Poisson noise is drawn as a rounded Gaussian (skewness
#: 1/sqrt(mean) <= 0.071 there; the mean and variance stay exact, 3x faster).
GAUSSIAN_COUNTS_ABOVE = 200.0


def poisson_counts(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson-distributed counts (float32) for non-negative means."""
    mean = np.asarray(mean)
    if mean.size and mean.min() >= GAUSSIAN_COUNTS_ABOVE:
        z = rng.standard_normal(mean.shape, dtype=np.float32)
        z *= np.sqrt(mean, dtype=np.float32)
        z += mean
        return np.rint(z, out=z)
    high = mean >= GAUSSIAN_COUNTS_ABOVE
    if not high.any():
        return rng.poisson(mean.astype(np.float64)).astype(np.float32)
    out = np.empty(mean.shape, np.float32)
    out[~high] = rng.poisson(mean[~high])
    m = mean[high]
    out[high] = np.rint(m + np.sqrt(m) * rng.standard_normal(m.shape, dtype=np.float32))
    return out


def detect(expected: np.ndarray, det: Detector, pixel_size_nm: float,
           rng: np.random.Generator) -> np.ndarray:
    """Turn a relative intensity (1 = incident beam) into recorded counts (float32).

    The MTF blurs the signal; Poisson noise of ``dose * pixel_area`` electrons per
    unit intensity is then added (a counting detector), then gain, offset, read noise.
    """
    from scipy.ndimage import gaussian_filter

    sig = np.asarray(expected, np.float32)
    if det.mtf_sigma_px > 0:
        sig = gaussian_filter(sig, det.mtf_sigma_px, mode="reflect")
    electrons = det.dose * (pixel_size_nm * 10.0) ** 2  # e per pixel at intensity 1
    counts = poisson_counts(np.clip(sig, 0, None) * np.float32(electrons), rng)
    counts *= np.float32(det.gain)
    counts += np.float32(det.offset)
    if det.read_noise > 0:
        counts += (det.read_noise * det.gain) * rng.standard_normal(counts.shape).astype(np.float32)
    return counts
