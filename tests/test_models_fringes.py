"""The (003) fringe channels: a core is an amplitude dip with a 2 pi phase winding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dislotrack.models.fringes import FringeChannels, fringe_winding

PERIOD = 4.73  # px: LiNiO2 (003) at 0.1 nm/px


def _fringes(size: int = 96, core: tuple[float, float] | None = None, tilt: float = 0.3) -> np.ndarray:
    """cos fringes of period PERIOD with normal at ``tilt`` rad, optionally with one
    terminating half-plane (the phase winds by 2 pi around ``core`` = (x, y))."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    phase = 2 * np.pi * (xx * np.sin(tilt) + yy * np.cos(tilt)) / PERIOD
    if core is not None:
        phase += np.arctan2(yy - core[1], xx - core[0])
    return np.cos(phase)


def _complex(image: np.ndarray) -> np.ndarray:
    out = FringeChannels(PERIOD)(torch.from_numpy(image)[None, None].float())[0].numpy()
    np.testing.assert_array_equal(out[0], image.astype(np.float32))  # the image is passed on
    return out[1] + 1j * out[2]


def test_perfect_fringes_give_a_flat_amplitude_and_the_carrier_phase():
    f = _complex(_fringes())
    inner = f[16:-16, 16:-16]
    np.testing.assert_allclose(np.abs(inner), 1.0, atol=0.05)
    # Phase steps by 2 pi sin(tilt) / PERIOD per column (up to the sign of g).
    step = np.angle(inner[:, 1:] * np.conj(inner[:, :-1]))
    assert abs(abs(np.median(step)) - 2 * np.pi * np.sin(0.3) / PERIOD) < 0.01


@pytest.mark.parametrize("core", [(40.0, 50.0), (55.5, 41.2)])
def test_a_terminating_fringe_is_an_amplitude_dip_and_a_2pi_winding(core):
    f = _complex(_fringes(core=core))
    x, y = core
    amplitude = np.abs(f)
    assert amplitude[round(y), round(x)] < 0.3 * np.median(amplitude)
    # Winding number of the fringe phase along a 6 px loop: the carrier's phase is
    # single-valued, so it adds nothing around a closed loop; the core adds one turn.
    assert abs(abs(_turns(f, x, y)) - 1) < 0.05
    assert abs(_turns(f, 20.0, 75.0)) < 0.05  # no core there


def _turns(f: np.ndarray, x: float, y: float, radius: float = 6.0) -> float:
    ring = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    z = f[np.rint(y + radius * np.sin(ring)).astype(int), np.rint(x + radius * np.cos(ring)).astype(int)]
    return float(np.angle(np.roll(z, -1) * np.conj(z)).sum() / (2 * np.pi))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="Nyquist"):
        FringeChannels(1.5)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        FringeChannels(PERIOD)(torch.zeros(1, 2, 16, 16))


def _basal_core_image(size: int = 96, core: tuple[float, float] = (47.0, 45.0)) -> np.ndarray:
    """(003) fringes with a strong (006) harmonic at 2.365 px, plus weaker 2.45 px
    in-layer fringes at 80 deg that a basal core at ``core`` terminates."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    n003 = np.array([np.sin(0.3), np.cos(0.3)])
    ang = 0.3 + np.radians(80)
    phase003 = 2 * np.pi * (xx * n003[0] + yy * n003[1]) / PERIOD
    phase_in = 2 * np.pi * (xx * np.sin(ang) + yy * np.cos(ang)) / 2.45
    phase_in += np.arctan2(yy - core[1], xx - core[0])
    return np.cos(phase003) + 0.8 * np.cos(2 * phase003) + 0.4 * np.cos(phase_in)


def test_inplane_fringe_skips_the_003_harmonic_and_shows_a_basal_core():
    """Given the (003) direction, the in-layer channel takes the in-layer fringe, not
    the harmonic in its ring."""
    core = (47.0, 45.0)
    x = torch.from_numpy(_basal_core_image(core=core))[None, None].float()
    _, g003 = FringeChannels(PERIOD).fringe(x)
    inplane = FringeChannels(2.45)
    _, g_plain = inplane.fringe(x)
    channels, g = inplane.fringe(x, avoid=g003)
    direction = lambda v: v[0] / v[0].norm()  # noqa: E731
    assert abs(direction(g_plain) @ direction(g003)) > 0.99  # the harmonic, without avoid
    assert abs(direction(g) @ direction(g003)) < np.cos(np.radians(60))
    f = (channels[0, 0] + 1j * channels[0, 1]).numpy()
    assert abs(abs(_turns(f, *core)) - 1) < 0.05
    assert abs(_turns(f, 20.0, 75.0)) < 0.05


def test_fringe_winding_away_from_003_reads_the_in_layer_fringe():
    image = _basal_core_image(core=(47.0, 45.0))
    pts = np.array([[47.0, 45.0], [20.0, 75.0]])
    plain = fringe_winding(image, pts, period_px=2.45, radius_px=6.0, width=0.08)
    away = fringe_winding(image, pts, period_px=2.45, radius_px=6.0, width=0.08, avoid_period_px=PERIOD)
    assert np.abs(plain).tolist() == [0.0, 0.0]  # the (006) harmonic runs through the core
    assert np.abs(away).tolist() == [1.0, 0.0]


def test_fringe_winding_counts_the_half_plane_ends_inside_the_circle():
    img = _fringes(core=(40.0, 50.0))
    pts = np.array([[40.0, 50.0], [41.5, 49.0], [20.0, 75.0], [70.0, 30.0]])
    w = fringe_winding(img, pts, period_px=PERIOD, radius_px=6.0)
    assert np.abs(w).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert w[0] == w[1]  # the same core, the same sign
    assert np.abs(fringe_winding(_fringes(), pts, period_px=PERIOD, radius_px=6.0)).sum() == 0


def test_a_narrower_fringe_mask_keeps_the_core_and_drops_noise_vortices():
    yy, xx = np.mgrid[20:108:8, 20:108:8]
    pts = np.c_[xx.ravel(), yy.ravel()].astype(float)
    crystal = pts[np.hypot(*(pts - 64).T) > 24]  # no core within these circles
    core = np.array([[64.0, 64.0]])
    wide, narrow, found = [], [], []
    for seed in range(5):
        img = _fringes(size=128, core=(64.0, 64.0)) + np.random.default_rng(seed).normal(0, 4, (128, 128))
        wide.append(fringe_winding(img, crystal, period_px=PERIOD, radius_px=10.0) != 0)
        narrow.append(fringe_winding(img, crystal, period_px=PERIOD, radius_px=10.0, width=0.1) != 0)
        found.append(abs(fringe_winding(img, core, period_px=PERIOD, radius_px=10.0, width=0.1)[0]))
    assert np.mean(wide) > 0.1  # noise winds the phase of the network's (wide) mask
    assert np.mean(narrow) == 0
    assert found == [1.0] * 5


def test_shows_half_plane_end_reads_the_winding_at_the_given_scale():
    from dislotrack.models.visibility import shows_half_plane_end

    # 0.05 nm/px, fringes of 0.25 nm (5 px) with one extra half-plane ending at (32, 32).
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    image = 3.0 + np.cos(2 * np.pi * yy / 5.0 + np.arctan2(yy - 32, xx - 32))
    shown = shows_half_plane_end(image, [[32.0, 32.0], [12.0, 50.0]], pixel_size_nm=0.05,
                                 d_spacing_nm=0.25)
    assert shown.tolist() == [True, False]
    assert shows_half_plane_end(image, np.zeros((0, 2)), pixel_size_nm=0.05, d_spacing_nm=0.25).size == 0
