"""The mirror [100] view (review stop 35, F2): zone ``[-100]`` is ``[100]`` seen from the
other side, and its images and labels are the mirror images of ``[100]``'s."""

from __future__ import annotations

import numpy as np
import pytest

from dislotrack.data_gen.conventions import h_from_b_hat, unit
from dislotrack.data_gen.crystal import MIRROR, ZONE_AXES, mirror_parent, project
from dislotrack.data_gen.dislocations import Dislocation
from dislotrack.data_gen.imaging import Detector, Grid, Optics, Probe
from dislotrack.data_gen.sample import render_frame
from dislotrack.data_gen.specimen import SpecimenParams, draw_specimen, rotation_matrix, snap_core

GRID = Grid(96, 0.1)
X0 = (GRID.size - 1) * GRID.pixel_size  # x [nm] of the last pixel column: x -> X0 - x mirrors


def _mirror_xy(xy: np.ndarray) -> np.ndarray:
    """Image point [nm] -> its mirror image across the vertical centre line."""
    return np.array([X0 - xy[0], xy[1]])


def test_the_mirror_zone_projects_to_the_mirror_image_of_100():
    a, m = project("LiNiO2", "[100]"), project("LiNiO2", "[-100]")
    assert mirror_parent("[-100]") == "[100]" and mirror_parent("[1-10]") is None
    np.testing.assert_allclose(m.cell, a.cell @ MIRROR, atol=1e-12)
    # Same columns (mod the cell) with the same contents.
    fa = np.mod(np.linalg.solve(m.cell.T, (a.columns @ MIRROR).T).T + 1e-9, 1)
    fm = np.mod(np.linalg.solve(m.cell.T, m.columns.T).T + 1e-9, 1)
    order_a, order_m = np.lexsort(fa.T), np.lexsort(fm.T)
    np.testing.assert_allclose(fa[order_a], fm[order_m], atol=1e-6)
    np.testing.assert_array_equal(a.is_cation_tm[order_a], m.is_cation_tm[order_m])


def test_draws_show_both_handednesses_of_100_equally():
    rng = np.random.default_rng(0)
    zones = [draw_specimen(rng, fov_nm=10.0).zone for _ in range(3000)]
    share = {z: zones.count(z) / len(zones) for z in ZONE_AXES}
    assert share["[100]"] == pytest.approx(0.35, abs=0.03)
    assert share["[-100]"] == pytest.approx(0.35, abs=0.03)
    assert share["[1-10]"] == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("kind", ["misfit", "basal"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_mirrored_core_snaps_to_the_mirror_image_of_its_site(kind, sign):
    # The mirror image of a core of b is a core of -MIRROR b (h -> MIRROR h); it must
    # land on the mirror image of the [100] core's site, or the mirror view would show
    # another core pattern.
    rot, origin = 0.7, np.array([0.21, 0.08])
    s100 = SpecimenParams(zone="[100]", rotation=rot, origin=origin)
    smir = SpecimenParams(zone="[-100]", rotation=-rot, origin=_mirror_xy(origin))
    b = sign * rotation_matrix(rot) @ s100.crystal.burgers[kind]
    for xy in np.random.default_rng(1).uniform(2, 7, (20, 2)):
        site = snap_core(s100, xy, b)
        np.testing.assert_allclose(snap_core(smir, _mirror_xy(xy), -MIRROR @ b), _mirror_xy(site),
                                   atol=1e-9)


@pytest.mark.parametrize("mode", ["hrtem", "stem"])
def test_the_mirror_view_renders_the_mirror_image_with_mirrored_labels(mode):
    # A misfit dipole in [100] at 0.2 rad (b within 2 deg of the image y axis: there the
    # branch cut, fixed in image axes by `dislocations._frame`, mirrors with it) and its
    # mirror image in [-100] at -0.2 rad: the noise-free images are mirror images
    # (round probe / lens without astigmatism), and so are the labels: x -> size-1-x,
    # h -> (-hx, hy), b -> (bx, -by) (= -MIRROR b: Conventions' b_hat = h turned 90 deg).
    rot, origin = 0.2, np.array([0.13, 0.27])
    s100 = SpecimenParams(zone="[100]", rotation=rot, origin=origin)
    smir = SpecimenParams(zone="[-100]", rotation=-rot, origin=_mirror_xy(origin))
    b = rotation_matrix(rot) @ s100.crystal.burgers["misfit"]
    cores = [(np.array([3.3, 4.1]), b, 0), (np.array([6.4, 5.2]), -b, 1)]
    d100 = [Dislocation(*snap_core(s100, xy, bb), bb, particle=p) for xy, bb, p in cores]
    dmir = [Dislocation(*snap_core(smir, _mirror_xy(xy), -MIRROR @ bb), -MIRROR @ bb, particle=p)
            for xy, bb, p in cores]
    imaging = Optics(astig_nm=0.0) if mode == "hrtem" else Probe(jitter_px=0.0)

    def render(spec: SpecimenParams, disl: list[Dislocation]):
        return render_frame(spec, disl, grid=GRID, mode=mode, imaging=imaging, detector=Detector(),
                            rng=np.random.default_rng(0), illumination=1.0)[0]

    a, m = render(s100, d100), render(smir, dmir)
    inner = (slice(8, -8), slice(8, -8))  # the internal grid's wrap-around margin is not mirrored
    scale = float(a.clean.std())
    assert np.abs(m.clean[inner] - a.clean[:, ::-1][inner]).max() < 1e-3 * scale
    # ... and not merely alike: [100] turned the other way is another pattern.
    other = render(SpecimenParams(zone="[100]", rotation=-rot, origin=_mirror_xy(origin)), []).clean
    assert np.abs(other[inner] - m.clean[inner]).max() > 0.3 * scale
    ca, cm = a.cores.sort_values("particle"), m.cores.sort_values("particle")
    assert len(ca) == 2
    np.testing.assert_allclose(cm["x"], GRID.size - 1 - ca["x"].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(cm["y"], ca["y"], atol=1e-6)
    np.testing.assert_allclose(cm[["hx", "hy"]], ca[["hx", "hy"]].to_numpy() * [-1, 1], atol=1e-9)
    np.testing.assert_allclose(cm[["bx_nm", "by_nm"]], ca[["bx_nm", "by_nm"]].to_numpy() * [1, -1],
                               atol=1e-9)
    b_m = cm[["bx_nm", "by_nm"]].to_numpy()
    np.testing.assert_allclose(cm[["hx", "hy"]], h_from_b_hat(unit(b_m)), atol=1e-9)
