"""Generator vs. abTEM multislice: time and image agreement for one HRTEM field.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 19 \\
        python tests/benchmarks/bench_multislice.py [--thickness 5] [--compare 2 5 10] [--seed 0]

Needs abTEM (``pip install -e ".[validation]"``, best in an environment of its own: it is
only a validation dependency). The field is one generator sample: 256x256 px at 0.1 nm/px
of LiNiO2 with two misfit edge dislocations of opposite sign, specimen and lens drawn by
the generator from ``--seed`` with ``realism=0`` (no amorphous layer, rock salt or
thickness gradient: the extrusion does not model them). Its projected columns are
extruded along the zone axis with the crystal's real depths (period and stacking from
the ASE cell; the dislocations get the screw part of their 3-D Burgers vector) and
abTEM runs a plane-wave multislice on them (0.05 nm sampling over the generator's
internal grid, margin included; infinite projection, Lobato potentials, no frozen
phonons) on one CPU thread with the numpy FFT.

Printed: time per field of both and their ratio; then per thickness the normalised
cross-correlation (NCC) of abTEM's noiseless image with the generator's under the
*same* lens (ours, applied to abTEM's exit wave; "lens check" compares that with
abTEM's own CTF), over the field and within 1.5 nm of the cores, with the generator's
phase scale set from abTEM's mean projected potential, and the best NCC over the
generator's phase range. Absorption is 0; the aperture is kept inside abTEM's
anti-aliasing limit (2/3 of Nyquist).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

try:
    import abtem
except ModuleNotFoundError:  # an optional extra: say how to get it rather than a traceback
    raise SystemExit("this benchmark needs abTEM: pip install -e \".[validation]\"") from None
import dask  # noqa: E402
import numpy as np  # noqa: E402
import scipy.fft as sfft  # noqa: E402
from abtem.core.energy import energy2sigma  # noqa: E402
from ase import Atoms  # noqa: E402

from dislotrack.data_gen.conventions import electron_wavelength_nm, h_from_b_hat  # noqa: E402
from dislotrack.data_gen.crystal import _frame, build_layered  # noqa: E402
from dislotrack.data_gen.dislocations import _CUT_REFERENCE, Dislocation, volterra_displacement  # noqa: E402
from dislotrack.data_gen.imaging import (  # noqa: E402
    Detector,
    Grid,
    Optics,
    PhaseGrating,
    bin_to_output,
    column_peak,
    draw_detector,
    draw_optics,
    transfer_function,
)
from dislotrack.data_gen.sample import (  # noqa: E402
    FrameGeometry,
    GeneratorConfig,
    _potential,
    draw_scene,
    render_frame,
    snapped,
)
from dislotrack.data_gen.specimen import (  # noqa: E402
    SpecimenParams,
    lattice_columns,
    rotation_matrix,
    specimen_columns,
)

abtem.config.set({"device": "cpu", "fft": "numpy", "dask.lazy": False, "diagnostics.progress_bar": False})
dask.config.set(scheduler="synchronous")


def draw_field(seed: int) -> tuple[Grid, SpecimenParams, list[Dislocation], Optics, Detector]:
    """Grid, specimen, two dislocations, lens and detector of one HRTEM sample.

    Parameters
    ----------
    seed : int
        Seed of the generator's draws (specimen rotation and origin, lens, detector).

    Returns
    -------
    grid, spec, disl, optics, detector
    """
    rng = np.random.default_rng(seed)
    cfg = GeneratorConfig(size=256, mode="hrtem", material="LiNiO2", realism=0.0, perfect_fraction=1.0)
    _, grid, spec, _ = draw_scene(rng, cfg)
    b = rotation_matrix(spec.rotation) @ spec.crystal.burgers["misfit"]
    fov = grid.fov_nm
    disl = [snapped(spec, Dislocation(0.35 * fov, 0.4 * fov, b, particle=0)),
            snapped(spec, Dislocation(0.65 * fov, 0.6 * fov, -b, particle=1))]
    return grid, spec, disl, draw_optics(rng), draw_detector(rng)


def field_atoms(spec: SpecimenParams, disl: list[Dislocation], grid: Grid,
                thickness_nm: float) -> tuple[Atoms, float]:
    """The field's columns extruded along the beam into a periodic ASE cell [Å].

    The cell is the generator's internal grid (field plus margin); an atom at image
    position ``x`` nm sits at ``x + (PAD + 1/2) * internal_pixel`` so that abTEM's pixel
    ``i`` is the internal pixel ``i``. Each column keeps the depths of its atoms in the
    perfect crystal; a dislocation adds ``b_z * theta / 2 pi`` along the beam, ``b_z``
    being the beam component of the lattice vector that projects onto its ``b``. Depths
    are shifted by a quarter period, which keeps the atomic layers of both zone axes off
    the boundaries of half-period slices.

    Returns
    -------
    atoms : ase.Atoms
    period : float
        Repeat distance along the zone axis [nm].
    """
    pc = spec.crystal
    prim = build_layered(spec.material)
    beam, ex, ey = _frame(spec.material, spec.zone)
    lat = np.array(list(itertools.product(range(-4, 5), repeat=3))) @ prim.cell[:]
    proj, depth = np.stack([lat @ ex, lat @ ey], axis=1), lat @ beam
    period = float(depth[(np.linalg.norm(proj, axis=1) < 1e-9) & (depth > 1e-9)].min())

    def lift(v: np.ndarray) -> float:
        """Beam component [nm] of a lattice vector projecting onto ``v`` (crystal frame)."""
        i = int(np.argmin(np.linalg.norm(proj - v, axis=1)))
        assert np.linalg.norm(proj[i] - v) < 1e-6, "not a projected lattice vector"
        return float(depth[i])

    # Depth of each atom of the primitive cell relative to its column's reference site.
    members = []
    for r, sym in zip(prim.positions, prim.get_chemical_symbols(), strict=True):
        xy = np.array([r @ ex, r @ ey])
        n = np.linalg.solve(pc.cell.T, (xy - pc.columns).T).T
        k = int(np.argmin(np.abs(n - np.rint(n)).sum(axis=1)))
        members.append((k, sym, float(r @ beam) - lift(np.rint(n[k]) @ pc.cell)))

    rot = rotation_matrix(spec.rotation)
    lo, hi = grid.bounds()[:2]
    pos, idx = lattice_columns(pc, rotation=spec.rotation, origin=spec.origin, bounds=grid.bounds(1.0))
    ij = np.rint(np.linalg.solve((pc.cell @ rot.T).T, (pos - spec.origin - pc.columns[idx] @ rot.T).T).T)
    z0 = ij @ np.array([lift(pc.v1), lift(pc.v2)])
    uz = np.zeros(len(pos))
    for d in disl:  # screw part, with the branch cut of volterra_displacement
        s = 1.0 if d.b @ _CUT_REFERENCE >= 0 else -1.0
        bhat = s * d.b / np.linalg.norm(d.b)
        rel = pos - (d.x, d.y)
        bz = (lift(rot.T @ (s * d.b)) + period / 2) % period - period / 2
        uz += s * bz * np.arctan2(rel @ h_from_b_hat(bhat), rel @ bhat) / (2 * np.pi)
    xy = pos + volterra_displacement(pos, disl)
    cols = specimen_columns(spec, disl, mode="hrtem", bounds=grid.bounds(1.0))
    assert np.allclose(cols.xy, xy), "extruded columns differ from the generator's"

    n_rep = max(1, round(thickness_nm / period))
    keep = np.all((xy >= lo) & (xy < hi), axis=1)
    xyz, symbols = [], []
    for k, sym, dz in members:
        sel = keep & (idx == k)
        zc = np.mod(z0[sel] + dz + uz[sel] + period / 4, period)  # off the slice boundaries
        z = (zc[:, None] + period * np.arange(n_rep)[None, :]).ravel()
        xyz.append(np.column_stack([np.repeat(xy[sel] - lo, n_rep, axis=0), z]))
        symbols += [sym] * len(z)
    side = grid.n_internal * grid.internal_pixel
    cell = 10 * np.array([side, side, n_rep * period])
    atoms = Atoms(symbols, positions=10 * np.concatenate(xyz), cell=cell, pbc=True)
    return atoms, period


def abtem_ctf(o: Optics) -> abtem.CTF:
    """abTEM's CTF for our Optics (Kirkland's defocus sign; our focal spread is a sigma)."""
    lam = electron_wavelength_nm(o.voltage_kv)
    return abtem.CTF(semiangle_cutoff=o.aperture_inv_nm * lam * 1e3, soft=False, energy=o.voltage_kv * 1e3,
                     defocus=10 * o.defocus_nm, Cs=1e7 * o.cs_mm, C12=-10 * o.astig_nm, phi12=o.astig_angle,
                     focal_spread=np.sqrt(2) * 10 * o.focal_spread_nm, angular_spread=o.convergence_mrad)


def multislice(atoms: Atoms, grid: Grid, o: Optics, period: float,
               exit_nm: tuple[float, ...]) -> tuple[float, list[np.ndarray], list[np.ndarray], list[float]]:
    """abTEM plane-wave HRTEM of ``atoms``, timed from potential to image.

    Returns
    -------
    seconds : float
        Potential, multislice, CTF and intensity of the last exit plane.
    exit_waves, ctf_images : list of ndarray
        Per exit plane: exit wave on the internal grid (y, x) and abTEM's image on it.
    mean_phase : list of float
        Per exit plane: sigma * mean projected potential [rad].
    """
    dz = period / 2  # two slices per repeat period
    planes = tuple(max(0, 2 * round(t / period) - 1) for t in exit_nm)
    t0 = time.perf_counter()
    pot = abtem.Potential(atoms, gpts=grid.n_internal, slice_thickness=10 * dz, exit_planes=planes,
                          projection="infinite", parametrization="lobato").build(lazy=False)
    waves = abtem.PlaneWave(energy=o.voltage_kv * 1e3).multislice(pot, lazy=False)
    images = waves.apply_ctf(abtem_ctf(o)).intensity().array
    seconds = time.perf_counter() - t0
    w, im = waves.array.reshape(-1, *waves.shape[-2:]), images.reshape(-1, *images.shape[-2:])
    sigma = energy2sigma(o.voltage_kv * 1e3)
    vmean = np.cumsum(pot.array.mean(axis=(1, 2), dtype=np.float64))
    return seconds, [a.T for a in w], [a.T for a in im], [sigma * vmean[p] for p in planes]


def our_image(pot: np.ndarray, wmax: float, grid: Grid, o: Optics) -> np.ndarray:
    """The generator's noiseless phase-object image (vacuum = 1)."""
    return PhaseGrating(pot, grid, o, column_peak(wmax, o.column_sigma_nm, grid)).image(o)


def lens(exit_wave: np.ndarray, grid: Grid, o: Optics) -> np.ndarray:
    """Our lens (`transfer_function`) applied to an exit wave, binned to the output grid."""
    psi = sfft.ifft2(sfft.fft2(exit_wave) * transfer_function(grid, o))
    return bin_to_output(np.abs(psi) ** 2, grid)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation (Pearson) of two images, optionally over a mask."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def time_generator(spec: SpecimenParams, disl: list[Dislocation], grid: Grid, o: Optics,
                   detector: Detector, repeats: int = 10) -> float:
    """Seconds per labelled sample (image, noise, cores, RS mask, dense targets) of this field."""
    rng = np.random.default_rng(0)
    kw = dict(grid=grid, mode="hrtem", imaging=o, detector=detector, rng=rng)
    render_frame(spec, disl, **kw)[0].targets()  # warm caches
    t0 = time.perf_counter()
    for _ in range(repeats):
        render_frame(spec, disl, **kw)[0].targets()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thickness", type=float, default=5.0, help="timed specimen thickness [nm]")
    ap.add_argument("--compare", type=float, nargs="+", default=[2.0, 5.0, 10.0], help="NCC thicknesses [nm]")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    grid, spec, disl, optics, detector = draw_field(args.seed)
    # Same lens for both; no absorption (abTEM has none without TDS); an aperture abTEM's
    # anti-aliasing (2/3 of Nyquist) does not cut.
    k_max = 0.95 / (3 * grid.internal_pixel)
    o = replace(optics, absorption=0.0, aperture_inv_nm=min(optics.aperture_inv_nm, k_max))
    print(f"# {platform.processor() or platform.machine()}, 1 thread, abTEM {abtem.__version__}, "
          f"{grid.size}x{grid.size} px at {grid.pixel_size} nm/px, internal {grid.n_internal}^2 at "
          f"{grid.internal_pixel} nm")
    print(f"# {spec.material} {spec.zone}, rotation {np.degrees(spec.rotation):.1f} deg, cores at "
          + ", ".join(f"({d.x:.1f}, {d.y:.1f}) nm" for d in disl))
    print(f"# lens: {o.voltage_kv:.0f} kV, defocus {o.defocus_nm:.1f} nm, Cs {o.cs_mm:.3f} mm, "
          f"astig {o.astig_nm:.1f} nm, aperture {o.aperture_inv_nm:.2f} 1/nm, focal spread "
          f"{o.focal_spread_nm:.1f} nm, convergence {o.convergence_mrad:.2f} mrad")

    t_gen = time_generator(spec, disl, grid, optics, detector)
    atoms, period = field_atoms(spec, disl, grid, 0.0)  # one period
    multislice(atoms, grid, o, period, (period,))  # warm-up: numba compilation
    atoms, period = field_atoms(spec, disl, grid, args.thickness)
    t_ms, *_ = multislice(atoms, grid, o, period, (args.thickness,))
    print(f"\ngenerator (phase object, labelled sample): {t_gen * 1e3:.0f} ms")
    print(f"abTEM multislice, {atoms.cell[2, 2] / 10:.2f} nm ({len(atoms)} atoms, period {period:.4f} nm): "
          f"{t_ms:.1f} s")
    print(f"ratio abTEM / generator: {t_ms / t_gen:.0f}x")

    pot, wmax = _potential(spec, disl, FrameGeometry(centre_nm=grid.fov_nm / 2), grid, "hrtem", 1.0)
    atoms, _ = field_atoms(spec, disl, grid, max(args.compare))
    _, waves, ctf_images, mean_phase = multislice(atoms, grid, o, period, tuple(args.compare))
    scale = column_peak(wmax, o.column_sigma_nm, grid) / pot.mean()  # peak phase per mean phase
    phases = np.linspace(0.15, 1.5, 10)  # the generator's range of Optics.phase
    yy, xx = np.mgrid[: grid.size, : grid.size] * grid.pixel_size
    near = np.min([np.hypot(xx - d.x, yy - d.y) for d in disl], axis=0) < 1.5  # core regions
    print("\n| thickness [nm] | lens check | phase [rad] | NCC | NCC < 1.5 nm of cores | best NCC (phase) |")
    print("|---|---|---|---|---|---|")
    for t, wave, ctf_im, mp in zip(args.compare, waves, ctf_images, mean_phase, strict=True):
        t = max(1, round(t / period)) * period  # whole periods
        ms = lens(wave, grid, o)
        check = ncc(ms, bin_to_output(ctf_im, grid))
        phase = mp * scale
        ours = our_image(pot, wmax, grid, replace(o, phase=phase))
        best = [ncc(ms, our_image(pot, wmax, grid, replace(o, phase=p))) for p in phases]
        i = int(np.argmax(best))
        print(f"| {t:.2f} | {check:.3f} | {phase:.2f} | {ncc(ms, ours):.3f} | {ncc(ms, ours, near):.3f} "
              f"| {best[i]:.3f} ({phases[i]:.2f}) |")


if __name__ == "__main__":
    main()
