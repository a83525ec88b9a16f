"""Volterra dislocations on the projected lattice: topology and physical cut."""

import numpy as np
import pytest
from scipy.signal import find_peaks
from scipy.spatial import cKDTree

from dislotrack.data_gen.crystal import ZONE_AXES, project
from dislotrack.data_gen.dislocations import Dislocation, burgers_closure, volterra_displacement
from dislotrack.data_gen.specimen import lattice_columns, rotation_matrix


def _dislocated(zone, kind, sign, rot, origin, half=45.0):
    pc = project("LiNiO2", zone)
    b = sign * rotation_matrix(rot) @ pc.burgers[kind]
    d = Dislocation(0.0, 0.0, b)
    pos, idx = lattice_columns(pc, rotation=rot, origin=origin, bounds=(-half, half, -half, half))
    return pc, d, pos, idx, pos + volterra_displacement(pos, [d])


def _layers_along_normal(tm_xy, normal, along, offset, length=30.0):
    """Count (003) layers crossed by a line parallel to the layer normal."""
    s = np.linspace(-length, length, 8000)
    near = tm_xy[np.abs((tm_xy - offset * along) @ along) < 1.0]
    dn = s[:, None] - (near @ normal)[None, :]
    dt = ((near - offset * along) @ along)[None, :]
    prof = np.exp(-(dn**2) / (2 * 0.08**2) - dt**2 / (2 * 0.3**2)).sum(axis=1)
    peaks, _ = find_peaks(prof, prominence=0.3 * prof.max())
    return len(peaks)


@pytest.mark.parametrize("zone", list(ZONE_AXES))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_h_points_into_the_extra_half_plane(zone, sign):
    rng = np.random.default_rng(11)
    rot = rng.uniform(0, 2 * np.pi)
    pc, d, pos, idx, deformed = _dislocated(zone, "misfit", sign, rot, rng.uniform(0, 1, 2))
    normal = rotation_matrix(rot) @ np.array([0.0, 1.0])
    along = rotation_matrix(rot) @ np.array([1.0, 0.0])
    tm = deformed[pc.is_cation_tm[idx]]
    side = np.sign(d.h @ along)
    n_h = _layers_along_normal(tm, normal, along, 3.0 * side)
    n_other = _layers_along_normal(tm, normal, along, -3.0 * side)
    assert n_h - n_other == 1


@pytest.mark.parametrize("zone", list(ZONE_AXES))
@pytest.mark.parametrize("kind", ["misfit", "basal"])
def test_burgers_circuit_closure(zone, kind):
    pc = project("LiNiO2", zone)
    b = pc.burgers[kind]
    d = Dislocation(0.03, -0.02, b)
    # A rectangular circuit of lattice points around the core, counter-clockwise.
    n = 8
    path = [(i, -n) for i in range(-n, n)] + [(n, j) for j in range(-n, n)]
    path += [(i, n) for i in range(n, -n, -1)] + [(-n, j) for j in range(n, -n, -1)]
    loop = np.asarray(path, float) @ pc.cell + np.array([0.011, 0.017])
    if np.linalg.det(pc.cell) < 0:  # a left-handed cell (the mirror zone): reverse the loop
        loop = loop[::-1]
    closure = burgers_closure([d], loop, lattice=pc.cell)
    # The displacement field carries the b it was given, sign included: this sense of
    # circuit closes on -b, the reverse one on +b (magnitude exact: lattice steps).
    np.testing.assert_allclose(closure, -b, atol=1e-9)
    np.testing.assert_allclose(burgers_closure([d], loop[::-1], lattice=pc.cell), b, atol=1e-9)
    # The same circuit well away from the core closes.
    far = burgers_closure([d], loop + np.array([9.0, 9.0]), lattice=pc.cell)
    assert np.allclose(far, 0.0)


@pytest.mark.parametrize("zone", list(ZONE_AXES))
def test_cut_leaves_no_overlapping_or_missing_columns(zone):
    rng = np.random.default_rng(5)
    _, d, pos, _, deformed = _dislocated(zone, "misfit", 1.0, rng.uniform(0, 6), rng.uniform(0, 1, 2),
                                         half=8.0)
    d_perfect = cKDTree(pos).query(pos, k=2)[0][:, 1]
    d_def = cKDTree(deformed).query(deformed, k=2)[0][:, 1]
    r = np.hypot(*(pos - (d.x, d.y)).T)
    away = (r > 1.0) & (np.abs(pos).max(axis=1) < 7.0)
    # Away from the core every column keeps a neighbour at about the perfect distance:
    # nothing piles up on the cut and no gap opens.
    assert np.all(np.abs(d_def[away] - d_perfect[away]) < 0.15 * d_perfect.min())
    assert d_def.min() > 0.25 * d_perfect.min()


def test_dipole_far_field_cancels():
    b = np.array([0.0, 0.473])
    pair = [Dislocation(0.0, 0.0, b), Dislocation(1.0, 0.0, -b)]
    far = np.array([[40.0, 25.0], [-30.0, 35.0]])
    assert np.abs(volterra_displacement(far, pair)).max() < 0.01


@pytest.mark.parametrize("zone", list(ZONE_AXES))
@pytest.mark.parametrize("kind", ["misfit", "basal"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cores_on_their_lattice_site_leave_the_cut_clean(zone, kind, sign):
    from dislotrack.data_gen.specimen import SpecimenParams, snap_core

    rng = np.random.default_rng(17)
    rot = rng.uniform(0, 2 * np.pi)
    spec = SpecimenParams(zone=zone, rotation=rot, origin=rng.uniform(0, 1, 2))
    pc = project("LiNiO2", zone)
    b = sign * rotation_matrix(rot) @ pc.burgers[kind]
    core = snap_core(spec, np.array([10.0, 10.0]), b)
    pos, _ = lattice_columns(pc, rotation=rot, origin=spec.origin, bounds=(0, 20, 0, 20))
    deformed = pos + volterra_displacement(pos, [Dislocation(*core, b)])
    d_perfect = cKDTree(pos).query(pos, k=2)[0][:, 1].min()
    d_def = cKDTree(deformed).query(deformed, k=2)[0][:, 1]
    away = np.hypot(*(pos - core).T) > 1.0
    assert d_def[away].min() > 0.6 * d_perfect
