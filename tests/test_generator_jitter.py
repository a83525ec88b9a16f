"""STEM scan jitter moves the labels with the image (review stop 35, F5): the rock-salt
mask is the label at the jittered pixel centres, and a core moves with the mean shift of
the scan lines its signature spans."""

from __future__ import annotations

import numpy as np
import pytest

from dislotrack.data_gen.imaging import Detector, Probe
from dislotrack.data_gen.sample import (
    JITTER_CORE_HALF_SPAN_NM,
    FrameGeometry,
    GeneratorConfig,
    _rs_raster,
    core_row_shift,
    draw_scene,
    render_frame,
)
from dislotrack.data_gen.specimen import rocksalt_mask

#: Small STEM scenes crowded with cores, each inside an RS domain.
CFG = GeneratorConfig(size=96, mode="stem", density=3.0, rocksalt_probability=1.0,
                      perfect_fraction=0.0)
JITTER = 0.8  # px: larger than drawn (<= 0.3), so that a mask left unjittered shows


def _render(seed: int, jitter_px: float):
    """One frame under a given jitter, and the row shifts `render_frame` drew (its first
    draw from ``rng`` for STEM with a fixed illumination)."""
    _, grid, spec, disl = draw_scene(np.random.default_rng(seed), CFG)
    s = render_frame(spec, disl, grid=grid, mode="stem", imaging=Probe(jitter_px=jitter_px),
                     detector=Detector(), rng=np.random.default_rng(99), illumination=1.0)[0]
    shifts = np.random.default_rng(99).normal(0, jitter_px, grid.size)
    return s, shifts, grid, spec, disl


@pytest.mark.parametrize("seed", [3, 10])
def test_rs_mask_is_the_label_at_the_jittered_pixel_centres(seed):
    s, shifts, grid, spec, disl = _render(seed, JITTER)
    n = grid.size
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    src = xx - shifts[:, None]  # pixel (r, c) shows the unjittered frame's column c - shift
    truth = rocksalt_mask(spec, np.stack([src.ravel(), yy.ravel()], axis=1) * grid.pixel_size,
                          1.0, disl).reshape(n, n)
    assert truth.sum() > 300
    assert (s.rs_mask.astype(bool) != truth).sum() <= 1e-3 * n * n
    # Without the jitter the mask misses a band along every domain's sides.
    plain = _rs_raster(spec, disl, FrameGeometry(centre_nm=grid.fov_nm / 2), grid, 1.0).astype(bool)
    assert (plain != truth).sum() > 20 * max((s.rs_mask.astype(bool) != truth).sum(), 1)


def test_core_moves_with_the_mean_shift_of_the_rows_its_signature_spans():
    s0, _, grid, _, _ = _render(4, 0.0)
    s, shifts, _, _, _ = _render(4, JITTER)
    assert len(s0.cores) >= 3
    moved = s.cores["x"].to_numpy() - s0.cores["x"].to_numpy()
    y = s0.cores["y"].to_numpy()
    half = JITTER_CORE_HALF_SPAN_NM / grid.pixel_size
    rows = np.arange(grid.size)
    expected = [shifts[np.abs(rows - yi) <= half].mean() for yi in y]
    np.testing.assert_allclose(moved, expected, atol=1e-9)
    # Not one row's shift: that is 0.8 px off here, the mean of 9 rows ~0.27 px.
    one_row = shifts[np.clip(np.rint(y).astype(int), 0, grid.size - 1)]
    assert np.abs(moved - one_row).max() > 0.3
    np.testing.assert_array_equal(s.cores["y"], s0.cores["y"])


def test_core_row_shift_at_the_image_edge():
    shifts = np.arange(10.0)
    # Windows cut at the image's edges; a core beyond it takes the nearest row.
    np.testing.assert_allclose(core_row_shift(shifts, np.array([0.0, 9.2, -3.0, 12.0]), 2.0),
                               [1.0, 8.5, 0.0, 9.0])
