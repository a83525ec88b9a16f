"""Layered-oxide crystals built with ASE and projected to atomic columns.

A zone axis perpendicular to ``c`` puts the (003) layers edge-on. Projecting the
crystal along it gives a 2-D lattice (``v1``, ``v2``) with a basis of atomic
columns, each with a number of atoms of each species per nm along the beam.
The crystal frame of the projection has ``x`` along the layers and ``y`` along
``c`` (the layer normal); samples rotate it in the image plane later.

Reversing the beam (zone ``[-u-v-w]`` against ``[uvw]``) mirrors the projection
(``x -> -x`` in the crystal frame). ``[100]`` is chiral (no rotation maps its mirror
image onto it), so both handednesses are zones here; ``[1-10]`` is achiral.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.spacegroup import crystal

#: Layered R-3m materials: lattice parameters [nm], O z-parameter, TM composition.
MATERIALS: dict[str, dict] = {
    "LiNiO2": {"a": 0.2878, "c": 1.419, "z_o": 0.2411, "tm": {"Ni": 1.0}},
    "LiCoO2": {"a": 0.2816, "c": 1.4054, "z_o": 0.2396, "tm": {"Co": 1.0}},
    "NMC811": {"a": 0.2872, "c": 1.4200, "z_o": 0.2410, "tm": {"Ni": 0.8, "Mn": 0.1, "Co": 0.1}},
    "NMC111": {"a": 0.2860, "c": 1.4227, "z_o": 0.2412, "tm": {"Ni": 1 / 3, "Mn": 1 / 3, "Co": 1 / 3}},
}

#: Zone axes (conventional hexagonal [uvw]) in which the (003) layers are edge-on.
#: ``[-100]`` is ``[100]`` seen from the other side: its mirror image.
ZONE_AXES: dict[str, tuple[int, int, int]] = {"[100]": (1, 0, 0), "[-100]": (-1, 0, 0),
                                              "[1-10]": (1, -1, 0)}

#: The mirror taking a zone's crystal frame to that of the reversed beam (x -> -x).
MIRROR = np.diag([-1.0, 1.0])

#: Where a core sits in the projected cell (fractions of v1, v2) for b along +burgers,
#: in ``[100]`` and ``[1-10]``; a core of -b sits at the inversion image (R-3m is
#: centrosymmetric about the Li site). A mirror zone takes the mirror images of these
#: sites (`ProjectedCrystal.core_site`). The glide plane (the Volterra cut) runs
#: through the core along b: +-v2 (misfit) or +-v1 (basal); columns sit at
#: v1-fractions {0, 0.24, 0.5, 0.76} and v2-fractions {0, 0.28, 0.5, 0.72} in every
#: zone, so 0.37 and 0.14 keep every cut between columns (a cut through a column row
#: would split it and pile columns up along the cut).
CORE_SITE = np.array([0.37, 0.14])


@dataclass(frozen=True)
class ProjectedCrystal:
    """A crystal projected along a zone axis (crystal frame, nm).

    Attributes
    ----------
    material, zone : str
    v1, v2 : ndarray (2,)
        Reduced basis of the projected 2-D lattice [nm].
    columns : ndarray (n, 2)
        Column positions inside the 2-D cell [nm].
    density : dict[str, ndarray (n,)]
        Atoms per nm along the beam, per species symbol.
    is_cation_li, is_cation_tm : ndarray (n,) of bool
        Columns of the Li layers / transition-metal layers.
    d003 : float
        (003) spacing [nm].
    burgers : dict[str, ndarray (2,)]
        Shortest projected lattice vectors used as Burgers vectors:
        ``"misfit"`` (component c/3 along the layer normal) and ``"basal"``.
    core_site : dict[str, ndarray (2,)]
        Per Burgers-vector kind, the core site (fractions of v1, v2) of a core of
        b = +burgers[kind] (`CORE_SITE`, or its mirror image in a mirror zone).
    """

    material: str
    zone: str
    v1: np.ndarray
    v2: np.ndarray
    columns: np.ndarray
    density: dict[str, np.ndarray]
    is_cation_li: np.ndarray
    is_cation_tm: np.ndarray
    d003: float
    burgers: dict[str, np.ndarray] = field(default_factory=dict)
    core_site: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def cell(self) -> np.ndarray:
        """2x2 matrix whose rows are ``v1`` and ``v2`` [nm]."""
        return np.stack([self.v1, self.v2])


def build_layered(material: str = "LiNiO2") -> Atoms:
    """Primitive R-3m cell of a layered oxide (Li 3a, TM 3b, O 6c), lengths in nm.

    Mixed transition-metal compositions use the majority TM as the ASE symbol;
    the real composition is kept in ``atoms.info["tm"]``.
    """
    if material not in MATERIALS:
        raise ValueError(f"unknown material {material!r}; choose from {sorted(MATERIALS)}")
    p = MATERIALS[material]
    tm_symbol = max(p["tm"], key=p["tm"].get)
    atoms = crystal(
        ["Li", tm_symbol, "O"],
        basis=[(0, 0, 0), (0, 0, 0.5), (0, 0, p["z_o"])],
        spacegroup=166,
        cellpar=[p["a"], p["a"], p["c"], 90, 90, 120],
        primitive_cell=True,
    )
    atoms.info["tm"] = dict(p["tm"])
    atoms.info["material"] = material
    return atoms


def _frame(material: str, zone: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (beam, x along layers, y along c) in ASE Cartesian axes."""
    p = MATERIALS[material]
    a1 = np.array([p["a"], 0.0, 0.0])
    a2 = np.array([-p["a"] / 2, p["a"] * np.sqrt(3) / 2, 0.0])
    u, v, w = ZONE_AXES[zone]
    t = u * a1 + v * a2 + w * np.array([0, 0, p["c"]])
    beam = t / np.linalg.norm(t)
    ey = np.array([0.0, 0.0, 1.0])
    ex = np.cross(ey, beam)
    return beam, ex / np.linalg.norm(ex), ey


def _reduce_basis(v1: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of a 2-D lattice basis."""
    while True:
        if v1 @ v1 > v2 @ v2:
            v1, v2 = v2, v1
        mu = round(float(v1 @ v2 / (v1 @ v1)))
        if mu == 0:
            return v1, v2
        v2 = v2 - mu * v1


def _projected_lattice(prim: np.ndarray, ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
    """All short projected lattice vectors (crystal frame), shortest first."""
    vecs = []
    for n in itertools.product(range(-3, 4), repeat=3):
        r = np.asarray(n) @ prim
        vecs.append((r @ ex, r @ ey))
    vecs = np.asarray(vecs)
    vecs = vecs[np.linalg.norm(vecs, axis=1) > 1e-6]
    return vecs[np.argsort(np.linalg.norm(vecs, axis=1), kind="stable")]


@lru_cache(maxsize=16)
def project(material: str = "LiNiO2", zone: str = "[100]") -> ProjectedCrystal:
    """Project a layered oxide along a zone axis into a 2-D column lattice.

    Parameters
    ----------
    material : str
        Key of `MATERIALS`.
    zone : str
        Key of `ZONE_AXES`.

    Returns
    -------
    ProjectedCrystal
    """
    if zone not in ZONE_AXES:
        raise ValueError(f"unknown zone axis {zone!r}; choose from {sorted(ZONE_AXES)}")
    atoms = build_layered(material)
    beam, ex, ey = _frame(material, zone)
    prim = np.asarray(atoms.cell[:])
    vecs = _projected_lattice(prim, ex, ey)
    # The projected cell area is V / |t|, with t the shortest lattice vector along the beam.
    along = [np.asarray(n) @ prim for n in itertools.product(range(-3, 4), repeat=3)]
    along = [r for r in along if np.linalg.norm(r) > 1e-9 and np.linalg.norm(np.cross(r, beam)) < 1e-9]
    period = min(np.linalg.norm(r) for r in along)
    area = abs(np.linalg.det(prim)) / period
    v1 = vecs[0]
    cross = np.abs(v1[0] * vecs[:, 1] - v1[1] * vecs[:, 0])
    v2 = vecs[np.flatnonzero(np.isclose(cross, area, rtol=1e-6))[0]]
    v1, v2 = _reduce_basis(v1, v2)

    cell = np.stack([v1, v2])
    pos = atoms.get_positions()
    xy = np.stack([pos @ ex, pos @ ey], axis=1)
    frac = np.mod(np.linalg.solve(cell.T, xy.T).T + 1e-9, 1.0)
    symbols = atoms.get_chemical_symbols()
    cols: list[np.ndarray] = []
    members: list[list[str]] = []
    for f, s in zip(frac, symbols, strict=True):
        for k, cf in enumerate(cols):
            d = (f - cf + 0.5) % 1.0 - 0.5
            if np.linalg.norm(d @ cell) < 1e-4:
                members[k].append(s)
                break
        else:
            cols.append(f)
            members.append([s])
    columns = np.asarray(cols) @ cell
    tm = atoms.info["tm"]
    species = ["Li", "O", *tm]
    density = {s: np.zeros(len(cols)) for s in species}
    for k, mem in enumerate(members):
        for s in mem:
            if s in ("Li", "O"):
                density[s][k] += 1.0 / period
            else:  # the TM site carries the mixed composition
                for t_sym, frac_t in tm.items():
                    density[t_sym][k] += frac_t / period
    is_li = np.array(["Li" in m for m in members])
    is_tm = np.array([any(s not in ("Li", "O") for s in m) for m in members])

    c = MATERIALS[material]["c"]
    d003 = c / 3
    # Shortest lattice vectors of each type, signed so that y > 0 (misfit) or x > 0 (basal).
    misfit = next(v for v in vecs if np.isclose(v[1], d003, atol=1e-6))
    basal = next(v for v in vecs if abs(v[1]) < 1e-6 and v[0] > 0)
    burgers = {"misfit": misfit.copy(), "basal": basal.copy()}
    core_site = _core_sites(material, zone, cell, burgers)
    return ProjectedCrystal(material, zone, v1, v2, columns, density, is_li, is_tm, d003, burgers,
                            core_site)


def mirror_parent(zone: str) -> str | None:
    """The zone listed before ``zone`` in `ZONE_AXES` whose axis is ``-zone``: the one
    ``zone`` is the mirror image of (None if there is none).

    Examples
    --------
    >>> mirror_parent("[-100]"), mirror_parent("[100]")
    ('[100]', None)
    """
    names = list(ZONE_AXES)
    rev = tuple(-i for i in ZONE_AXES[zone])
    return next((z for z in names[:names.index(zone)] if ZONE_AXES[z] == rev), None)


def _core_sites(material: str, zone: str, cell: np.ndarray,
                burgers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`ProjectedCrystal.core_site`: `CORE_SITE`, or in a mirror zone the mirror image of
    the parent zone's site of the core whose mirror image has b = +burgers[kind].

    The mirror image of a core of b is a core of ``-MIRROR @ b`` (h, turned 90 degrees
    from b, is mirrored to ``MIRROR @ h``: `conventions.b_hat_from_h`)."""
    parent = mirror_parent(zone)
    if parent is None:
        return {k: CORE_SITE.copy() for k in burgers}
    pp = project(material, parent)
    out = {}
    for k, b in burgers.items():
        sign = 1.0 if (-MIRROR @ b) @ pp.burgers[k] >= 0 else -1.0
        site_nm = MIRROR @ (sign * pp.core_site[k] @ pp.cell)
        out[k] = np.linalg.solve(cell.T, site_nm)
    return out


def scattering_weights(pc: ProjectedCrystal, exponent: float) -> np.ndarray:
    """Per-column weight ``sum_s density_s * Z_s**exponent`` [atoms/nm * Z^exponent].

    ``exponent`` ~ 0.67 mimics the projected potential seen at HRTEM resolution;
    ~ 1.7 the HAADF-STEM cross-section.
    """
    w = np.zeros(len(pc.columns))
    for s, dens in pc.density.items():
        w += dens * atomic_numbers[s] ** exponent
    return w


def cation_weight(symbols: dict[str, float], exponent: float) -> float:
    """Mean ``Z**exponent`` of a cation mixture given as {symbol: fraction}."""
    return float(sum(f * atomic_numbers[s] ** exponent for s, f in symbols.items()))
