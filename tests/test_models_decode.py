"""Tests of decoding network outputs into maps and core tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dislotrack.models.decode import CORE_COLUMNS, decode_cores, outputs_to_maps

SIGMA_PX = 2.0  # width of the training target blobs (0.2 nm at 0.1 nm/px)
H_RADIUS_PX = 5.0  # h target radius (0.5 nm)


def render(shape, cores, *, sigma=SIGMA_PX):
    """Heatmap (max of unit-peak Gaussians) and h field (unit h within 5 px of a core).

    ``cores`` rows are ``(x, y, angle_rad, amplitude)``; h = (cos, sin) of the angle.
    """
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    heat = np.zeros(shape)
    h = np.zeros((*shape, 2))
    for x, y, angle, amp in cores:
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        heat = np.maximum(heat, amp * np.exp(-r2 / (2 * sigma**2)))
        h[r2 <= H_RADIUS_PX**2] = (np.cos(angle), np.sin(angle))
    return heat, h


def random_cores(rng, n, shape, *, margin=6.0, min_sep=12.0):
    cores = []
    while len(cores) < n:
        x = rng.uniform(margin, shape[1] - 1 - margin)
        y = rng.uniform(margin, shape[0] - 1 - margin)
        if all(np.hypot(x - c[0], y - c[1]) >= min_sep for c in cores):
            cores.append((x, y, rng.uniform(-np.pi, np.pi), 1.0))
    return np.array(cores)


def match(found: pd.DataFrame, truth: np.ndarray) -> np.ndarray:
    """Index of the nearest found core for each true core."""
    d = np.hypot(found.x.to_numpy()[None] - truth[:, :1], found.y.to_numpy()[None] - truth[:, 1:2])
    return d.argmin(axis=1)


# ------------------------------------------------------------------------ outputs_to_maps


def test_outputs_to_maps_shapes_and_values():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 12)
    logits[1, 1:3, 0, 0] = 0.0  # a zero h vector stays zero
    maps = outputs_to_maps(logits)
    assert maps["heatmap"].shape == (2, 8, 12)
    assert maps["hfield"].shape == (2, 8, 12, 2)
    assert maps["rocksalt"].shape == (2, 8, 12)
    assert all(m.dtype == np.float32 for m in maps.values())
    np.testing.assert_allclose(maps["heatmap"], torch.sigmoid(logits[:, 0]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(maps["rocksalt"], torch.sigmoid(logits[:, 3]).numpy(), rtol=1e-6)
    norms = np.linalg.norm(maps["hfield"], axis=-1)
    assert norms[1, 0, 0] == 0
    np.testing.assert_allclose(np.delete(norms.ravel(), 8 * 12), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        maps["hfield"][0, 3, 5], unit(logits[0, 1:3, 3, 5].numpy()), rtol=1e-5
    )


def unit(v):
    return v / np.linalg.norm(v)


def test_outputs_to_maps_single_image_and_bad_shape():
    maps = outputs_to_maps(torch.zeros(4, 8, 8, requires_grad=True))
    assert maps["heatmap"].shape == (8, 8) and maps["hfield"].shape == (8, 8, 2)
    np.testing.assert_array_equal(maps["heatmap"], 0.5)
    with pytest.raises(ValueError, match=r"got \(1, 3, 8, 8\)"):
        outputs_to_maps(torch.zeros(1, 3, 8, 8))


# --------------------------------------------------------------------------- decode_cores


def test_empty_maps_give_empty_table():
    for heat in (np.zeros((16, 16)), np.full((16, 16), 0.3)):
        out = decode_cores(heat, np.zeros((16, 16, 2)))
        assert list(out.columns) == CORE_COLUMNS
        assert len(out) == 0
        assert all(dtype == np.float64 for dtype in out.dtypes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_subpixel_positions_and_h(seed):
    rng = np.random.default_rng(seed)
    shape = (64, 80)
    truth = random_cores(rng, 8, shape)
    heat, h = render(shape, truth)
    found = decode_cores(heat, h)
    assert len(found) == len(truth)
    idx = match(found, truth)
    assert len(set(idx)) == len(truth)
    f = found.iloc[idx]
    err = np.hypot(f.x.to_numpy() - truth[:, 0], f.y.to_numpy() - truth[:, 1])
    assert err.max() < 0.1
    angle_err = np.angle(np.exp(1j * (np.arctan2(f.hy, f.hx).to_numpy() - truth[:, 2])))
    assert np.degrees(np.abs(angle_err)).max() < 5.0
    np.testing.assert_allclose(np.hypot(f.hx, f.hy), 1.0, rtol=1e-9)
    assert np.all(np.diff(found.score.to_numpy()) <= 0)  # strongest first


def test_position_is_robust_to_mild_noise():
    rng = np.random.default_rng(3)
    shape = (64, 64)
    truth = random_cores(rng, 6, shape)
    heat, h = render(shape, truth)
    heat = np.clip(heat + rng.normal(0, 0.02, shape), 0, 1)
    found = decode_cores(heat, h)
    assert len(found) == len(truth)
    f = found.iloc[match(found, truth)]
    err = np.hypot(f.x.to_numpy() - truth[:, 0], f.y.to_numpy() - truth[:, 1])
    assert np.sqrt(np.mean(err**2)) < 0.1


def test_x_is_column_and_y_is_row():
    heat, h = render((20, 40), [(30.0, 5.0, 0.0, 1.0)])
    found = decode_cores(heat, h)
    assert (found.x.item(), found.y.item()) == pytest.approx((30.0, 5.0), abs=1e-9)
    assert (found.hx.item(), found.hy.item()) == pytest.approx((1.0, 0.0), abs=1e-9)


def test_threshold_is_respected_and_score_is_the_peak_value():
    cores = [(10.0, 10.0, 0.0, 0.9), (30.0, 10.0, 0.0, 0.4)]
    heat, h = render((24, 40), cores)
    high = decode_cores(heat, h, threshold=0.5)
    assert len(high) == 1 and high.x.item() == pytest.approx(10.0, abs=1e-6)
    assert high.score.item() == pytest.approx(0.9)
    low = decode_cores(heat, h, threshold=0.3)
    assert len(low) == 2
    assert low.score.to_list() == pytest.approx([0.9, 0.4])
    assert len(decode_cores(heat, h, threshold=0.9)) == 0  # strictly above the threshold


def test_min_distance_merges_close_cores_keeping_the_stronger():
    cores = [(10.0, 10.0, 0.0, 1.0), (15.0, 10.0, np.pi / 2, 0.8)]  # 5 px apart
    heat, h = render((20, 26), cores, sigma=1.0)
    assert len(decode_cores(heat, h, min_distance=3)) == 2
    one = decode_cores(heat, h, min_distance=6)
    assert len(one) == 1 and one.x.item() == pytest.approx(10.0, abs=0.05)


def test_border_cores_kept_or_excluded():
    heat, h = render((32, 32), [(0.0, 12.3, 0.0, 1.0), (20.0, 20.0, 0.0, 1.0)])
    kept = decode_cores(heat, h).sort_values("x")
    assert len(kept) == 2
    assert (kept.x.iloc[0], kept.y.iloc[0]) == pytest.approx((0.0, 12.3), abs=0.1)
    assert len(decode_cores(heat, h, exclude_border=True)) == 1


@pytest.mark.parametrize("at", [0.3, 0.9, 1.5, 30.7])
def test_positions_near_the_edge_are_as_exact_as_inside(at):
    # Only the window's pixels inside the image are fitted: a mirrored border put the
    # core's mirror image into its own window (1.5 px from the edge decoded at 0.3).
    heat, h = render((32, 32), [(at, 12.3, 0.0, 1.0), (16.0, at, 0.0, 1.0), (31 - at, 31 - at, 0.0, 1.0)])
    found = decode_cores(heat, h, same_sign_distance=0).sort_values(["x", "y"])
    truth = sorted([(at, 12.3), (16.0, at), (31 - at, 31 - at)])
    assert found[["x", "y"]].to_numpy() == pytest.approx(np.array(truth), abs=1e-6)


def test_zero_h_gives_nan_direction():
    heat, _ = render((16, 16), [(8.0, 8.0, 0.0, 1.0)])
    found = decode_cores(heat, np.zeros((16, 16, 2)))
    assert len(found) == 1 and np.isnan(found.hx.item()) and np.isnan(found.hy.item())


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match=r"hfield must have shape \(H, W, 2\) = \(8, 8, 2\)"):
        decode_cores(np.zeros((8, 8)), np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"heatmap must have shape \(H, W\)"):
        decode_cores(np.zeros((1, 8, 8)), np.zeros((1, 8, 8, 2)))


def test_close_cores_of_one_sign_are_one_core_of_opposite_signs_a_dipole():
    yy, xx = np.mgrid[:40, :40]
    heat = np.maximum(np.exp(-((xx - 15) ** 2 + (yy - 20) ** 2) / 4.0),
                      0.9 * np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / 4.0))
    same = np.broadcast_to([0.0, 1.0], (40, 40, 2))
    cores = decode_cores(heat, same, threshold=0.3)
    assert len(cores) == 1 and abs(cores.x[0] - 15) < 0.5  # the stronger peak stays
    opposite = np.where((xx < 18)[..., None], [0.0, 1.0], [0.0, -1.0])
    assert len(decode_cores(heat, opposite, threshold=0.3)) == 2
    assert len(decode_cores(heat, same, threshold=0.3, same_sign_distance=0)) == 2
