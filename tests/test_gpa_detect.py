"""Dislocation cores, Burgers vectors, half-plane directions and rock-salt from GPA.

Test images: fringes ``cos(2 pi g.(r - u))`` with the isotropic Volterra edge
field ``u`` (image axes, y down; x' along b, y' = b turned by +90 deg in the
(x, y) frame), 0.1 nm/px, 256 x 256 px, plus noise. The side of the extra
half-plane is established by counting fringes in the image itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from dislotrack.data_gen.conventions import h_from_b_hat, unit
from dislotrack.infer.gpa import _spectrum, geometric_phase
from dislotrack.infer.gpa_detect import (
    _noise_amplitude,
    detect_cores_gpa,
    phase_windings,
    rocksalt_mask_gpa,
)

PS = 0.1  # [nm/px]
N = 256
G1 = np.array([np.cos(np.radians(80.0)), np.sin(np.radians(80.0))]) / 0.473  # (003) [1/nm]
G2 = np.array([np.cos(np.radians(10.0)), np.sin(np.radians(10.0))]) / 0.24  # (012)-like: l = 2 [1/nm]


def rotate(v: np.ndarray, deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ v


def positions_nm() -> np.ndarray:
    rows, cols = np.indices((N, N))
    return np.stack([cols * PS, rows * PS])


def volterra_u(core_px, b_nm, nu: float = 0.3) -> np.ndarray:
    """Isotropic edge-dislocation displacement [nm], shape (2, H, W)."""
    b = np.hypot(*b_nm)
    e_x = np.asarray(b_nm) / b
    e_y = np.array([-e_x[1], e_x[0]])
    d = positions_nm() - PS * np.asarray(core_px, dtype=float)[:, None, None]
    x, y = np.einsum("i,iyx->yx", e_x, d), np.einsum("i,iyx->yx", e_y, d)
    r2 = x * x + y * y + 1e-12
    ux = b / (2 * np.pi) * (np.arctan2(y, x) + x * y / (2 * (1 - nu) * r2))
    uy = -b / (2 * np.pi) * ((1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2)
                             + (x * x - y * y) / (4 * (1 - nu) * r2))
    return ux * e_x[:, None, None] + uy * e_y[:, None, None]


def fringes(u: np.ndarray, gs, rng: np.random.Generator | None = None, noise: float = 0.0,
            amps=(1.0, 1.0)):
    r = positions_nm()
    phases = [2 * np.pi * np.einsum("i,iyx->yx", g, r - u) for g in gs]
    img = sum(a * np.cos(p) for p, a in zip(phases, amps[: len(gs)], strict=True))
    return img if rng is None else img + noise * rng.standard_normal(img.shape)


def zero_crossings(img: np.ndarray, start_px, end_px) -> int:
    """Sign changes of ``img`` sampled (bilinear) every 0.2 px along a segment."""
    t = np.linspace(0.0, 1.0, int(np.hypot(*np.subtract(end_px, start_px)) / 0.2))
    xy = np.asarray(start_px)[:, None] + t * np.subtract(end_px, start_px)[:, None]
    profile = ndi.map_coordinates(img, [xy[1], xy[0]], order=1)
    return int(np.count_nonzero(np.diff(np.sign(profile)) != 0))


def fringe_excess(img: np.ndarray, core_px, direction) -> float:
    """Extra fringes crossed 25 px on the ``+direction`` side of the core.

    Zero crossings along 180 px lines perpendicular to ``direction`` on either
    side, halved and averaged over 10 shifts of the lines along themselves (so
    partial fringes at the ends average out). With ``direction`` along the
    fringes, an extra half-plane gives about one fringe more on its side, less
    the part of the phase winding that the finite lines miss (~0.2-0.4).
    """
    n = unit(np.asarray(direction, dtype=float))
    t = np.array([n[1], -n[0]])
    excess = []
    for shift in np.linspace(-5, 5, 10):
        ends = [core_px + s * 25 * n + (shift + e) * t for s in (+1, -1) for e in (-90, 90)]
        excess.append(zero_crossings(img, *ends[:2]) - zero_crossings(img, *ends[2:]))
    return float(np.mean(excess)) / 2


# Lattice turns [deg] and Burgers vectors b = i a1 + j a2 in the basis dual to (g1, g2).
CASES = [(0.0, (1, 0)), (0.0, (-1, 0)), (40.0, (1, 1)), (130.0, (0, 1)), (250.0, (1, -1))]


@pytest.mark.parametrize(("turn", "ij"), CASES)
def test_single_dislocation_has_physical_b_and_h(turn, ij):
    rng = np.random.default_rng(21)
    gs = np.array([rotate(G1, turn), rotate(G2, turn)])
    b_true = np.linalg.inv(gs) @ np.asarray(ij, dtype=float)  # g_k . b = ij[k]
    core = np.array([130.3, 121.7])  # [px]
    u = volterra_u(core, b_true)
    cores = detect_cores_gpa(fringes(u, gs, rng, noise=0.2), pixel_size_nm=PS)
    assert list(cores.columns) == ["x", "y", "score", "hx", "hy", "bx_nm", "by_nm"]
    assert len(cores) == 1
    c = cores.iloc[0]
    h_found = np.array([c.hx, c.hy])
    # Physics from the image alone: for each fringe set that the dislocation cuts,
    # lines across the fringes on either side of the core cross one fringe more on
    # the side of the terminating (extra) fringe; h must point to that side.
    for g, n in zip(gs, ij, strict=True):
        if n != 0:
            along = unit(np.array([-g[1], g[0]]))  # the fringe direction
            excess = fringe_excess(fringes(u, [g]), core, along)
            assert abs(excess) > 0.5 * abs(n)
            assert np.dot(h_found, np.sign(excess) * along) > 0.3
    assert np.degrees(np.arccos(np.dot(h_found, h_from_b_hat(unit(b_true))))) < 1.0
    assert np.allclose([c.bx_nm, c.by_nm], b_true, atol=0.005)  # [nm]
    assert np.hypot(c.x - core[0], c.y - core[1]) < 1.0  # [px]
    assert 0.8 < c.score <= 1.0  # g1 and g2 vortices may sit ~1 px apart


def test_burgers_vector_projects_to_the_003_spacing():
    rng = np.random.default_rng(22)
    b_true = np.linalg.inv(np.array([G1, G2])) @ np.array([1.0, 0.0])  # one extra (003) plane
    img = fringes(volterra_u((127.6, 133.2), b_true), [G1, G2], rng, noise=0.2)
    c = detect_cores_gpa(img, pixel_size_nm=PS).iloc[0]
    along_g003 = np.dot([c.bx_nm, c.by_nm], unit(G1))
    assert along_g003 == pytest.approx(0.473, rel=0.01)  # [nm]
    # With the (003) reflection alone, b is that projection only.
    c1 = detect_cores_gpa(img, pixel_size_nm=PS, g=G1[None]).iloc[0]
    assert np.allclose([c1.bx_nm, c1.by_nm], 0.473 * unit(G1), atol=0.002)
    assert np.hypot(c1.x - 127.6, c1.y - 133.2) < 1.0


def test_winding_map_of_a_dislocation():
    rng = np.random.default_rng(23)
    b_true = np.linalg.inv(np.array([G1, G2])) @ np.array([1.0, 0.0])
    core = np.array([100.4, 140.8])
    img = fringes(volterra_u(core, b_true), [G1, G2], rng, noise=0.2)
    for g, n_expected in [(G1, -1), (G2, 0)]:  # n = -g.b
        phase, _ = geometric_phase(img, g, pixel_size_nm=PS, resolution_nm=1.0)
        w = phase_windings(phase)[10:-10, 10:-10]
        ii, jj = np.nonzero(w)
        assert w[ii, jj].tolist() == ([n_expected] if n_expected else [])
        if n_expected:  # plaquette centre (j + 0.5, i + 0.5), cropped by 10 px
            assert np.hypot(jj[0] + 10.5 - core[0], ii[0] + 10.5 - core[1]) < 2.0


def test_phase_windings_sign_size_and_amplitude_cut():
    rows, cols = np.indices((40, 50))
    x0, y0 = 20.3, 17.6
    theta = np.arctan2(rows - y0, cols - x0)  # grows clockwise as displayed (y down)
    w = phase_windings(theta)
    assert w.shape == (39, 49)
    assert w[17, 20] == 1 and np.count_nonzero(w) == 1
    assert phase_windings(np.exp(-1j * theta))[17, 20] == -1
    big = phase_windings(theta, loop_px=6)
    assert big.shape == (34, 44)
    assert (big[12:18, 15:21] == 1).all() and np.count_nonzero(big) == 36
    weak = np.where(np.hypot(rows - 30, cols - 40) < 8, 0.0, 1.0)  # weak far from the core
    cut = phase_windings(theta, loop_px=6, amplitude=weak, min_amplitude=0.9)
    assert (cut[12:18, 15:21] == 1).all()
    no_core = np.where(np.hypot(rows - y0, cols - x0) < 8, 0.0, 1.0)
    assert not phase_windings(theta, loop_px=6, amplitude=no_core, min_amplitude=0.9).any()


@pytest.mark.parametrize("separation_nm", [1.0, 2.5])
def test_dipole_gives_two_opposite_cores(separation_nm):
    rng = np.random.default_rng(24)
    b = np.linalg.inv(np.array([G1, G2])) @ np.array([1.0, 0.0])
    h = h_from_b_hat(unit(b))
    a = np.array([128.0, 128.0]) - 5 * separation_nm * h
    c = np.array([128.0, 128.0]) + 5 * separation_nm * h + 2.0 * unit(b)
    img = fringes(volterra_u(a, b) + volterra_u(c, -b), [G1, G2], rng, noise=0.2)
    cores = detect_cores_gpa(img, pixel_size_nm=PS)
    assert len(cores) == 2
    for pos, b_core in [(a, b), (c, -b)]:
        d = np.hypot(cores.x - pos[0], cores.y - pos[1])
        hit = cores.iloc[int(np.argmin(d))]
        assert d.min() < 1.0
        assert np.allclose([hit.bx_nm, hit.by_nm], b_core, atol=0.005)
        assert np.dot([hit.hx, hit.hy], h_from_b_hat(unit(b_core))) > 0.999


@pytest.mark.parametrize("seed", [25, 26, 27])
def test_perfect_noisy_lattice_has_no_cores(seed):
    rng = np.random.default_rng(seed)
    img = fringes(np.zeros((2, N, N)), [G1, G2], rng, noise=0.5)
    assert detect_cores_gpa(img, pixel_size_nm=PS).empty


def test_noise_amplitude_matches_white_noise():
    noise = np.random.default_rng(31).standard_normal((N, N))  # std 1 per pixel
    for res in (1.0, 2.0):
        sigma_k = 2.3548 / (2 * np.pi * res)  # mask std [1/nm]
        # E|H|^2 = std^2 * sum(M^2) / n_pixels = pi sigma_k^2 pixel_size^2
        expected = np.sqrt(np.pi) * sigma_k * PS
        assert _noise_amplitude(_spectrum(noise), G2, PS, res) == pytest.approx(expected, rel=0.05)


def test_reflection_lost_in_noise_is_ignored():
    zero = np.zeros((2, N, N))
    amps = (1.0, 0.15)  # the 0.24 nm fringes are buried in noise of std 1
    found = [
        [len(detect_cores_gpa(fringes(zero, [G1, G2], np.random.default_rng(s), 1.0, amps),
                              pixel_size_nm=PS, g=[G1, G2], min_snr=snr)) for s in (32, 33)]
        for snr in (0.0, 3.0)
    ]
    assert min(found[0]) > 10  # without the noise floor, noise vortices of g2 abound
    assert found[1] == [0, 0]
    b_true = np.linalg.inv(np.array([G1, G2])) @ np.array([1.0, 0.0])
    img = fringes(volterra_u((120.2, 131.9), b_true), [G1, G2], np.random.default_rng(34), 1.0,
                  amps)
    cores = detect_cores_gpa(img, pixel_size_nm=PS, g=[G1, G2])
    assert len(cores) == 1
    c = cores.iloc[0]
    assert np.hypot(c.x - 120.2, c.y - 131.9) < 2.0
    # g2 is not seen, so b is its projection on g1: one (003) spacing along g1.
    assert np.allclose([c.bx_nm, c.by_nm], 0.473 * unit(G1), atol=0.002)


def rocksalt_image(rng, *, keep_other: bool = True, with_disc: bool = True):
    """(003) fringes vanish inside a disc of radius 50 px; the 0.24 nm ones stay."""
    rows, cols = np.indices((N, N))
    disc = (np.hypot(cols - 140.2, rows - 110.7) < 50) & with_disc
    zero = np.zeros((2, N, N))
    img = np.where(disc, 0.0, fringes(zero, [G1])) + np.where(
        disc & ~keep_other, 0.0, fringes(zero, [G2])
    )
    return img + 0.2 * rng.standard_normal(img.shape), disc


def test_rocksalt_disc_is_found():
    img, disc = rocksalt_image(np.random.default_rng(28))
    mask = rocksalt_mask_gpa(img, pixel_size_nm=PS)
    assert (mask & disc).sum() / (mask | disc).sum() > 0.95
    otsu = rocksalt_mask_gpa(img, pixel_size_nm=PS, threshold="otsu")
    assert (otsu & disc).sum() / (otsu | disc).sum() > 0.95


def test_rocksalt_needs_the_other_fringes_and_a_layered_reference():
    vacuum, _ = rocksalt_image(np.random.default_rng(29), keep_other=False)
    assert not rocksalt_mask_gpa(vacuum, pixel_size_nm=PS).any()
    layered, _ = rocksalt_image(np.random.default_rng(30), with_disc=False)
    assert not rocksalt_mask_gpa(layered, pixel_size_nm=PS, g003=G1, g_other=G2).any()
    with pytest.raises(ValueError, match="threshold"):
        rocksalt_mask_gpa(layered, pixel_size_nm=PS, g003=G1, threshold=1.5)
