"""Burned-in annotations and clipped areas: found, and no cores reported on them."""

from __future__ import annotations

import imageio.v3
import numpy as np
import pandas as pd
import pytest
from test_readers import real

from dislotrack.data_gen.annotations import write_imagej_tiff
from dislotrack.data_gen.sample import GeneratorConfig, make_sample
from dislotrack.infer.overlays import MARGIN_NM, overlay_mask
from dislotrack.infer.pipeline import analyze
from dislotrack.models.metrics import match_cores


@pytest.mark.parametrize("mode", ["hrtem", "stem"])
@pytest.mark.parametrize("dose", [100.0, 5000.0, 1e7])
def test_a_lattice_has_no_overlay(mode, dose):
    # Noise-free HRTEM fringes are long bright lines, and STEM has dark gaps: neither is
    # a drawn stroke.
    for pixel_size in (0.05, 0.1):
        cfg = GeneratorConfig(size=128, mode=mode, dose=(dose, dose), pixel_size=pixel_size)
        s = make_sample(np.random.default_rng([1, int(dose), int(100 * pixel_size)]), cfg)
        assert not overlay_mask(s.image, pixel_size_nm=pixel_size).any()


@pytest.mark.parametrize("mode", ["hrtem", "stem"])
def test_hot_pixels_do_not_stretch_the_extremes_over_the_lattice(mode):
    # X-ray hits, hot or saturated camera pixels (here 50x the brightest level, and 60
    # scattered ones): not annotations, and the lattice's dark areas stay unmasked.
    s = make_sample(np.random.default_rng(2), GeneratorConfig(size=128, mode=mode, dose=(1000, 1000)))
    img = s.image.astype(np.float32)
    hot = img.copy()
    hot[10, 10] = 50 * img.max()
    assert not overlay_mask(hot, pixel_size_nm=0.1).any()
    rng = np.random.default_rng(3)
    hot[rng.integers(0, 128, 60), rng.integers(0, 128, 60)] = 65535
    assert not overlay_mask(hot, pixel_size_nm=0.1).any()
    many = img.copy()  # 600 isolated outliers, bright and dark, on a 128 x 128 frame
    rows, cols = np.nonzero((np.add.outer(np.arange(128), np.arange(128)) % 5 == 0)
                            & (np.arange(128)[:, None] % 3 == 0))
    pick = rng.choice(len(rows), 600, replace=False)
    many[rows[pick[:300]], cols[pick[:300]]] = 65535
    many[rows[pick[300:]], cols[pick[300:]]] = -65535
    assert not overlay_mask(many, pixel_size_nm=0.1).any()
    # A scale bar (at the image's brightest level) beside them is still found, and only it.
    hot[110:118, 20:60] = img.max()
    mask = overlay_mask(hot, pixel_size_nm=0.1)
    assert mask[110:118, 20:60].all() and mask.sum() == 320


def test_bars_text_bands_and_borders_are_found_clipped_columns_are_not():
    s = make_sample(np.random.default_rng(0), GeneratorConfig(size=128, mode="stem", dose=(1000, 1000)))
    img = s.image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    drawn = img.copy()
    drawn[110:118, 20:60] = hi                        # a scale bar at the brightest level
    drawn[90:104, 80:84] = lo + 0.93 * (hi - lo)      # an anti-aliased text stroke (56 px)...
    drawn[90:94, 80:100] = lo + 0.93 * (hi - lo)      # ... joined to its bar: 120 px
    drawn[:, 120:] = lo                               # a zero-filled border
    drawn[10:13, 10:13] = hi                          # a clipped atomic column: 9 px
    mask = overlay_mask(drawn, pixel_size_nm=0.1)
    assert mask[110:118, 20:60].all() and mask[:, 120:].all()
    assert not mask[10:13, 10:13].any()
    assert not mask[90:104, 80:84].any()  # 136 px < MIN_AREA_PX: a stroke this small is kept
    drawn[90:110, 80:90] = lo + 0.93 * (hi - lo)      # a glyph of 200+ px
    assert overlay_mask(drawn, pixel_size_nm=0.1)[90:110, 80:90].all()
    assert not overlay_mask(np.full((32, 32), 7.0), pixel_size_nm=0.1).any()  # flat: nothing


def test_no_core_or_rock_salt_is_reported_on_a_burned_in_scale_bar(tmp_path):
    cfg = GeneratorConfig(size=160, mode="stem", dose=(3000, 3000), perfect_fraction=0.0, density=3.0,
                          realism=0.0)
    s = make_sample(np.random.default_rng(2), cfg)
    img = s.image.astype(np.float32)
    bar = (slice(120, 140), slice(20, 140))
    drawn = img.copy()
    drawn[bar] = img.max()
    results = {}
    for name, frame in (("plain", img), ("bar", drawn)):
        path = tmp_path / f"{name}.tif"
        write_imagej_tiff(path, frame[None], pixel_size_nm=0.1)
        masks = {}
        res = analyze(path, progress=False, mask_sink=masks.__setitem__)
        results[name] = res, masks[0]
    plain, (res, rs) = results["plain"][0], results["bar"]
    assert len(plain.detections) >= 3
    assert not (plain.warnings and any("burned-in" in w for w in plain.warnings))
    assert any("burned-in" in w for w in res.warnings)
    margin = MARGIN_NM / 0.1
    d = res.detections
    near = (d.y > 120 - margin) & (d.y < 140 + margin - 1) & (d.x > 20 - margin) & (d.x < 140 + margin - 1)
    assert not near.any()
    assert not rs[bar].any()
    # trajectories.png outlines the mask rocksalt_mask.tif holds for frame 0 (relinked too).
    np.testing.assert_array_equal(res.first_mask, rs.astype(bool))
    np.testing.assert_array_equal(res.relink(min_length=1).first_mask, rs.astype(bool))
    # Away from the bar (beyond 2 nm) the same cores are found.
    p = plain.detections
    far = p[(p.y < 120 - 20) | (p.y > 140 + 20)]
    assert len(far) >= 1
    pi, _ = match_cores(far[["x", "y"]].to_numpy(), d[["x", "y"]].to_numpy(), radius=1.0)
    assert len(pi) == len(far)


def test_no_core_is_reported_on_real_burned_in_text():
    # A real image with a burned-in "2 nm" and its bar: the network had found a core
    # inside the "2" (SOURCES.md: "mask the scale bar").
    path = real("atomsegnet/1.png")
    res = analyze(path, pixel_size_nm=0.0143, progress=False)
    # The strokes, read independently of `overlay_mask`: bright pixels in the caption's box.
    img = np.asarray(imageio.v3.imread(path), dtype=float)
    box = np.zeros(img.shape, bool)
    box[925:1043, 808:1011] = True  # "2 nm" and its bar
    ys, xs = np.nonzero(box & (img >= 230))
    assert len(ys) > 2000
    d = res.detections
    dist = np.hypot(d.x.to_numpy()[:, None] - xs, d.y.to_numpy()[:, None] - ys).min(axis=1)
    assert (dist > MARGIN_NM / 0.0143).all()
    assert any("burned-in" in w for w in res.warnings)


def test_no_core_is_reported_within_the_edge_margin_of_the_frame_edge(monkeypatch):
    # There the (003) fringes run on too little of one side: no half-plane end can show.
    from dislotrack.infer import pipeline
    from dislotrack.infer.cleanup import EDGE_MARGIN_FRINGES
    from dislotrack.infer.detectors import CORE_COLUMNS

    margin_px = EDGE_MARGIN_FRINGES * 0.473 / 0.1  # 3/4 of the (003) spacing, 3.5 px at 0.1 nm/px
    # (x, y) of cores the detector reports: just inside the margin on each side, just outside it.
    inside = [(-0.5 + margin_px - 0.1, 30.0), (63.5 - margin_px + 0.1, 30.0),
              (30.0, -0.5 + margin_px - 0.1), (30.0, 63.5 - margin_px + 0.1)]
    outside = [(-0.5 + margin_px + 0.1, 20.0), (63.5 - margin_px - 0.1, 40.0), (30.0, 30.0)]

    class Fixed:  # the detector: the same cores in every frame
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, raw, canonical):
            xy = np.array(inside + outside)
            table = pd.DataFrame({c: 0.0 for c in CORE_COLUMNS}, index=range(len(xy)))
            table = table.assign(x=xy[:, 0], y=xy[:, 1], score=0.9, hy=-1.0)
            return [(table, np.zeros(f.shape, bool)) for f in raw]

    monkeypatch.setattr(pipeline, "NetworkDetector", Fixed)
    frames = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    res = analyze(frames, pixel_size_nm=0.1, frame_interval_s=1.0, progress=False)
    kept = sorted(map(tuple, res.detections.loc[res.detections.frame == 0, ["x", "y"]].to_numpy()))
    np.testing.assert_allclose(kept, sorted(outside))


def test_no_core_is_reported_on_a_dark_edge_of_a_real_image(monkeypatch):
    # A real perovskite interface (no dislocation) whose last columns are dark: the network
    # takes that edge for half-plane ends, 0.06-0.3 nm from it.
    from dislotrack.data_gen.conventions import edge_distance_px
    from dislotrack.infer import cleanup

    def near_edge(res):
        d = res.detections
        return int((edge_distance_px(d.x, d.y, res.shape[1:]) * 0.0143 < 0.5 * 0.473).sum())

    path = real("atomsegnet/1.png")
    assert near_edge(analyze(path, pixel_size_nm=0.0143, progress=False)) == 0
    monkeypatch.setattr(cleanup, "EDGE_MARGIN_FRINGES", 0.0)
    assert near_edge(analyze(path, pixel_size_nm=0.0143, progress=False)) >= 2


@pytest.mark.parametrize("mode", ["hrtem", "stem"])
def test_a_dim_or_bright_lattice_is_not_drawn_beside_an_extreme_annotation(mode):
    # 8-bit exports: a lattice within 20-60 of 255 under a white scale bar, or within
    # 235-255 beside a zero-filled border. Judged against the range the annotation
    # stretches, the lattice's dark (bright) half looked drawn: 11 % of a dim frame.
    s = make_sample(np.random.default_rng(4), GeneratorConfig(size=128, mode=mode, dose=(1000, 1000)))
    unit = (s.image - s.image.min()) / np.ptp(s.image)
    dim = np.round(20 + 40 * unit).astype(np.float32)
    dim[110:116, 10:70] = 255
    mask = overlay_mask(dim, pixel_size_nm=0.1)
    assert mask[110:116, 10:70].all() and mask.sum() == 360
    bright = np.round(235 + 20 * unit).astype(np.float32)
    bright[:, 100:] = 0
    mask = overlay_mask(bright, pixel_size_nm=0.1)
    assert mask[:, 100:].all() and mask.sum() == 28 * 128
    bright[110:116, 10:70] = 0  # and a black bar on it: both dark areas, nothing else
    assert overlay_mask(bright, pixel_size_nm=0.1).sum() == 28 * 128 + 360
