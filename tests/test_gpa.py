"""Geometric phase analysis against analytic displacement fields.

Test images are sums of fringes ``cos(2 pi g.(r - u(r)))`` with a known ``u``
(0.1 nm/px, 256 x 256 px, (003)-like 0.473 nm and 0.24 nm fringes at an angle),
plus Gaussian noise. "Interior" excludes 32 px (1.6 x the 2 nm resolution) at the
edges, where the FFT's periodic wrap corrupts any GPA map.
"""

from __future__ import annotations

import numpy as np
import pytest

from dislotrack.infer.gpa import (
    NoReflectionError,
    complex_image,
    find_reflections,
    geometric_phase,
    phase_gradient,
    strain_maps,
)

PS = 0.1  # [nm/px]
N = 256
RES = 2.0  # [nm]
INTERIOR = np.s_[32:-32, 32:-32]


def gvec(d_nm: float, angle_deg: float) -> np.ndarray:
    """Reflection [1/nm] of spacing ``d_nm`` whose normal makes ``angle_deg`` with +x."""
    a = np.radians(angle_deg)
    return np.array([np.cos(a), np.sin(a)]) / d_nm


G1, G2 = gvec(0.473, 80.0), gvec(0.24, 15.0)


def positions_nm() -> np.ndarray:
    rows, cols = np.indices((N, N))
    return np.stack([cols * PS, rows * PS])  # (2, H, W): x, y [nm]


def fringes(u: np.ndarray, gs, rng: np.random.Generator, noise: float) -> np.ndarray:
    """``sum_g cos(2 pi g.(r - u))`` plus Gaussian noise of std ``noise``."""
    r = positions_nm()
    img = sum(np.cos(2 * np.pi * np.einsum("i,iyx->yx", g, r - u)) for g in gs)
    return img + noise * rng.standard_normal(img.shape)


def homogeneous_u(distortion: np.ndarray) -> np.ndarray:
    """``u = D (r - r_centre)`` [nm] for a constant distortion tensor ``D = grad u``."""
    r = positions_nm()
    return np.einsum("ij,jyx->iyx", distortion, r - r.mean(axis=(1, 2), keepdims=True))


def test_phase_of_rigid_shift_is_minus_2pi_g_dot_u():
    rng = np.random.default_rng(11)
    shift = np.array([0.07, -0.11])  # [nm]
    u = np.broadcast_to(shift[:, None, None], (2, N, N))
    img = fringes(u, [G1], rng, noise=0.05)
    phase, amplitude = geometric_phase(img, G1, pixel_size_nm=PS, resolution_nm=RES)
    expected = np.angle(np.exp(-2j * np.pi * G1 @ shift))
    assert np.abs(np.angle(np.exp(1j * (phase[INTERIOR] - expected)))).max() < 0.01
    assert np.allclose(amplitude[INTERIOR], 0.5, atol=0.01)  # |H_g| = half the fringe amplitude


@pytest.mark.parametrize("turn_deg", [0.0, 33.0, 100.0])
def test_find_reflections_recovers_both_g(turn_deg):
    rng = np.random.default_rng(12)
    g1, g2 = gvec(0.473, 80.0 + turn_deg), gvec(0.24, 15.0 + turn_deg)
    img = fringes(np.zeros((2, N, N)), [g1, g2], rng, noise=0.2)
    found = find_reflections(img, pixel_size_nm=PS)
    for g_true, g_found in zip([g1, g2], found, strict=True):
        g_true = g_true if g_true[0] > 0 else -g_true  # documented sign choice
        assert np.linalg.norm(g_found - g_true) / np.linalg.norm(g_true) < 2e-4


def test_find_reflections_ignores_harmonics_of_nonlinear_image():
    rng = np.random.default_rng(13)
    r = positions_nm()
    img = np.exp(sum(np.cos(2 * np.pi * np.einsum("i,iyx->yx", g, r)) for g in (G1, G2)))
    found = find_reflections(img + 0.2 * rng.standard_normal(img.shape), pixel_size_nm=PS)
    assert np.allclose(found, [G1, G2], rtol=0, atol=1e-3)


def test_find_reflections_refuses_noise_and_collinear_zones():
    rng = np.random.default_rng(20)
    with pytest.raises(NoReflectionError, match="no significant reflection 1"):
        find_reflections(rng.standard_normal((N, N)), pixel_size_nm=PS)
    r = positions_nm()
    layers = np.exp(np.cos(2 * np.pi * np.einsum("i,iyx->yx", G1, r)))  # 003, 006, ... only
    with pytest.raises(NoReflectionError, match="no significant reflection 2"):
        find_reflections(layers + 0.2 * rng.standard_normal((N, N)), pixel_size_nm=PS)
    g1 = find_reflections(layers, pixel_size_nm=PS, n=1)
    assert np.allclose(g1, [G1], rtol=0, atol=1e-3)


def test_uniform_strain_is_recovered_within_1e3():
    rng = np.random.default_rng(14)
    dist = np.array([[0.010, 0.004], [0.004, -0.006]])  # symmetric: pure strain
    img = fringes(homogeneous_u(dist), [G1, G2], rng, noise=0.05)
    maps = strain_maps(img, G1, G2, pixel_size_nm=PS, resolution_nm=RES)
    for key, true in [("exx", 0.010), ("eyy", -0.006), ("exy", 0.004), ("omega", 0.0)]:
        err = maps[key][INTERIOR] - true
        assert np.abs(err).max() < 1e-3, key
        assert abs(err.mean()) < 1e-4, key
    u_true = homogeneous_u(dist)
    for k, key in enumerate(["ux", "uy"]):
        err = maps[key][INTERIOR] - u_true[k][INTERIOR]
        assert np.abs(err - err.mean()).max() < 5e-3  # [nm], up to a translation


def test_unstrained_image_gives_zero_strain_with_found_reflections():
    rng = np.random.default_rng(15)
    img = fringes(np.zeros((2, N, N)), [G1, G2], rng, noise=0.05)
    g1, g2 = find_reflections(img, pixel_size_nm=PS)
    maps = strain_maps(img, g1, g2, pixel_size_nm=PS, resolution_nm=RES)
    for key in ["exx", "eyy", "exy", "omega"]:
        assert np.abs(maps[key][INTERIOR]).max() < 1e-3, key


def test_counter_clockwise_rotation_as_displayed_is_positive_omega():
    rng = np.random.default_rng(16)
    angle = np.radians(1.0)
    # Rotation by +1 deg counter-clockwise on screen (y down): x-axis (1, 0) -> (c, -s).
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    img = fringes(np.zeros((2, N, N)), [rot @ G1, rot @ G2], rng, noise=0.05)
    # The image itself confirms the sense: its fringe normals turned by +1 deg as
    # displayed (angle measured with y up).
    g_found = find_reflections(img, pixel_size_nm=PS)
    turn = np.degrees(np.arctan2(-g_found[:, 1], g_found[:, 0]) - np.arctan2(-G1[1], G1[0]))
    assert turn[0] == pytest.approx(1.0, abs=0.02)
    maps = strain_maps(img, G1, G2, pixel_size_nm=PS, resolution_nm=RES)
    assert np.abs(maps["omega"][INTERIOR] - np.sin(angle)).max() < 1e-3
    for key in ["exx", "eyy", "exy"]:
        assert np.abs(maps[key][INTERIOR]).max() < 1e-3, key


def test_reference_region_defines_zero_strain():
    rng = np.random.default_rng(17)
    dist = np.array([[0.0, 0.0], [0.0, 0.02]])  # eyy = 2 % below row 128
    r = positions_nm()
    u = np.zeros((2, N, N))
    u[1] = dist[1, 1] * np.clip(r[1] - 12.8, 0, None)  # continuous, kinked at y = 12.8 nm
    img = fringes(u, [G1, G2], rng, noise=0.05)
    wrong = 1.01  # reflections 1 % off: without a reference, eyy would be off by ~1 %
    ref = np.s_[32:90, 32:-32]
    g1, g2 = wrong * G1, wrong * G2
    maps = strain_maps(img, g1, g2, pixel_size_nm=PS, resolution_nm=RES, reference=ref)
    assert np.abs(maps["eyy"][32:90, 32:-32]).max() < 1e-3
    assert np.abs(maps["eyy"][170:-32, 32:-32] - 0.02).max() < 1e-3
    assert np.abs(maps["exx"][170:-32, 32:-32]).max() < 1e-3
    assert np.allclose(maps["g"], [G1, G2], rtol=2e-4, atol=0)
    assert abs(np.nanmean(maps["uy"][32:90, 32:-32])) < 1e-3  # [nm]


def test_phase_gradient_needs_no_unwrapping():
    rng = np.random.default_rng(18)
    dist = np.array([[0.03, 0.0], [0.0, 0.0]])
    img = fringes(homogeneous_u(dist), [G2], rng, noise=0.05)
    hg = complex_image(img, G2, pixel_size_nm=PS, resolution_nm=RES)
    phase, _ = geometric_phase(img, G2, pixel_size_nm=PS, resolution_nm=RES)
    jumps = np.abs(np.diff(phase[INTERIOR], axis=1)) > np.pi
    assert jumps.sum(axis=1).min() >= 2  # the wrapped phase wraps along every row
    dpdx, dpdy = phase_gradient(hg, G2, pixel_size_nm=PS)
    expected = -2 * np.pi * dist.T @ G2  # grad P = -2 pi (grad u)^T g [rad/nm]
    tol = 2 * np.pi * np.linalg.norm(G2) * 1e-3  # a strain of 1e-3 [rad/nm]
    assert np.abs(dpdx[INTERIOR] - expected[0]).max() < tol
    assert np.abs(dpdy[INTERIOR] - expected[1]).max() < tol


def test_weak_lattice_is_masked():
    rng = np.random.default_rng(19)
    img = fringes(np.zeros((2, N, N)), [G1, G2], rng, noise=0.05)
    img[:, :80] = 0.05 * rng.standard_normal((N, 80))  # amorphous strip on the left
    maps = strain_maps(img, G1, G2, pixel_size_nm=PS, resolution_nm=RES)
    assert not maps["valid"][32:-32, 10:60].any()
    assert np.isnan(maps["exx"][32:-32, 10:60]).all()
    assert maps["valid"][32:-32, 120:-32].all()


@pytest.mark.parametrize(
    ("g", "kwargs", "match"),
    [
        (G1, dict(pixel_size_nm=0.0, resolution_nm=RES), "pixel_size_nm"),
        (np.array([6.0, 0.0]), dict(pixel_size_nm=PS, resolution_nm=RES), "Nyquist"),
        (G1, dict(pixel_size_nm=PS, resolution_nm=0.2), "too fine"),
        (np.array([4.8, 0.0]), dict(pixel_size_nm=PS, resolution_nm=RES), "Friedel"),
    ],
)
def test_bad_arguments_are_reported(g, kwargs, match):
    with pytest.raises(ValueError, match=match):
        geometric_phase(np.zeros((32, 32)), g, **kwargs)


def test_collinear_reflections_are_rejected():
    with pytest.raises(ValueError, match="collinear"):
        strain_maps(np.ones((64, 64)), G1, 2 * G1, pixel_size_nm=PS, resolution_nm=RES)
