"""The rock-salt label follows the rock salt the generator renders.

Cations are mixed at their undisplaced lattice positions and then moved by every core's
Volterra field (whose arctan term shifts the lattice by up to b/2 at any distance) and
the smooth strain; RS domains sit around cores. The label must undo all of it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from dislotrack.data_gen.dislocations import _CUT_REFERENCE, volterra_displacement
from dislotrack.data_gen.imaging import Grid, draw_detector, draw_probe
from dislotrack.data_gen.sample import (
    FrameGeometry,
    GeneratorConfig,
    _rs_raster,
    draw_scene,
    render_frame,
)
from dislotrack.data_gen.specimen import (
    RocksaltDomain,
    SpecimenParams,
    displace_lattice,
    rocksalt_mask,
    specimen_columns,
    undisplace_lattice,
)

#: Small STEM scenes crowded with cores, each inside an RS domain.
CFG = GeneratorConfig(size=96, mode="stem", density=3.0, rocksalt_probability=1.0,
                      perfect_fraction=0.0)


def _scene(seed: int) -> tuple:
    return draw_scene(np.random.default_rng(seed), CFG)


def _cation_columns(spec: SpecimenParams, disl: list, bounds: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Displaced positions [nm] of the cation columns and whether each was mixed (RS).

    A column is a cation column if a domain covering everything changes its weight,
    and mixed if the specimen's own domains do.
    """
    def weights(rs: list) -> np.ndarray:
        cols = specimen_columns(SpecimenParams(**{**spec.__dict__, "rocksalt": rs}), disl,
                                mode="stem", bounds=bounds)
        return cols.xy, cols.weight

    xy, w = weights(spec.rocksalt)
    _, plain = weights([])
    _, every = weights([RocksaltDomain(0.0, 0.0, 1e4, np.zeros((3, 2)))])
    cation = ~np.isclose(every, plain)
    return xy[cation], ~np.isclose(w, plain)[cation]


def _rendered_rock_salt(spec: SpecimenParams, disl: list, grid: Grid) -> np.ndarray:
    """Pixels whose nearest cation column (within 0.3 nm) was mixed: the rock salt the
    image shows, for the identity frame geometry."""
    xy, mixed = _cation_columns(spec, disl, grid.bounds(2.0))
    n = grid.size
    yy, xx = np.mgrid[0:n, 0:n] * grid.pixel_size
    dist, j = cKDTree(xy).query(np.stack([xx.ravel(), yy.ravel()], axis=1))
    return (mixed[j] & (dist < 0.3)).reshape(n, n)


@pytest.mark.parametrize("seed", [3, 4, 10])
def test_rs_mask_covers_the_rendered_rock_salt(seed):
    # IoU of the label with the mixed columns' pixels: 0.81 / 0.87 / 0.81 when the
    # label undid the smooth strain only; 0.93 / 0.97 / 0.95 now. The reference is
    # itself coarse (nearest column), so 0.9 is the bar.
    mode, grid, spec, disl = _scene(seed)
    assert disl and spec.rocksalt
    rng = np.random.default_rng(seed)
    s = render_frame(spec, disl, grid=grid, mode="stem", imaging=draw_probe(rng),
                     detector=draw_detector(rng, 1000.0), rng=rng)[0]
    label, shown = s.rs_mask > 0, _rendered_rock_salt(spec, disl, grid)
    assert shown.sum() > 500
    assert (label & shown).sum() / (label | shown).sum() >= 0.9


@pytest.mark.parametrize("seed", [3, 4, 10])
def test_rs_label_at_each_cation_column_is_its_mixing(seed):
    # Exact on the columns: a column's imaged position maps back to where it was mixed.
    # Within ~0.1 nm of a core the inverse is ambiguous: allow 0.1 % of the columns.
    mode, grid, spec, disl = _scene(seed)
    xy, mixed = _cation_columns(spec, disl, grid.bounds(1.0))
    assert mixed.sum() > 300
    label = rocksalt_mask(spec, xy, 1.0, disl)
    assert (label != mixed).sum() <= 1e-3 * len(xy)


@pytest.mark.parametrize("seed, growth", [(4, 1.0), (10, 1.3)])
def test_rs_raster_is_the_pointwise_label(seed, growth):
    # The raster inverts the field only near each domain's outline; it must give the
    # pointwise label everywhere, also through a drifted, sheared STEM frame and grown
    # domains (movies). Pixels where the inverse is ambiguous (at cores, on a cut's
    # ~0.01 nm sliver) may differ: at most 0.1 %.
    mode, grid, spec, disl = _scene(seed)
    geo = FrameGeometry(drift_nm=np.array([0.7, -0.4]), centre_nm=grid.fov_nm / 2,
                        distortion=np.array([[1.01, 0.02], [0.0, 0.99]]))
    fast = _rs_raster(spec, disl, geo, grid, growth).astype(bool)
    n = grid.size
    yy, xx = np.mgrid[0:n, 0:n] * grid.pixel_size
    c = np.array([geo.centre_nm, geo.centre_nm])
    spec_xy = (np.stack([xx.ravel(), yy.ravel()], axis=1) - c) @ np.linalg.inv(geo.distortion).T \
        + c - geo.drift_nm
    slow = rocksalt_mask(spec, spec_xy, growth, disl).reshape(n, n)
    assert slow.sum() > 500
    assert (fast != slow).sum() <= 1e-3 * n * n


def test_undisplace_inverts_displace_across_branch_cuts():
    # Reference points map back to themselves on either side of every cut. Within
    # ~0.03 nm of a cut the other fields make the two sides' images overlap or leave a
    # sliver (either side is then right, b apart), and within ~0.2 nm of a core the map
    # folds: those points are left out.
    mode, grid, spec, disl = _scene(4)
    ref = np.random.default_rng(0).uniform(0, grid.fov_nm, (4000, 2))
    back = undisplace_lattice(spec, displace_lattice(spec, ref, disl), disl)
    clear = np.ones(len(ref), bool)
    for d in disl:
        s = 1.0 if d.b @ _CUT_REFERENCE >= 0 else -1.0  # the frame of volterra_displacement
        along = s * d.b / np.linalg.norm(d.b)
        x, y = ((ref - (d.x, d.y)) @ np.stack([along, [-along[1], along[0]]], axis=1)).T
        clear &= (np.hypot(x, y) > 0.2) & ((x > 0) | (np.abs(y) > 0.1))
    assert clear.mean() > 0.9
    assert np.abs(back - ref)[clear].max() < 0.005


def test_volterra_all_cores_at_once_is_the_same_field():
    mode, grid, spec, disl = _scene(9)
    pts = np.random.default_rng(1).uniform(-2, 12, (3000, 2))
    np.testing.assert_allclose(volterra_displacement(pts, disl, all_cores_at_once=True),
                               volterra_displacement(pts, disl), atol=1e-5)


def test_overlapping_domains_mix_a_column_once_not_twice():
    # Two domains of mixing 0.5 summed swapped the Li and TM layers where they overlap,
    # so the layered contrast came back (inverted) inside labelled rock salt. A column
    # takes the largest mixing of the domains covering it.
    spec = SpecimenParams(**{**_scene(3)[2].__dict__, "rocksalt": []})
    bounds = (0.0, 10.0, 0.0, 10.0)
    plain = specimen_columns(spec, [], mode="stem", bounds=bounds)
    h0 = np.zeros((3, 2))

    def mixed(domains: list) -> np.ndarray:
        with_rs = SpecimenParams(**{**spec.__dict__, "rocksalt": domains})
        return specimen_columns(with_rs, [], mode="stem", bounds=bounds).weight

    one = mixed([RocksaltDomain(5.0, 5.0, 3.0, h0, 0.5)])
    two = mixed([RocksaltDomain(5.0, 5.0, 3.0, h0, 0.5), RocksaltDomain(5.5, 5.0, 3.0, h0, 0.5)])
    three = mixed([RocksaltDomain(5.0, 5.0, 3.0, h0, 0.5), RocksaltDomain(5.5, 5.0, 3.0, h0, 0.3)])
    centre = np.hypot(*(plain.xy - 5.0).T) < 2.0  # inside every domain
    assert (~np.isclose(one, plain.weight) & centre).sum() > 20  # the cation columns there
    np.testing.assert_allclose(two[centre], one[centre])
    np.testing.assert_allclose(three[centre], one[centre])
