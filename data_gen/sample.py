"""Labelled synthetic frames: the public entry point of the generator.

>>> import numpy as np
>>> from dislotrack.data_gen.sample import GeneratorConfig, make_sample
>>> s = make_sample(np.random.default_rng(0), GeneratorConfig(size=64))
>>> s.image.shape, s.image.dtype
((64, 64), dtype('float32'))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage

from dislotrack.data_gen.conventions import CANONICAL_PIXEL_SIZE_NM, h_from_b_hat, unit
from dislotrack.data_gen.crystal import MATERIALS, ProjectedCrystal
from dislotrack.data_gen.dislocations import Dislocation
from dislotrack.data_gen.imaging import (
    Detector,
    Grid,
    Optics,
    PhaseGrating,
    Probe,
    ProbeConvolution,
    column_peak,
    detect,
    draw_detector,
    draw_optics,
    draw_probe,
    scan_jitter,
    splat,
)
from dislotrack.data_gen.labels import dense_targets
from dislotrack.data_gen.specimen import (
    SpecimenParams,
    add_rocksalt_near,
    amorphous_atoms,
    displace_lattice,
    draw_specimen,
    grain_frame,
    in_crystal,
    rocksalt_mask,
    rotation_matrix,
    second_grain,
    snap_core,
    snap_pair,
    specimen_columns,
    undisplace_lattice,
    visible_cores,
)

CORE_COLUMNS = ["x", "y", "hx", "hy", "bx_nm", "by_nm", "particle", "kind", "partner"]


@dataclass(frozen=True)
class GeneratorConfig:
    """What the generator draws. Ranges are sampled per image (or per movie).

    Attributes
    ----------
    size : int
        Image side [px].
    pixel_size : float
        [nm/px]; ``pixel_size_jitter`` draws it within +-that relative amount.
    mode : {"hrtem", "stem", "mixed"}
    dose : (float, float)
        Log-uniform dose range [e/A^2].
    density : float
        Mean number of dislocation sites (single or dipole) per 100 nm^2.
    dipole_fraction, basal_fraction : float
        Fraction of sites that are dipoles (movies: `draw_scenario` draws 2 x this many
        dipoles on average, so it may exceed 1 there, and drops one that finds no room
        `MIN_CORE_APPROACH_NM` clear of the others); of dislocations with a basal
        Burgers vector.
    perfect_fraction : float
        Fraction of images with no dislocation at all (single images only).
    rocksalt_probability : float
        Probability of an RS domain around each core.
    realism : float
        Scales the probability of every non-ideality (0 = perfect crystal).
    material : str or None
        Fixed material, or None to draw one.
    """

    size: int = 256
    pixel_size: float = CANONICAL_PIXEL_SIZE_NM
    pixel_size_jitter: float = 0.0
    mode: str = "mixed"
    dose: tuple[float, float] = (20.0, 5000.0)
    density: float = 1.0
    dipole_fraction: float = 0.35
    basal_fraction: float = 0.2
    perfect_fraction: float = 0.1
    rocksalt_probability: float = 0.3
    realism: float = 1.0
    material: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("hrtem", "stem", "mixed"):
            raise ValueError(f"mode must be hrtem, stem or mixed, got {self.mode!r}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 px, got {self.size}")
        if not 0.01 <= self.pixel_size <= 1.0:
            raise ValueError(f"pixel_size {self.pixel_size} nm/px is outside 0.01-1 nm/px")
        if self.material is not None and self.material not in MATERIALS:
            raise ValueError(f"unknown material {self.material!r}; choose from {', '.join(MATERIALS)}")
        lo, hi = self.dose
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
            raise ValueError(f"dose must be a range (low, high) of e/A^2 with 0 < low <= high, "
                             f"got {self.dose}")
        for name in ("density", "dipole_fraction", "basal_fraction", "perfect_fraction",
                     "rocksalt_probability", "realism"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):  # NaN fails too
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("basal_fraction", "perfect_fraction", "rocksalt_probability"):  # chances
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be at most 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sample:
    """One labelled frame.

    ``cores`` has columns x, y [px], hx, hy, bx_nm, by_nm, particle, kind
    (single | dipole), partner (-1 if none).
    """

    image: np.ndarray
    cores: pd.DataFrame
    rs_mask: np.ndarray
    meta: dict = field(default_factory=dict)
    #: The expected image before the detector (no shot or read noise), when kept.
    clean: np.ndarray | None = field(default=None, repr=False)

    def targets(self) -> dict:
        """Dense training targets (see `labels.dense_targets`)."""
        return dense_targets(self.cores, self.rs_mask, pixel_size=self.meta["pixel_size"])


# ----------------------------------------------------------------- dislocations
def burgers_vector(rng: np.random.Generator, pc: ProjectedCrystal, rotation: float,
                   basal_fraction: float) -> np.ndarray:
    """A random projected Burgers vector [nm] in image axes (either sign)."""
    kind = "basal" if rng.random() < basal_fraction else "misfit"
    b = pc.burgers[kind] * rng.choice([-1.0, 1.0])
    return rotation_matrix(rotation) @ b


def draw_dislocations(rng: np.random.Generator, spec: SpecimenParams, cfg: GeneratorConfig,
                      fov_nm: float) -> list[Dislocation]:
    """Singles and dipoles placed over the field (plus a 1 nm margin)."""
    if rng.random() < cfg.perfect_fraction:
        return []
    n_sites = rng.poisson(cfg.density * (fov_nm + 2) ** 2 / 100.0)
    out: list[Dislocation] = []
    sites: list[np.ndarray] = []
    pid = 0
    for _ in range(n_sites):
        for _try in range(20):
            c = rng.uniform(-1.0, fov_nm + 1.0, 2)
            if all(np.linalg.norm(c - s) > 2.5 for s in sites):
                break
        else:
            continue
        sites.append(c)
        # A core in the second grain has that grain's b and lattice sites.
        grain = bool(second_grain(spec, c)[0])
        b = burgers_vector(rng, spec.crystal, grain_frame(spec, grain)[0], cfg.basal_fraction)
        if rng.random() < cfg.dipole_fraction:
            out += snapped_pair(spec, dipole_pair(rng, c, b, pid), grain)
            pid += 2
        else:
            out.append(snapped(spec, Dislocation(float(c[0]), float(c[1]), b, particle=pid), grain))
            pid += 1
    return out


def snapped(spec: SpecimenParams, d: Dislocation, grain: bool | None = None) -> Dislocation:
    """The dislocation moved to its lattice site (`specimen.snap_core`; ``grain``: the
    grain whose lattice it is in, by default the one at its position)."""
    x, y = snap_core(spec, np.array([d.x, d.y]), d.b, grain)
    return replace(d, x=float(x), y=float(y))


def snapped_pair(spec: SpecimenParams, pair: tuple[Dislocation, Dislocation],
                 grain: bool | None = None) -> list[Dislocation]:
    """A dipole's two cores moved to their lattice sites together, at least as far apart
    as drawn (`specimen.snap_pair`), so never on neighbouring sites ~0.14 nm apart."""
    d1, d2 = pair
    p1, p2 = snap_pair(spec, np.array([d1.x, d1.y]), np.array([d2.x, d2.y]), d1.b, grain)
    return [replace(d1, x=float(p1[0]), y=float(p1[1])), replace(d2, x=float(p2[0]), y=float(p2[1]))]


def dipole_pair(rng: np.random.Generator, centre: np.ndarray, b: np.ndarray, pid: int,
                separation: float | None = None) -> tuple[Dislocation, Dislocation]:
    """Two cores of opposite b (and h), 0.5-3 nm apart, on the same or different planes
    (not yet on lattice sites: `snapped_pair`)."""
    sep = separation if separation is not None else rng.uniform(0.5, 3.0)
    bhat = unit(b)
    h = h_from_b_hat(bhat)
    alpha = rng.choice([0.0, np.pi / 2]) if rng.random() < 0.6 else rng.uniform(0, np.pi)
    e = np.cos(alpha) * bhat + np.sin(alpha) * h
    p1, p2 = centre - sep / 2 * e, centre + sep / 2 * e
    return (Dislocation(*map(float, p1), b, particle=pid, partner=pid + 1),
            Dislocation(*map(float, p2), -b, particle=pid + 1, partner=pid))


def empty_cores() -> pd.DataFrame:
    """A cores table with no rows and the right dtypes."""
    dtypes = {"particle": int, "partner": int, "kind": object}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, float)) for c in CORE_COLUMNS})


# ----------------------------------------------------------------- rendering
@dataclass
class FrameGeometry:
    """Maps specimen coordinates [nm] to image coordinates [nm] for one frame."""

    drift_nm: np.ndarray = field(default_factory=lambda: np.zeros(2))
    distortion: np.ndarray = field(default_factory=lambda: np.eye(2))  # STEM slow-scan
    centre_nm: float = 0.0

    def apply(self, xy: np.ndarray) -> np.ndarray:
        c = np.array([self.centre_nm, self.centre_nm])
        return c + (xy + self.drift_nm - c) @ self.distortion.T


def _cores_table(spec: SpecimenParams, disl: list[Dislocation], geo: FrameGeometry,
                 grid: Grid) -> pd.DataFrame:
    """All cores in image axes [px], including those outside the field.

    A core is where the image shows it (`specimen.visible_cores`: moved with the
    lattice around it by the other cores' fields and the smooth strain), then mapped
    by the frame geometry. Cores beyond a vacuum edge show nothing and are left out.
    """
    seen = visible_cores(spec, disl) if disl else np.zeros((0, 2))
    keep = np.flatnonzero(in_crystal(spec, seen))
    if not len(keep):
        return empty_cores()
    disl = [disl[i] for i in keep]
    xy = geo.apply(seen[keep]) / grid.pixel_size
    b = np.array([d.b for d in disl]) @ geo.distortion.T
    h = h_from_b_hat(unit(b))
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "hx": h[:, 0], "hy": h[:, 1],
                         "bx_nm": b[:, 0], "by_nm": b[:, 1],
                         "particle": [d.particle for d in disl],
                         "kind": ["dipole" if d.partner >= 0 else "single" for d in disl],
                         "partner": [d.partner for d in disl]})


#: Half the height [nm] of a core's signature in the image: the (003) fringes end over
#: ~0.8 nm (the Bragg amplitude's zero), so the core the image shows moves with the mean
#: scan jitter of the rows within this distance, not with one row's.
JITTER_CORE_HALF_SPAN_NM = 0.4


def core_row_shift(row_shift: np.ndarray, y: np.ndarray, half_span_px: float) -> np.ndarray:
    """Scan-jitter shift [px] of cores at rows ``y`` [px]: the mean of ``row_shift`` over
    the image rows within ``half_span_px`` of each (the nearest row if none is).

    Examples
    --------
    >>> core_row_shift(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.2, 3.4]), 1.0).tolist()
    [1.5, 3.0]
    """
    y = np.asarray(y, dtype=float)
    n = len(row_shift)
    cum = np.concatenate([[0.0], np.cumsum(row_shift)])
    lo = np.clip(np.ceil(y - half_span_px).astype(int), 0, n - 1)
    hi = np.clip(np.floor(y + half_span_px).astype(int), 0, n - 1)
    nearest = np.clip(np.rint(y).astype(int), 0, n - 1)
    empty = hi < lo  # the window misses the image: beyond its top or bottom
    lo, hi = np.where(empty, nearest, lo), np.where(empty, nearest, hi)
    return (cum[hi + 1] - cum[lo]) / (hi - lo + 1)


def _cores_in_field(table: pd.DataFrame, grid: Grid, row_shift: np.ndarray | None) -> pd.DataFrame:
    """The cores seen in the field, shifted with their scan lines (STEM jitter,
    `core_row_shift` over `JITTER_CORE_HALF_SPAN_NM`)."""
    if not len(table):
        return table
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    if row_shift is not None:
        x = x + core_row_shift(row_shift, y, JITTER_CORE_HALF_SPAN_NM / grid.pixel_size)
    lim = grid.size - 0.5
    inside = (x >= -0.5) & (x < lim) & (y >= -0.5) & (y < lim)
    out = table[inside].reset_index(drop=True)
    if row_shift is not None:
        out["x"] = x[inside]
    return out


#: The band tested point by point: the 3 x 3 pixels around the pixel nearest to each
#: point of a domain's mapped outline. As the outline is sampled every <= 0.5 px and
#: lies within ~0.5 px of the true edge (a branch cut's step included), one of any two
#: neighbouring pixels on either side of the edge is in it.
_BAND = np.ones((3, 3), bool)


def _rs_raster(spec: SpecimenParams, disl: list[Dislocation], geo: FrameGeometry, grid: Grid,
               growth: float) -> np.ndarray:
    """The RS mask of one frame (uint8, ``grid.size`` square): `rocksalt_mask` at every
    pixel centre, ``disl`` being the frame's dislocations.

    Inverting the displacement at every pixel would cost more than rendering the frame,
    so only a band around each domain's outline, mapped forward (`displace_lattice`,
    then the frame geometry), is inverted point by point, starting from the outline's
    own reference points. The rest of the outline's bounding box falls into connected
    regions wholly inside or outside the domain; each is decided by one of its pixels,
    by the parity of the outline's crossings. Where a branch cut crosses the outline,
    the outline steps by b along the cut, which its straight segment there follows.
    """
    n = grid.size
    if not spec.rocksalt:
        return np.zeros((n, n), np.uint8)
    ps = grid.pixel_size

    def to_spec(rc: np.ndarray) -> np.ndarray:
        return _pixel_to_specimen(rc, geo, ps)

    ref = [dom.boundary(growth, spacing_nm=0.5 * ps) for dom in spec.rocksalt]
    seen = geo.apply(displace_lattice(spec, np.concatenate(ref), disl, all_cores_at_once=True))
    seen = seen[:, ::-1] / ps
    outlines = np.split(seen, np.cumsum([len(r) for r in ref])[:-1])
    mask = np.zeros((n, n), bool)
    band_px, band_start = [], []
    for out, o_ref in zip(outlines, ref, strict=True):
        # Densify the closed outline (row, col) to <= 0.5 px steps, with its reference points.
        step = np.roll(out, -1, axis=0) - out
        m = np.maximum(1, np.ceil(np.hypot(*step.T) / 0.5)).astype(int)
        seg = np.repeat(np.arange(len(out)), m)
        frac = ((np.arange(len(seg)) - np.repeat(np.cumsum(m) - m, m)) / m[seg])[:, None]
        dense = out[seg] + frac * step[seg]
        lo = np.maximum(np.floor(dense.min(axis=0)).astype(int) - 2, 0)
        hi = np.minimum(np.ceil(dense.max(axis=0)).astype(int) + 3, n)
        if np.any(hi <= lo):
            continue  # the domain's image misses the field
        near = np.rint(dense).astype(int) - lo
        ok = (near >= 0).all(axis=1) & (near < hi - lo).all(axis=1)
        near, j = near[ok], np.flatnonzero(ok)
        on_line = np.zeros(hi - lo, bool)
        on_line[near[:, 0], near[:, 1]] = True
        # The reference point minus the position [nm] on the outline: a first guess of
        # the same for the band pixels next to it (the strain is small).
        back = np.zeros((*on_line.shape, 2))
        back[near[:, 0], near[:, 1]] = (o_ref[seg[j]] + frac[j] * (np.roll(o_ref, -1, axis=0)
                                        - o_ref)[seg[j]]) - to_spec(dense[j])
        band = ndimage.binary_dilation(on_line, _BAND)
        px = np.argwhere(band)
        ri, ci = ndimage.distance_transform_edt(~on_line, return_distances=False,
                                                return_indices=True)
        band_px.append(px + lo)
        band_start.append(to_spec((px + lo).astype(float)) + back[ri[band], ci[band]])
        labels, n_lab = ndimage.label(~band)
        if not n_lab:
            continue
        ids, first = np.unique(labels.ravel(), return_index=True)
        first = first[ids > 0]  # one pixel of each region, labels 1..n_lab in order
        rc = np.stack(np.unravel_index(first, labels.shape), axis=1) + lo
        lut = np.zeros(n_lab + 1, bool)
        lut[1:] = _inside_polygon(rc.astype(float), out)
        mask[lo[0]:hi[0], lo[1]:hi[1]] |= lut[labels]
    if band_px:
        px = np.concatenate(band_px)
        flat, first = np.unique(px[:, 0] * n + px[:, 1], return_index=True)
        origin = undisplace_lattice(spec, to_spec(px[first].astype(float)), disl,
                                    start=np.concatenate(band_start)[first])
        hit = np.zeros(len(flat), bool)
        for dom in spec.rocksalt:
            hit |= dom.contains(origin, growth)
        mask.ravel()[flat] = hit
    if spec.vacuum_edge is not None:
        rc = np.argwhere(mask)
        mask[rc[:, 0], rc[:, 1]] = in_crystal(spec, to_spec(rc.astype(float)))
    return mask.astype(np.uint8)


def _pixel_to_specimen(rc: np.ndarray, geo: FrameGeometry, pixel_size: float) -> np.ndarray:
    """(row, col) [px] of a frame -> specimen (x, y) [nm] (inverse of the frame geometry)."""
    c = np.array([geo.centre_nm, geo.centre_nm])
    inv = np.linalg.inv(geo.distortion)
    return (rc[:, ::-1] * pixel_size - c) @ inv.T + c - geo.drift_nm


def _jitter_rs(rs: np.ndarray, row_shift: np.ndarray, spec: SpecimenParams,
               disl: list[Dislocation], geo: FrameGeometry, grid: Grid, growth: float) -> np.ndarray:
    """The RS mask (uint8) of a frame whose rows are shifted by ``row_shift`` [px] (STEM
    scan jitter, `imaging.scan_jitter`): `rocksalt_mask` at the jittered pixel centres.

    Pixel (r, c) shows what the unjittered frame has at column ``c - row_shift[r]``. Where
    the unjittered mask ``rs`` agrees at the two columns around that point, that is the
    label; elsewhere (the outline, and points beyond the field's edge) it is computed
    point by point.
    """
    n = grid.size
    if not spec.rocksalt:
        return rs
    # Column c - shift lies between c + k and c + k + 1, k = floor(-shift): per row a
    # whole-pixel shift of the mask (a few distinct k: slices, not a gather).
    k = np.floor(-row_shift).astype(int)
    pad = int(np.abs(k).max()) + 2
    padded = np.pad(rs.view(bool), ((0, 0), (pad, pad)), mode="edge")
    a, b = np.empty((n, n), bool), np.empty((n, n), bool)
    for kk in np.unique(k):
        rows = k == kk
        a[rows] = padded[rows, pad + kk:pad + kk + n]
        b[rows] = padded[rows, pad + kk + 1:pad + kk + 1 + n]
    # Points beyond the field's edge: the mask there is not known.
    edge = np.zeros((n, n), bool)
    w = min(pad, n)
    cols = np.arange(w)
    edge[:, :w] = cols[None, :] < row_shift[:, None]
    edge[:, n - w:] |= (n - w + cols)[None, :] > n - 1 + row_shift[:, None]
    out = a
    r, col = np.nonzero((a != b) | edge)
    xy = _pixel_to_specimen(np.stack([r, col - row_shift[r]], axis=1), geo, grid.pixel_size)
    # Beyond the field's edge only points near a domain can be in one: the lattice moves
    # by well under `_DOMAIN_REACH_NM` (b/2 per core, <= ~0.6 nm in a strain blob).
    near = np.zeros(len(xy), bool)
    for dom in spec.rocksalt:
        reach = dom.radius * growth * (1 + np.abs(dom.harmonics[:, 0]).sum()) + _DOMAIN_REACH_NM
        near |= np.hypot(xy[:, 0] - dom.x, xy[:, 1] - dom.y) < reach
    out[r[~near], col[~near]] = False
    if near.any():
        out[r[near], col[near]] = rocksalt_mask(spec, xy[near], growth, disl)
    return out.astype(np.uint8)


#: How far [nm] beyond its outline a domain's image may reach (`_jitter_rs`).
_DOMAIN_REACH_NM = 2.0


def _inside_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd test of points (m, 2) against a closed polygon (k, 2), same axes."""
    a, b = poly, np.roll(poly, -1, axis=0)
    y, x = pts[:, 0:1], pts[:, 1:2]
    crosses = (a[:, 0] > y) != (b[:, 0] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = a[:, 1] + (y - a[:, 0]) * (b[:, 1] - a[:, 1]) / (b[:, 0] - a[:, 0])
    return (crosses & (x < at)).sum(axis=1) % 2 == 1


def _potential(spec: SpecimenParams, disl: list[Dislocation], geo: FrameGeometry, grid: Grid,
               mode: str, rs_growth: float) -> tuple[np.ndarray, float]:
    """Splatted column weights on the internal grid and the peak of a TM column."""
    # Specimen region seen by the internal grid, with margin for drift and distortion.
    margin = 1.0 + float(np.abs(geo.drift_nm).max()) + 0.05 * grid.fov_nm
    bounds = grid.bounds(margin)
    cols = specimen_columns(spec, disl, mode=mode, bounds=bounds, rs_growth=rs_growth)
    amo = amorphous_atoms(spec, bounds, mode=mode)
    xy = geo.apply(np.concatenate([cols.xy, amo.xy]))
    w = np.concatenate([cols.weight * cols.thickness, amo.weight])
    pot = splat(xy, w, grid)
    return pot, float(np.max(cols.weight)) if len(cols.weight) else 1.0


def render_frame(spec: SpecimenParams, disl: list[Dislocation], *, grid: Grid, mode: str,
                 imaging: Optics | Probe, detector: Detector, rng: np.random.Generator,
                 geo: FrameGeometry | None = None, rs_growth: float = 1.0,
                 n_variants: int = 1, illumination: np.ndarray | float | None = None) -> list[Sample]:
    """Render one structure under ``n_variants`` imaging/detector draws.

    The first variant uses ``imaging`` and ``detector``; further variants draw new
    ones from ``rng`` (the cached phase grating makes them cheap for HRTEM).
    ``illumination`` (a fixed map, e.g. for the frames of a movie) replaces the random
    non-uniform illumination drawn per variant.
    """
    geo = geo or FrameGeometry(centre_nm=grid.fov_nm / 2)
    pot, wmax = _potential(spec, disl, geo, grid, mode, rs_growth)
    rs = _rs_raster(spec, disl, geo, grid, rs_growth)
    table = _cores_table(spec, disl, geo, grid)
    out = []
    grating = None  # PhaseGrating or ProbeConvolution: built once, reused by the variants
    for v in range(n_variants):
        im, det = (imaging, detector) if v == 0 else _draw_imaging(rng, imaging, detector)
        row_shift = None
        if mode == "hrtem":
            if grating is None:
                grating = PhaseGrating(pot, grid, im, column_peak(wmax, im.column_sigma_nm, grid))
            expected = grating.image(im)
        else:
            if grating is None:
                grating = ProbeConvolution(pot, grid)
            expected = grating.image(im)
            expected = im.collection * expected / max(float(column_peak(wmax, im.sigma_nm, grid)), 1e-12)
            expected = expected + im.background * im.collection
            row_shift = rng.normal(0, im.jitter_px, grid.size)
            expected = np.clip(scan_jitter(expected, row_shift), 0, None)
        mask = rs if row_shift is None else _jitter_rs(rs, row_shift, spec, disl, geo, grid, rs_growth)
        expected = expected * (draw_illumination(rng, grid.size) if illumination is None else illumination)
        image = detect(expected, det, grid.pixel_size, rng)
        cores = _cores_in_field(table, grid, row_shift)
        meta = {"mode": mode, "pixel_size": grid.pixel_size, "size": grid.size,
                "material": spec.material, "zone": spec.zone,
                "rotation_deg": float(np.degrees(spec.rotation)),
                "imaging": im.as_dict(), "detector": det.as_dict(),
                "drift_nm": [float(v) for v in geo.drift_nm]}
        out.append(Sample(image, cores, mask, meta, clean=expected))
    return out


def _draw_imaging(rng: np.random.Generator, first: Optics | Probe, det: Detector) -> tuple:
    """A new lens (or probe) and detector at the same dose; for HRTEM the specimen's
    phase scale, absorption and column width stay (they belong to the cached grating)."""
    if isinstance(first, Optics):
        im = replace(draw_optics(rng), phase=first.phase, absorption=first.absorption,
                     column_sigma_nm=first.column_sigma_nm)
    else:
        im = draw_probe(rng)
    return im, replace(draw_detector(rng), dose=det.dose)


def draw_illumination(rng: np.random.Generator, size: int) -> np.ndarray | float:
    """Smooth non-uniform illumination (a gentle tilt and a bump)."""
    if rng.random() < 0.5:
        return 1.0
    yy, xx = _unit_square(size)
    g = rng.normal(0, 0.15, 2)
    c = rng.uniform(-0.5, 0.5, 2).astype(np.float32)
    r2 = (xx - c[0]) ** 2 + (yy - c[1]) ** 2
    bump = np.float32(rng.uniform(-0.2, 0.2)) * np.exp(r2 * np.float32(-10.0))
    illum = np.float32(1.0) + np.float32(g[0]) * xx + np.float32(g[1]) * yy + bump
    return np.clip(illum, np.float32(0.3), None)


@lru_cache(maxsize=4)
def _unit_square(size: int) -> np.ndarray:
    """Pixel coordinates / size - 0.5, (2, size, size); read-only (cached)."""
    out = (np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)) - np.float32(0.5)
    out.flags.writeable = False
    return out


def draw_mode(rng: np.random.Generator, cfg: GeneratorConfig) -> str:
    """The imaging mode of one image or movie."""
    return cfg.mode if cfg.mode != "mixed" else str(rng.choice(["hrtem", "stem"]))


def draw_scene(rng: np.random.Generator, cfg: GeneratorConfig) -> tuple:
    """Draw mode, grid, specimen and dislocations of one image."""
    mode = draw_mode(rng, cfg)
    ps = cfg.pixel_size * (1 + rng.uniform(-cfg.pixel_size_jitter, cfg.pixel_size_jitter))
    grid = Grid(cfg.size, float(ps))
    spec = draw_specimen(rng, fov_nm=grid.fov_nm, realism=cfg.realism, material=cfg.material)
    disl = draw_dislocations(rng, spec, cfg, grid.fov_nm)
    if cfg.realism > 0:
        add_rocksalt_near(rng, spec, disl, fov_nm=grid.fov_nm,
                          probability=cfg.rocksalt_probability, n_free=0.2 * cfg.realism)
    return mode, grid, spec, disl


def draw_distortion(rng: np.random.Generator, mode: str) -> np.ndarray:
    """Slow-scan drift distortion (STEM only): a small shear and scale."""
    if mode != "stem":
        return np.eye(2)
    return np.eye(2) + np.array([[rng.normal(0, 0.01), rng.normal(0, 0.02)],
                                 [0.0, rng.normal(0, 0.01)]])


def make_samples(rng: np.random.Generator, cfg: GeneratorConfig, *, n_variants: int = 1) -> list[Sample]:
    """One random structure rendered under ``n_variants`` microscope/detector draws."""
    mode, grid, spec, disl = draw_scene(rng, cfg)
    dose = float(np.exp(rng.uniform(*np.log(cfg.dose))))
    imaging = draw_optics(rng) if mode == "hrtem" else draw_probe(rng)
    geo = FrameGeometry(distortion=draw_distortion(rng, mode), centre_nm=grid.fov_nm / 2)
    return render_frame(spec, disl, grid=grid, mode=mode, imaging=imaging,
                        detector=draw_detector(rng, dose), rng=rng, geo=geo,
                        n_variants=n_variants)


def make_sample(rng: np.random.Generator, cfg: GeneratorConfig | None = None) -> Sample:
    """One labelled frame.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness: the same state gives a bit-identical sample.
    cfg : GeneratorConfig, optional
    """
    return make_samples(rng, cfg or GeneratorConfig(), n_variants=1)[0]
