"""A specimen: projected columns in the field of view, with everything that
makes a real layered-oxide crystal look unlike a perfect one.

`draw_specimen` draws the parameters once (per image or per movie);
`specimen_columns` turns them plus the dislocations of one frame into column
positions and weights in image axes [nm].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

from dislotrack.data_gen.crystal import (
    CORE_SITE,  # noqa: F401  (re-exported: it was defined here before 0.1.29)
    MATERIALS,
    ZONE_AXES,
    ProjectedCrystal,
    cation_weight,
    project,
    scattering_weights,
)
from dislotrack.data_gen.dislocations import Dislocation, volterra_displacement

#: Exponents of Z for the projected potential (HRTEM) and the HAADF cross-section.
Z_EXPONENT = {"hrtem": 0.67, "stem": 1.7}


@dataclass
class RocksaltDomain:
    """An irregular cation-mixed blob: centre [nm], radius [nm], shape harmonics."""

    x: float
    y: float
    radius: float
    harmonics: np.ndarray  # (k, 2) amplitude, phase of angular harmonics 2..k+1
    mixing: float = 0.5  # fraction of TM on Li sites (0.5 = fully disordered)

    def contains(self, xy: np.ndarray, growth: float = 1.0) -> np.ndarray:
        """Boolean membership of points (n, 2) [nm] at a growth factor."""
        rmax = self.radius * growth * (1 + np.abs(self.harmonics[:, 0]).sum())
        out = np.zeros(len(xy), dtype=bool)
        # The angular shape only matters close by: a cheap box test first.
        near = np.flatnonzero((np.abs(xy[:, 0] - self.x) < rmax) & (np.abs(xy[:, 1] - self.y) < rmax))
        dx, dy = xy[near, 0] - self.x, xy[near, 1] - self.y
        ang = np.arctan2(dy, dx)
        rr = np.ones_like(ang)
        for k, (amp, ph) in enumerate(self.harmonics, start=2):
            rr += amp * np.cos(k * ang + ph)
        out[near] = np.hypot(dx, dy) < self.radius * growth * rr
        return out

    def boundary(self, growth: float = 1.0, *, spacing_nm: float = 0.05) -> np.ndarray:
        """Points (n, 2) [nm] along the boundary, in order, at most ``spacing_nm`` apart."""
        amp, ph = self.harmonics[:, 0:1], self.harmonics[:, 1:2]
        k = np.arange(2, len(amp) + 2)[:, None]

        def at(ang: np.ndarray) -> np.ndarray:
            r = self.radius * growth * (1 + (amp * np.cos(k * ang + ph)).sum(axis=0))
            return np.stack([self.x + r * np.cos(ang), self.y + r * np.sin(ang)], axis=1)

        # Equal angles: as many as the fastest-moving part needs, from 256 (harmonics
        # up to the 4th), plus 10 % for what they miss.
        rough = at(np.linspace(0, 2 * np.pi, 256, endpoint=False))
        fastest = np.hypot(*(np.roll(rough, -1, axis=0) - rough).T).max()
        n = max(64, int(np.ceil(1.1 * 256 * fastest / spacing_nm)))
        return at(np.linspace(0, 2 * np.pi, n, endpoint=False))


@dataclass
class SpecimenParams:
    """Everything about a specimen that stays fixed over a movie."""

    material: str = "LiNiO2"
    zone: str = "[100]"
    rotation: float = 0.0  # in-plane rotation of the crystal frame [rad]
    origin: np.ndarray = field(default_factory=lambda: np.zeros(2))  # lattice origin [nm]
    c_strain_domain: tuple | None = None  # (x, y, sigma_nm, strain) H2/H3-like blob
    second_domain: tuple | None = None  # (x, y, angle of boundary normal, tilt rad)
    thickness_gradient: np.ndarray = field(default_factory=lambda: np.zeros(2))  # [1/nm]
    vacuum_edge: tuple | None = None  # (x, y, normal angle): vacuum where (r-p).n > 0
    amorphous_density: float = 0.0  # projected atoms per nm^2 of the surface layer
    amorphous_seed: int = 0
    rocksalt: list[RocksaltDomain] = field(default_factory=list)

    @property
    def crystal(self) -> ProjectedCrystal:
        return project(self.material, self.zone)


def rotation_matrix(angle: float) -> np.ndarray:
    """Matrix rotating crystal-frame vectors into image axes (angle [rad], y down)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def draw_specimen(rng: np.random.Generator, *, fov_nm: float, realism: float = 1.0,
                  material: str | None = None) -> SpecimenParams:
    """Draw random specimen parameters for a square field of view of side ``fov_nm``.

    ``realism`` in [0, 1] scales the probability of each non-ideality.
    """
    mat = material or str(rng.choice(list(MATERIALS), p=[0.7, 0.1, 0.1, 0.1]))
    # [100] and its mirror [-100] equally (real specimens show both handednesses); the
    # [1-10] draws are those of the two-zone generator (0.1.28 and before) for a seed.
    p = SpecimenParams(material=mat, zone=str(rng.choice(list(ZONE_AXES), p=[0.35, 0.35, 0.3])))
    p.rotation = float(rng.uniform(0, 2 * np.pi))
    p.origin = rng.uniform(0, 1, 2)
    centre = lambda: rng.uniform(0.1, 0.9, 2) * fov_nm  # noqa: E731
    if rng.random() < 0.3 * realism:
        x, y = centre()
        p.c_strain_domain = (x, y, float(rng.uniform(0.1, 0.3) * fov_nm),
                             float(rng.uniform(-0.03, 0.03)))
    if rng.random() < 0.1 * realism:
        x, y = centre()
        p.second_domain = (x, y, float(rng.uniform(0, 2 * np.pi)),
                           float(rng.choice([-1, 1]) * rng.uniform(0.03, 0.1)))
    if rng.random() < 0.5 * realism:
        p.thickness_gradient = rng.normal(0, 0.5 / fov_nm, 2)
    if rng.random() < 0.15 * realism:
        ang = float(rng.uniform(0, 2 * np.pi))
        n = np.array([np.cos(ang), np.sin(ang)])
        p.vacuum_edge = (*(fov_nm / 2 + n * rng.uniform(0.3, 0.45) * fov_nm), ang)
    if rng.random() < 0.6 * realism:
        p.amorphous_density = float(rng.uniform(5, 60))
    p.amorphous_seed = int(rng.integers(2**31))
    return p


def add_rocksalt_near(rng: np.random.Generator, p: SpecimenParams, cores: list[Dislocation], *,
                      fov_nm: float, probability: float = 0.3, n_free: float = 0.2) -> None:
    """Place RS domains, preferentially around dislocation cores (as observed)."""
    sites = [(d.x, d.y) for d in cores if rng.random() < probability]
    sites += [tuple(rng.uniform(0, fov_nm, 2)) for _ in range(rng.poisson(n_free))]
    for x, y in sites:
        x, y = x + rng.normal(0, 0.5), y + rng.normal(0, 0.5)
        harm = np.stack([rng.uniform(0, 0.25, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1)
        p.rocksalt.append(RocksaltDomain(float(x), float(y), float(rng.uniform(0.8, 3.0)), harm,
                                         float(rng.uniform(0.35, 0.5))))


def second_grain(p: SpecimenParams, xy: np.ndarray) -> np.ndarray:
    """Boolean (n,): points [nm] in the second grain (`SpecimenParams.second_domain`)."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if p.second_domain is None:
        return np.zeros(len(xy), dtype=bool)
    x, y, ang, _ = p.second_domain
    return (xy - (x, y)) @ np.array([np.cos(ang), np.sin(ang)]) > 0


def grain_frame(p: SpecimenParams, grain: bool | np.bool_) -> tuple[float, np.ndarray]:
    """Rotation [rad] and lattice origin [nm] of the first (False) or second (True) grain,
    as `specimen_columns` renders them."""
    if grain and p.second_domain is not None:
        x, y, _, tilt = p.second_domain
        return p.rotation + tilt, np.array([x, y], dtype=float)
    return p.rotation, np.asarray(p.origin, dtype=float)


def core_sites(p: SpecimenParams, b: np.ndarray, grain: bool | np.bool_ = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """One core site of Burgers vector ``b`` [nm] and the cell (rows v1, v2, image axes
    [nm]) whose translations give all the others, in the given grain.

    The site is the crystal's `ProjectedCrystal.core_site` for the Burgers-vector kind
    ``b`` is closest to (either sign), inverted for -b (`CORE_SITE`).
    """
    pc = p.crystal
    rotation, origin = grain_frame(p, grain)
    rot = rotation_matrix(rotation)
    cell = pc.cell @ rot.T
    b = np.asarray(b, dtype=float)
    kind = max(pc.burgers, key=lambda k: abs(b @ (rot @ pc.burgers[k])))
    sign = 1.0 if b @ (rot @ pc.burgers[kind]) >= 0 else -1.0
    return origin + sign * pc.core_site[kind] @ cell, cell


def snap_core(p: SpecimenParams, xy: np.ndarray, b: np.ndarray,
              grain: bool | np.bool_ | None = None) -> np.ndarray:
    """Move a core to the nearest equivalent site of the lattice.

    A core's position relative to the atomic columns is only defined up to a lattice
    translation by the topology; fixing it to one site per Burgers-vector sign makes the
    image around every core the same pattern, so the labels say exactly where the
    visible core is. Cores then move in lattice steps, as real ones do. ``grain``
    (default: the grain ``xy`` lies in) picks the lattice (`grain_frame`); ``b`` must
    be that grain's.
    """
    xy = np.asarray(xy, float)
    if grain is None:
        grain = bool(second_grain(p, xy)[0])
    site, cell = core_sites(p, b, grain)
    frac = np.linalg.solve(cell.T, xy - site)
    return site + np.rint(frac) @ cell


def snap_pair(p: SpecimenParams, xy1: np.ndarray, xy2: np.ndarray, b: np.ndarray,
              grain: bool | np.bool_ | None = None, *,
              min_separation: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Move a dipole's cores (``b`` at ``xy1``, ``-b`` at ``xy2``) to their lattice sites
    together, no closer than ``min_separation`` [nm] (default: their distance).

    Snapped one by one, the two cores of a pair 0.5-0.7 nm apart can land on
    neighbouring sites of the b and -b site lattices, ~0.14 nm apart: two labels where
    the image shows almost nothing. Of the pairs of sites near the two positions
    (+-2 cells), this takes the one moving the cores least (sum of squares) among those
    at least ``min_separation`` apart.

    Returns
    -------
    ndarray (2,), ndarray (2,)
        The two sites [nm].
    """
    xy1, xy2 = np.asarray(xy1, float), np.asarray(xy2, float)
    if grain is None:
        grain = bool(second_grain(p, (xy1 + xy2) / 2)[0])
    if min_separation is None:
        min_separation = float(np.hypot(*(xy2 - xy1)))
    steps = np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)), axis=-1).reshape(-1, 2)

    def near(xy: np.ndarray, bb: np.ndarray) -> np.ndarray:  # (25, 2) sites around xy
        site, cell = core_sites(p, bb, grain)
        return site + (np.rint(np.linalg.solve(cell.T, xy - site)) + steps) @ cell

    s1, s2 = near(xy1, b), near(xy2, -np.asarray(b, float))
    cost = (((s1 - xy1) ** 2).sum(axis=1)[:, None] + ((s2 - xy2) ** 2).sum(axis=1)[None, :])
    sep = np.hypot(*(s2[None, :, :] - s1[:, None, :]).transpose(2, 0, 1))
    cost = np.where(sep >= min_separation - 1e-9, cost, np.inf)
    if not np.isfinite(cost).any():  # cannot happen for min_separation up to ~0.5 nm + |xy2 - xy1|
        cost = -sep
    i, j = np.unravel_index(np.argmin(cost), cost.shape)
    return s1[i], s2[j]


def lattice_columns(pc: ProjectedCrystal, *, rotation: float, origin: np.ndarray,
                    bounds: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Reference column positions (image axes, nm) covering ``bounds``.

    Returns positions (n, 2) and the index (n,) of each column in ``pc.columns``.
    """
    x0, x1, y0, y1 = bounds
    rot = rotation_matrix(rotation)
    cell = pc.cell @ rot.T  # rows v1, v2 in image axes
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - origin
    frac = np.linalg.solve(cell.T, corners.T).T
    lo = np.floor(frac.min(axis=0)) - 1
    hi = np.ceil(frac.max(axis=0)) + 1
    i, j = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    pts = np.stack([i.ravel(), j.ravel()], axis=1) @ cell + origin
    basis = pc.columns @ rot.T
    pos = (pts[:, None, :] + basis[None, :, :]).reshape(-1, 2)
    idx = np.tile(np.arange(len(basis)), len(pts))
    keep = (pos[:, 0] >= x0) & (pos[:, 0] <= x1) & (pos[:, 1] >= y0) & (pos[:, 1] <= y1)
    return pos[keep], idx[keep]


def smooth_displacement(p: SpecimenParams, xy: np.ndarray) -> np.ndarray:
    """Displacement [nm] of the lattice by the specimen's smooth strain fields.

    The H2/H3-like blob dilated along the layer normal moves whole regions of the
    lattice by up to ~0.6 nm, dislocation cores with them: the columns
    (`specimen_columns`), the core labels and the rock-salt mask all use this one field.

    Parameters
    ----------
    p : SpecimenParams
    xy : ndarray (n, 2)
        Positions [nm], specimen axes.

    Returns
    -------
    ndarray (n, 2)
        Displacements [nm]; zero where the specimen has no such field.
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if p.c_strain_domain is None:
        return np.zeros_like(xy)
    normal = rotation_matrix(p.rotation) @ np.array([0.0, 1.0])
    return _c_strain_displacement(xy, p.c_strain_domain, normal)


def in_crystal(p: SpecimenParams, xy: np.ndarray, margin_nm: float = 0.0) -> np.ndarray:
    """Boolean (n,): points [nm] on the crystal side of the vacuum edge (all if none).

    ``margin_nm`` > 0 also accepts points up to that far into the vacuum.
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if p.vacuum_edge is None:
        return np.ones(len(xy), dtype=bool)
    x, y, ang = p.vacuum_edge
    return (xy - (x, y)) @ np.array([np.cos(ang), np.sin(ang)]) <= margin_nm


def visible_cores(p: SpecimenParams, dislocations: list[Dislocation], *,
                  ring_nm: float = 0.25, n_ring: int = 16) -> np.ndarray:
    """Where the image shows each core [nm], specimen axes.

    Columns are displaced by the fields of *all* dislocations and by the smooth strain
    (`specimen_columns`), so the lattice around a core, and its visible termination,
    moves by the other cores' fields there: up to half a Burgers vector (~0.24 nm) per
    other core at any distance (the arctan term does not decay), more in a strain
    blob. The visible core is taken as the
    centroid of a ring of lattice points around it after those displacements; its own
    field is symmetric about it and left out. The ring also averages over another
    core's branch cut passing through (the two sides differ by a lattice vector).

    Parameters
    ----------
    p : SpecimenParams
    dislocations : list of Dislocation
        Cores at their lattice sites (`snap_core`).
    ring_nm : float
        Ring radius [nm].
    n_ring : int
        Points on the ring.

    Returns
    -------
    ndarray (n, 2)
        Visible core positions [nm].
    """
    xy = np.array([[d.x, d.y] for d in dislocations], dtype=float).reshape(-1, 2)
    phi = 2 * np.pi * (np.arange(n_ring) + 0.5) / n_ring
    ring = ring_nm * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    out = xy + smooth_displacement(p, xy)
    for i in range(len(xy)):
        others = dislocations[:i] + dislocations[i + 1:]
        if others:
            out[i] += volterra_displacement(xy[i] + ring, others).mean(axis=0)
    return out


def _c_strain_displacement(pos: np.ndarray, dom: tuple, normal: np.ndarray) -> np.ndarray:
    """Displacement of a Gaussian blob whose lattice is dilated along the layer normal."""
    x, y, s, strain = dom
    rel = pos - (x, y)
    sn = rel @ normal
    st = rel @ np.array([-normal[1], normal[0]])
    g = np.exp(-(st**2) / (2 * s * s)) * s * np.sqrt(np.pi / 2) * (1 + erf(sn / (s * np.sqrt(2))))
    return strain * g[:, None] * normal


@dataclass
class Columns:
    """Projected columns of one frame in image axes."""

    xy: np.ndarray  # (n, 2) [nm]
    weight: np.ndarray  # (n,) scattering weight per nm of thickness (mode-dependent)
    thickness: np.ndarray  # (n,) relative thickness factor


def specimen_columns(p: SpecimenParams, dislocations: list[Dislocation], *, mode: str,
                     bounds: tuple[float, float, float, float], rs_growth: float = 1.0) -> Columns:
    """Column positions and weights of one frame.

    Parameters
    ----------
    p : SpecimenParams
    dislocations : list of Dislocation
        Cores of this frame (image axes, nm).
    mode : {"hrtem", "stem"}
    bounds : (x0, x1, y0, y1)
        Region to fill [nm] (field of view plus a margin).
    rs_growth : float
        Scale factor of the rock-salt domain radii (movies grow them).
    """
    pc = p.crystal
    expo = Z_EXPONENT[mode]
    pos, idx = lattice_columns(pc, rotation=p.rotation, origin=p.origin, bounds=bounds)
    w = scattering_weights(pc, expo)[idx]
    if p.second_domain is not None:
        rot2, origin2 = grain_frame(p, True)
        pos2, idx2 = lattice_columns(pc, rotation=rot2, origin=origin2, bounds=bounds)
        keep1 = ~second_grain(p, pos)
        keep2 = second_grain(p, pos2)
        pos = np.concatenate([pos[keep1], pos2[keep2]])
        idx = np.concatenate([idx[keep1], idx2[keep2]])
        w = scattering_weights(pc, expo)[idx]
    if p.rocksalt:
        w = _mix_cations(p, pc, pos, idx, w, expo, rs_growth)
    pos = displace_lattice(p, pos, dislocations)
    inside = in_crystal(p, pos)
    pos, w = pos[inside], w[inside]
    centre = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2])
    thick = 1.0 + (pos - centre) @ p.thickness_gradient
    return Columns(pos, w, np.clip(thick, 0.3, 3.0))


def _mix_cations(p: SpecimenParams, pc: ProjectedCrystal, pos: np.ndarray, idx: np.ndarray,
                 w: np.ndarray, expo: float, growth: float) -> np.ndarray:
    """Cation mixing inside RS domains: Li and TM layers tend to the same content.

    Where domains overlap, a column takes the largest of their mixings, once: summed, two
    domains of 0.5 would swap the layers and bring the layered fringes back (inverted)
    inside what the mask calls rock salt."""
    tm = MATERIALS[p.material]["tm"]
    w_li = pc.density["Li"].max() * 3.0**expo
    dens = pc.density["Li"].max()
    w_tm = dens * cation_weight(tm, expo)
    w = w.copy()
    li_col = pc.is_cation_li[idx]
    tm_col = pc.is_cation_tm[idx]
    mixing = np.zeros(len(pos))
    for dom in p.rocksalt:
        mixing = np.maximum(mixing, np.where(dom.contains(pos, growth), dom.mixing, 0.0))
    w[li_col] += mixing[li_col] * (w_tm - w_li)
    w[tm_col] -= mixing[tm_col] * (w_tm - w_li)
    return w


def displace_lattice(p: SpecimenParams, xy: np.ndarray,
                     dislocations: list[Dislocation] | tuple = (), *,
                     all_cores_at_once: bool = False) -> np.ndarray:
    """Where reference lattice points (n, 2) [nm] are imaged: moved by every
    dislocation's Volterra field, then by the smooth strain (`specimen_columns`).

    Parameters
    ----------
    p : SpecimenParams
    xy : ndarray (n, 2)
        Undisplaced positions [nm], specimen axes.
    dislocations : list of Dislocation
        The dislocations present (one frame's, for a movie).
    all_cores_at_once : bool
        Passed to `volterra_displacement`: faster for a few thousand points.

    Returns
    -------
    ndarray (n, 2)
        Displaced positions [nm].
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if dislocations:
        pos = xy + volterra_displacement(xy, dislocations, all_cores_at_once=all_cores_at_once)
    else:
        pos = xy
    return pos + smooth_displacement(p, pos)


def undisplace_lattice(p: SpecimenParams, xy: np.ndarray,
                       dislocations: list[Dislocation] | tuple = (), *,
                       start: np.ndarray | None = None, tol_nm: float = 5e-3,
                       max_iter: int = 8) -> np.ndarray:
    """Invert `displace_lattice`: the reference position (n, 2) [nm] imaged at each point.

    Fixed-point iteration ``o <- xy - u(o)`` with ``u(o) = displace_lattice(o) - o``,
    each point until its residual is below ``tol_nm``; it contracts wherever the strain
    is well below 1 (all but ~0.1 nm around a core). Across a branch cut the Volterra
    field jumps by b along the cut while its component normal to the cut is continuous,
    so the iterate settles on the side of the cut the point came from, as the rendered
    columns do (none is on a cut: `CORE_SITE`). The other fields open a sliver
    (~0.01-0.03 nm) between the two sides' images, where the iterate flips sides and
    moves by b each step: such points are solved again from `UNSTICK_NM` away (either
    side is right to that accuracy: the nearest columns are on both). Points that still
    fail (within ~0.2 nm of a core, ~1e-4 of the others) keep the closest iterate.

    Parameters
    ----------
    p : SpecimenParams
    xy : ndarray (n, 2)
        Displaced (imaged) positions [nm], specimen axes.
    dislocations : list of Dislocation
    start : ndarray (n, 2), optional
        First guess [nm] (default ``xy``); a close one saves iterations.
    tol_nm : float
        Largest residual [nm] accepted; the point returned is one step further, within
        ~strain x ``tol_nm`` of the solution.
    max_iter : int
        Most iterations per try.

    Returns
    -------
    ndarray (n, 2)
        Reference positions [nm].
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if not dislocations and p.c_strain_domain is None:
        return xy.copy()
    o, done, closest = _fixed_point(p, xy, xy if start is None else start, dislocations,
                                    tol_nm, max_iter)
    todo = np.flatnonzero(~done)
    if len(todo):  # all retries in one batch: each call has a fixed cost per dislocation
        shift = np.concatenate([r * UNSTICK_DIRECTIONS for r in UNSTICK_NM])  # nearest first
        pts = (xy[todo][None] + shift[:, None]).reshape(-1, 2)
        near = (closest[todo][None] + shift[:, None]).reshape(-1, 2)  # one side's solution
        o2, done2, _ = _fixed_point(p, pts, near, dislocations, tol_nm, max_iter)
        # Not moved back by -shift: that could cross the cut again, and be off by b.
        o2 = o2.reshape(len(shift), len(todo), 2)
        done2 = done2.reshape(len(shift), len(todo))
        ok = done2.any(axis=0)
        o[todo[ok]] = o2[done2.argmax(axis=0)[ok], np.flatnonzero(ok)]
        o[todo[~ok]] = closest[todo[~ok]]
    return o


#: Offsets [nm] of the retries of `undisplace_lattice`, nearest first: a sliver is
#: ~0.01-0.03 nm wide (b times the other fields' strain). Four directions, so that
#: one crosses any cut.
UNSTICK_NM = (0.02, 0.06)
UNSTICK_DIRECTIONS = np.array([[np.cos(a), np.sin(a)] for a in (0.3, 1.1, 1.9, 2.7)])


def _fixed_point(p: SpecimenParams, xy: np.ndarray, start: np.ndarray,
                 dislocations: list[Dislocation] | tuple, tol_nm: float,
                 max_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`undisplace_lattice`'s iteration: the last iterates, whether each converged, and
    the iterates with the smallest residual. From the third step on, a point stops when
    its residual shrinks by less than 30 % in a step (it flips across a cut, or sits at
    a core)."""
    o = np.array(start, dtype=float)
    closest, best = o.copy(), np.full(len(xy), np.inf)
    done = np.zeros(len(xy), bool)
    todo = np.arange(len(xy))
    for it in range(max_iter):
        cur = o[todo]
        step = xy[todo] - displace_lattice(p, cur, dislocations, all_cores_at_once=True)
        res = np.abs(step).max(axis=1)
        prev = best[todo]
        closer = res < prev
        closest[todo[closer]], best[todo[closer]] = cur[closer], res[closer]
        o[todo] = cur + step
        done[todo[res <= tol_nm]] = True
        # The first steps may cross a cut (the start lies on the other side): no test yet.
        todo = todo[(res > tol_nm) & ((res < 0.7 * prev) | (it < 2))]
        if not len(todo):
            break
    return o, done, closest


def rocksalt_mask(p: SpecimenParams, xy: np.ndarray, rs_growth: float = 1.0,
                  dislocations: list[Dislocation] | tuple = ()) -> np.ndarray:
    """Boolean RS membership of points (n, 2) [nm] (the label of the mask).

    Cations are mixed by their undisplaced positions (`specimen_columns`), so a point
    is tested where its lattice came from (`undisplace_lattice`): the smooth strain and
    every dislocation's field are undone. The arctan term of a core moves the lattice
    by up to b/2 at any distance, and RS domains sit around cores, so leaving it out
    shifts the mask by up to a few pixels there. The vacuum edge cuts the displaced
    lattice, so it is tested at ``xy``.

    Parameters
    ----------
    p : SpecimenParams
    xy : ndarray (n, 2)
        Points [nm], specimen axes.
    rs_growth : float
        Scale factor of the domain radii (movies grow them).
    dislocations : list of Dislocation
        The dislocations present (one frame's, for a movie), as given to
        `specimen_columns`.

    Returns
    -------
    ndarray (n,) of bool
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    out = np.zeros(len(xy), dtype=bool)
    if p.rocksalt:
        origin = undisplace_lattice(p, xy, dislocations)
        for dom in p.rocksalt:
            out |= dom.contains(origin, rs_growth)
    return out & in_crystal(p, xy)


def amorphous_atoms(p: SpecimenParams, bounds: tuple[float, float, float, float], *,
                    mode: str, tile_nm: float = 4.0) -> Columns:
    """Random atoms of an amorphous surface layer, fixed per specimen.

    Atoms are drawn per ``tile_nm`` square tile from a stream seeded by the specimen and
    the tile index, so any region (e.g. a drifting frame's) sees the same atoms.
    """
    x0, x1, y0, y1 = bounds
    xy_parts, z_parts = [], []
    for i in range(int(np.floor(x0 / tile_nm)), int(np.ceil(x1 / tile_nm))):
        for j in range(int(np.floor(y0 / tile_nm)), int(np.ceil(y1 / tile_nm))):
            rng = np.random.default_rng([p.amorphous_seed, i + 10_000, j + 10_000])
            n = rng.poisson(p.amorphous_density * tile_nm**2)
            xy_parts.append((np.array([i, j]) + rng.uniform(0, 1, (n, 2))) * tile_nm)
            z_parts.append(rng.choice([6, 8], n))  # carbon / oxygen-like
    xy = np.concatenate(xy_parts) if xy_parts else np.zeros((0, 2))
    z = np.concatenate(z_parts) if z_parts else np.zeros(0, int)
    keep = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    xy, z = xy[keep], z[keep]
    # One atom per column: weight per nm is meaningless, so scale to ~0.3 nm of column.
    w = 3.0 * z.astype(float) ** Z_EXPONENT[mode]
    keep = in_crystal(p, xy, margin_nm=0.5)  # the layer covers the specimen, not the vacuum
    xy, w = xy[keep], w[keep]
    return Columns(xy, w, np.ones(len(w)))
