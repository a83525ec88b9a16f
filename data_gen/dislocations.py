"""Edge dislocations with the line along the beam: the isotropic Volterra field.

Local frame of one dislocation: ``x'`` along the Burgers direction ``b_hat``,
``y'`` along **h** (into the extra half-plane), both in image axes. With
``theta = atan2(y', x')`` the field below puts the extra half-plane at
``y' > 0`` (the compressed side) and its branch cut on the glide plane on one
side of the core, where a Burgers vector that is a lattice vector leaves no fault.
``tests/test_dislocations.py`` checks both on the generated columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dislotrack.data_gen.conventions import b_hat_from_h, h_from_b_hat


@dataclass(frozen=True)
class Dislocation:
    """One edge dislocation in projection (image axes).

    Attributes
    ----------
    x, y : float
        Core position [nm], image axes (``y`` down).
    b : ndarray (2,)
        Projected Burgers vector [nm]; ``h = h_from_b_hat(b / |b|)``.
    particle : int
        Identity (stable across the frames of a movie).
    partner : int
        Identity of the dipole partner, or -1 for a single dislocation.
    """

    x: float
    y: float
    b: np.ndarray
    particle: int = 0
    partner: int = -1

    @property
    def h(self) -> np.ndarray:
        """Unit vector from the core into the extra half-plane."""
        return h_from_b_hat(self.b / np.linalg.norm(self.b))

    @classmethod
    def from_h(cls, x: float, y: float, h: np.ndarray, b_norm: float, **kw) -> Dislocation:
        """Build from the half-plane direction and the Burgers vector length [nm]."""
        h = np.asarray(h, dtype=float) / np.linalg.norm(h)
        return cls(x, y, b_hat_from_h(h) * b_norm, **kw)


_CUT_REFERENCE = np.array([np.cos(0.1234), np.sin(0.1234)])


def volterra_displacement(
    points: np.ndarray,
    dislocations: list[Dislocation],
    *,
    poisson: float = 0.3,
    core_radius: float = 0.1,
    all_cores_at_once: bool = False,
) -> np.ndarray:
    """Displacement of points by superposed isotropic edge-dislocation fields.

    Parameters
    ----------
    points : ndarray (n, 2)
        Reference (undeformed) positions [nm], image axes.
    dislocations : list of Dislocation
    poisson : float
        Poisson ratio.
    core_radius : float
        Regularisation radius [nm] of the logarithmic and 1/r terms.
    all_cores_at_once : bool
        Evaluate every core in one pass over (points, cores) arrays instead of one pass
        per core: several times faster for up to a few thousand points, where each
        pass costs mostly its fixed overhead; the same field up to float32 rounding
        (the sum over cores is ordered differently). The columns use the default.

    Returns
    -------
    ndarray (n, 2)
        Displacements [nm], image axes.
    """
    # float32: positions are a few tens of nm, so precision stays ~1e-5 nm, twice as fast.
    # Work on separate x / y arrays: (n, 2) temporaries cost more than the maths.
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    px, py = np.ascontiguousarray(pts[:, 0]), np.ascontiguousarray(pts[:, 1])
    nu = poisson
    const = (np.float32(1 / (2 * (1 - nu))), np.float32((1 - 2 * nu) / (4 * (1 - nu))),
             np.float32(1 / (4 * (1 - nu))), np.float32(core_radius**2))
    if all_cores_at_once and dislocations:
        # (cores, 1) columns of every core's `_frame`
        cx, cy, bx, by, k = np.array([_frame(d) for d in dislocations], np.float32).T[:, :, None]
        out = np.empty((len(px), 2), np.float32)
        step = max(1, 2**15 // len(dislocations))  # (cores, chunk) temporaries of 128 kB: in cache
        for i in range(0, len(px), step):
            rx = px[None, i:i + step] - cx
            ry = py[None, i:i + step] - cy
            ux, uy = _edge_field(rx * bx + ry * by, rx * -by + ry * bx, k, *const)
            out[i:i + step, 0] = (ux * bx - uy * by).sum(axis=0)
            out[i:i + step, 1] = (ux * by + uy * bx).sum(axis=0)
        return out.astype(float)
    ux_img = np.zeros_like(px)
    uy_img = np.zeros_like(py)
    for cx, cy, bx, by, k in (_frame(d) for d in dislocations):
        hx, hy = np.float32(-by), np.float32(bx)  # h_from_b_hat
        bx, by = np.float32(bx), np.float32(by)
        rx = px - np.float32(cx)
        ry = py - np.float32(cy)
        ux, uy = _edge_field(rx * bx + ry * by, rx * hx + ry * hy, np.float32(k), *const)
        ux_img += ux * bx + uy * hx
        uy_img += ux * by + uy * hy
    return np.stack([ux_img, uy_img], axis=1).astype(float)


def _frame(d: Dislocation) -> tuple[float, float, float, float, float]:
    """Core x, y [nm], the unit vector (bx, by) of the local x' axis, and b / 2 pi [nm]
    (signed: along x' or against it)."""
    # The field is odd in b for a fixed frame; only the branch cut depends on the
    # frame. Taking the frame from +-b by a fixed rule gives b and -b parallel cuts,
    # so a dipole's cuts cancel beyond its cores and its far field vanishes (a
    # nucleating dipole does not shift the rest of the crystal).
    s = 1.0 if d.b @ _CUT_REFERENCE >= 0 else -1.0
    bn = s * float(np.linalg.norm(d.b))
    bx, by = (float(v) for v in d.b / bn)
    return d.x, d.y, bx, by, bn / (2 * np.pi)


def _edge_field(x: np.ndarray, y: np.ndarray, k: np.ndarray | np.float32, c_xy: np.float32,
                c_log: np.float32, c_sq: np.float32, rc2: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (along x', along y') [nm] at local coordinates x', y' [nm] (float32)."""
    x2, y2 = x * x, y * y
    inv = 1 / (x2 + y2 + rc2)
    ux = k * (np.arctan2(y, x) + c_xy * x * y * inv)
    uy = -k * (c_log * np.log(x2 + y2 + rc2) + c_sq * (x2 - y2) * inv)
    return ux, uy


def burgers_closure(
    dislocations: list[Dislocation],
    loop: np.ndarray,
    *,
    lattice: np.ndarray,
    poisson: float = 0.3,
) -> np.ndarray:
    """Closure failure of a Burgers circuit drawn on the *perfect* lattice.

    Walks the closed loop of lattice points ``loop`` (n, 2) [nm], adds up the
    displaced steps each rounded to the nearest lattice vector of ``lattice``
    (rows = basis [nm]), which is what counting atoms along a circuit does.

    Returns
    -------
    ndarray (2,)
        Sum of the steps [nm]; zero for a perfect region, -b or b for a loop
        around a core (sign depends on the sense of the circuit).
    """
    disp = volterra_displacement(loop, dislocations, poisson=poisson)
    deformed = loop + disp
    steps = np.diff(np.vstack([deformed, deformed[:1]]), axis=0)
    inv = np.linalg.inv(lattice.T)
    n = np.rint(steps @ inv.T)
    return (n @ lattice).sum(axis=0)
