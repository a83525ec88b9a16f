"""Lattice measurement and the Burgers vectors it allows (infer.lattice)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dislotrack.data_gen.conventions import h_from_b_hat, unit
from dislotrack.infer.lattice import Lattice, measure_lattice, snap_h

PS, D = 0.1, 0.473


def _lattice_image(v1: np.ndarray, v2: np.ndarray, *, rot_deg: float, size: int = 256,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy image of a 2-D lattice with real basis v1, v2 [nm] turned by rot_deg, and
    the rotation matrix."""
    t = np.deg2rad(rot_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    g = np.linalg.inv(np.stack([rot @ v1, rot @ v2])).T  # reciprocal basis, rows
    y, x = np.mgrid[:size, :size] * PS
    img = sum(np.cos(2 * np.pi * (gi[0] * x + gi[1] * y)) for gi in (g[1], g[0], g[0] + g[1]))
    return img + np.random.default_rng(seed).normal(0, 1.0, img.shape), rot


def test_oblique_lattice_gives_the_tilted_misfit_burgers_vector():
    # LiNiO2 along [100]: layers 0.249 nm columns, stacking shift 0.083 nm per layer.
    v1, v2 = np.array([0.249, 0.0]), np.array([0.083, D])
    img, rot = _lattice_image(v1, v2, rot_deg=23.0)
    lat = measure_lattice([img, img], pixel_size_nm=PS, d_spacing_nm=D)
    assert lat is not None and lat.g_layer is not None
    assert 1 / np.hypot(*lat.g003) == pytest.approx(D, rel=0.01)
    b = lat.burgers_vectors()
    true_b = rot @ v2  # the shortest vector with (003) index 1
    cos = abs(unit(b["misfit"]) @ unit(true_b))
    assert np.degrees(np.arccos(min(cos, 1.0))) < 1.0  # 10 deg tilt recovered to < 1 deg
    assert np.hypot(*b["basal"]) == pytest.approx(0.249, rel=0.02)


def test_only_003_fringes_give_no_burgers_vectors():
    y, x = np.mgrid[:256, :256] * PS
    img = np.cos(2 * np.pi * (0.3 * x + 0.95 * y) / np.hypot(0.3, 0.95) / D)
    img = img + np.random.default_rng(1).normal(0, 1.0, img.shape)
    lat = measure_lattice([img], pixel_size_nm=PS, d_spacing_nm=D)
    assert lat is not None and lat.g_layer is None
    assert lat.burgers_vectors() == {} and len(lat.allowed()[0]) == 0
    assert measure_lattice([np.random.default_rng(2).normal(size=(128, 128))],
                           pixel_size_nm=PS, d_spacing_nm=D) is None


def test_snap_h_sets_each_track_to_the_nearest_allowed_dislocation():
    lat = Lattice(np.array([0.0, 1 / D]), np.array([1 / 0.249, -0.083 / 0.249 / D]))
    h_ok, b_ok = lat.allowed()
    h_m = h_ok[0]  # the misfit h
    off = lambda deg, v: unit(np.array([[np.cos(np.deg2rad(deg)), -np.sin(np.deg2rad(deg))],  # noqa: E731
                                        [np.sin(np.deg2rad(deg)), np.cos(np.deg2rad(deg))]]) @ v)
    tracks = pd.DataFrame({
        "particle": [0, 0, 1, 1, 2, 2],
        "hx": [*[off(6, h_m)[0]] * 2, *[off(-4, -h_m)[0]] * 2, *[off(45, h_m)[0]] * 2],
        "hy": [*[off(6, h_m)[1]] * 2, *[off(-4, -h_m)[1]] * 2, *[off(45, h_m)[1]] * 2],
        "bx_nm": 0.0, "by_nm": 0.0})
    out = snap_h(tracks, lat)
    assert np.allclose(out.loc[:1, ["hx", "hy"]], h_m)
    assert np.allclose(out.loc[2:3, ["hx", "hy"]], -h_m)
    assert np.allclose(out.loc[:1, ["bx_nm", "by_nm"]], b_ok[0])  # b_hat = (hy, -hx) of h
    assert np.allclose(unit(out.loc[:1, ["bx_nm", "by_nm"]].to_numpy()),
                       np.c_[out.hy[:2], -out.hx[:2]])
    assert out.loc[4:, ["hx", "hy"]].equals(tracks.loc[4:, ["hx", "hy"]])  # 45 deg: kept
    assert snap_h(tracks, None).equals(tracks)
    np.testing.assert_allclose(h_from_b_hat(unit(b_ok)), h_ok)


def _aliased_zone_image(seed: int = 200) -> np.ndarray:
    """A generated ``[1-10]`` frame at 0.1 nm/px: its 0.144 nm in-layer planes lie beyond
    Nyquist, so every spot but (003) and its harmonics is an alias or noise."""
    from dislotrack.data_gen.dislocations import Dislocation
    from dislotrack.data_gen.imaging import Grid, draw_detector, draw_optics
    from dislotrack.data_gen.sample import render_frame, snapped
    from dislotrack.data_gen.specimen import draw_specimen, rotation_matrix

    rng = np.random.default_rng(seed)
    grid = Grid(256, PS)
    spec = next(s for s in (draw_specimen(rng, fov_nm=grid.fov_nm, realism=0.0) for _ in range(50))
                if s.zone == "[1-10]")
    b = rotation_matrix(spec.rotation) @ spec.crystal.burgers["misfit"]
    core = snapped(spec, Dislocation(12.8, 12.8, b))
    return render_frame(spec, [core], grid=grid, mode="hrtem", imaging=draw_optics(rng),
                        detector=draw_detector(rng, 1e4), rng=rng)[0].image.astype(float)


def test_a_spot_the_layered_lattice_cannot_have_is_no_in_layer_reflection():
    from dislotrack.infer.gpa import NoReflectionError, find_reflections

    img = _aliased_zone_image()
    lat = measure_lattice([img], pixel_size_nm=PS, d_spacing_nm=D)
    assert lat is not None and lat.g_layer is None  # was an alias at 0.196 nm: b 13 deg off
    with pytest.raises(NoReflectionError, match="not one of a layered lattice"):
        find_reflections(img, pixel_size_nm=PS, layered=True)
    assert len(find_reflections(img, pixel_size_nm=PS)) == 2  # without the check: the alias
    # A real [100]-like lattice keeps its (012)-type reflection under the same check.
    v1, v2 = np.array([0.249, 0.0]), np.array([0.083, D])
    real, _ = _lattice_image(v1, v2, rot_deg=23.0)
    g = find_reflections(real, pixel_size_nm=PS, layered=True)
    assert 1 / np.hypot(*g[1]) == pytest.approx(0.236, rel=0.05)  # (012): 0.249 in-layer, l = 2


def test_the_layered_reflection_check_does_not_depend_on_the_pixel_size():
    from dislotrack.data_gen.conventions import is_layered_reflection

    g003 = np.array([0.0, 1 / D])
    spots = np.array([[1 / 0.2465, 2 / D / 3], [1 / 0.2465, 0.5 / D], [1.76, 4.84]])  # (012), l = 1.5, alias
    for scale in (1.0, 0.8, 1.25):  # a pixel size off by 20-25 % scales every frequency alike
        assert is_layered_reflection(spots * scale, g003 * scale).tolist() == [True, False, False]


def test_snap_h_weighs_every_detection_alike_whatever_the_length_of_its_h():
    # Hand annotations or other detectors give h of any length: its direction counts.
    lat = Lattice(np.array([0.0, 1 / D]), np.array([1 / 0.249, -0.083 / 0.249 / D]))
    h_m = lat.allowed()[0][0]
    turn = lambda deg: np.array([[np.cos(np.deg2rad(deg)), -np.sin(np.deg2rad(deg))],  # noqa: E731
                                 [np.sin(np.deg2rad(deg)), np.cos(np.deg2rad(deg))]]) @ h_m
    h = np.array([turn(10), turn(10), 10 * turn(-80)])  # unit mean 17 deg off h_m; raw mean 69
    tracks = pd.DataFrame({"particle": 0, "hx": h[:, 0], "hy": h[:, 1]})
    assert np.allclose(snap_h(tracks, lat)[["hx", "hy"]], h_m)


def test_registration_reflections_only_where_the_in_layer_spot_is_no_alias():
    # [100]-type lattices (cycles/nm) measured on benchmark movies at 0.1 nm/px.
    chiral = Lattice(np.array([0.4669, -2.0517]), np.array([4.245, -0.508]))  # 0.234 nm spot
    near_nyquist = Lattice(np.array([-1.617, -1.300]), np.array([-0.234, -5.039]))  # 0.198 nm
    assert chiral.is_chiral and near_nyquist.is_chiral
    np.testing.assert_allclose(chiral.registration_reflections(0.1),
                               [[0.04669, -0.20517], [0.4245, -0.0508]])
    assert near_nyquist.registration_reflections(0.1) is None  # 0.504 cycles/px
    genuine_0204 = Lattice(np.array([0.4669, -2.0517]), np.array([4.96, -0.2]))  # 0.496 cycles/px
    assert genuine_0204.registration_reflections(0.1) is not None
    assert near_nyquist.registration_reflections(0.05) is not None  # resolved at finer pixels
    # ... but not when the spot was measured on the coarser grid, where it had folded.
    assert near_nyquist.registration_reflections(0.05, measured_on_nm=0.1) is None
    achiral = Lattice(np.array([0.0, 2.114]), np.array([4.0, 0.0]))  # [1-10]-like: no tilt
    assert not achiral.is_chiral and achiral.registration_reflections(0.1) is None
    assert Lattice(np.array([0.0, 2.114]), None).registration_reflections(0.1) is None
