"""Per-frame cleanup of the detector's findings (`dislotrack.infer.cleanup`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dislotrack.infer.cleanup import EDGE_MARGIN_FRINGES, clean_frame


def _cores(*xy):
    x, y = np.array(xy, float).T
    return pd.DataFrame({"x": x, "y": y, "score": 0.9, "hx": 0.0, "hy": -1.0})


def _lattice(shape=(64, 64), period_px=4.73):
    y = np.arange(shape[0])[:, None]
    return np.broadcast_to(np.cos(2 * np.pi * y / period_px), shape).astype(np.float32).copy()


def test_cores_near_the_edge_are_dropped_and_rock_salt_flags_the_rest():
    frame = _lattice()
    margin = EDGE_MARGIN_FRINGES * 0.473 / 0.1  # 2.4 px
    rs = np.zeros(frame.shape, bool)
    rs[:, 40:] = True
    cores = _cores((margin - 0.6, 30), (margin + 0.6, 30), (20, 30), (50, 30))
    f = clean_frame(frame, cores, rs, pixel_size_nm=0.1, d_spacing_nm=0.473)
    assert f.cores["x"].tolist() == [margin + 0.6, 20.0, 50.0]
    assert f.cores["in_rocksalt"].tolist() == [False, False, True]
    assert f.rocksalt_fraction == rs.mean() and not f.blank and f.overlaid == 0.0


def test_a_blank_frame_or_a_blind_one_keeps_nothing_and_judges_no_rock_salt():
    rs = np.ones((64, 64), bool)
    blank = clean_frame(np.full((64, 64), 3.0), _cores((30, 30)), rs, pixel_size_nm=0.1,
                        d_spacing_nm=0.473)
    assert blank.blank and blank.cores.empty and not blank.rocksalt.any()
    assert np.isnan(blank.rocksalt_fraction)
    blind = clean_frame(_lattice(), _cores((30, 30)), rs, pixel_size_nm=0.1, d_spacing_nm=0.473,
                        blind=True)
    assert not blind.blank and blind.cores.empty and np.isnan(blind.rocksalt_fraction)
    assert not blind.rocksalt.any()  # the mask TIFF shows none either
    assert list(blank.cores.columns) == list(blind.cores.columns) == [*_cores((1, 1)).columns,
                                                                     "in_rocksalt", "at_specimen_edge"]


def test_a_blanked_beam_that_keeps_its_scale_bar_is_blank_not_an_annotation():
    # In-situ movies blank the beam between acquisitions; the burned-in scale bar stays.
    # That frame shows nothing (its rock salt NaN, said once as a blank frame), not a frame
    # "covered" by annotation.
    frame = np.full((128, 128), 3.0, np.float32)
    frame[118:122, 8:60] = 255
    f = clean_frame(frame, _cores((30, 30)), np.ones(frame.shape, bool), pixel_size_nm=0.1,
                    d_spacing_nm=0.473)
    assert f.blank and f.cores.empty and f.overlaid == 0.0 and np.isnan(f.rocksalt_fraction)
    lattice = 100 + 60 * _lattice((128, 128)) + np.random.default_rng(0).normal(0, 10, (128, 128))
    lattice[118:122, 8:60] = 255  # the same bar over the specimen: an annotation
    f = clean_frame(lattice.astype(np.float32), _cores((30, 30)), np.zeros(frame.shape, bool),
                    pixel_size_nm=0.1, d_spacing_nm=0.473)
    assert not f.blank and len(f.cores) == 1 and 0 < f.overlaid < 0.1


def test_a_zero_filled_border_hides_cores_and_rock_salt_beside_it():
    frame = _lattice((128, 128)) + 2.0
    frame[:, 96:] = 0.0  # a clipped area, as after registration: the darkest level
    rs = np.ones(frame.shape, bool)
    f = clean_frame(frame, _cores((30, 60), (94, 60)), rs, pixel_size_nm=0.1, d_spacing_nm=0.473)
    assert f.cores["x"].tolist() == [30.0]
    assert f.overlaid > 0.2 and not f.rocksalt[:, 100:].any()
    assert f.rocksalt_fraction == 1.0  # judged where the specimen shows
    # Nothing but drawn or clipped areas: no rock salt was judged (NaN), not 0 %.
    drawn = np.zeros((128, 128), np.float32)
    drawn[:, 64:] = 255.0
    f = clean_frame(drawn, _cores((30, 60)), rs, pixel_size_nm=0.1, d_spacing_nm=0.473)
    assert f.overlaid == 1.0 and f.cores.empty and np.isnan(f.rocksalt_fraction)


def test_a_core_0_3_nm_from_the_frame_edge_is_not_reported():
    # Real perovskite and cuprate images gave false cores 0.2-0.3 nm inside the frame edge
    # (they moved with the edge when the image was flipped): within three quarters of a
    # (003) spacing the fringes run on too little of one side to show a half-plane end.
    frame = _lattice()
    cores = _cores((3.0, 30), (4.0, 30))  # 0.30 and 0.40 nm from the left edge at 0.1 nm/px
    f = clean_frame(frame, cores, np.zeros(frame.shape, bool), pixel_size_nm=0.1, d_spacing_nm=0.473)
    assert f.cores["x"].tolist() == [4.0]


def test_no_rock_salt_is_reported_beside_a_burned_in_scale_bar():
    # The network reads the bar's sharp edges as a region without the layered order: a
    # real PZT image had all its "rock salt" within 2 nm of its scale bar and text.
    from dislotrack.infer.cleanup import ANNOTATION_ROCKSALT_MARGIN_NM

    frame = 100 + 60 * _lattice((128, 128)) + np.random.default_rng(0).normal(0, 10, (128, 128))
    frame[110:116, 8:60] = 255  # the bar
    rs = np.zeros(frame.shape, bool)
    rs[96:110, 8:60] = True  # the network's "rock salt" along the bar's upper side (1.4 nm)
    rs[20:40, 70:100] = True  # and a domain far from it
    f = clean_frame(frame.astype(np.float32), _cores((30, 30)), rs, pixel_size_nm=0.1, d_spacing_nm=0.473)
    assert ANNOTATION_ROCKSALT_MARGIN_NM == 2.0
    assert not f.rocksalt[96:110, 8:60].any() and f.rocksalt[20:40, 70:100].all()


def test_where_rock_salt_is_not_judged_the_specimen_edge_is_not_judged_either():
    # A lattice-free strip the network calls rock salt lies just above a burned-in bar:
    # dropped as rock salt (within 2 nm of the bar), it is no vacuum edge either, so a
    # core beside it is not flagged at_specimen_edge (a track ending there is not "left").
    rng = np.random.default_rng(0)
    lat = np.broadcast_to(np.cos(2 * np.pi * np.arange(200)[:, None] / 4.73), (200, 200)).copy()
    lat[125:, :] = 0.0  # no (003) fringes below row 125
    frame = 100 + 60 * lat + rng.normal(0, 10, (200, 200))
    frame[142:147, 10:190] = 255  # the bar
    rs = np.zeros(frame.shape, bool)
    rs[125:141, :] = True  # the network's rock salt: the strip
    cores = pd.DataFrame({"x": [100.0], "y": [124.5], "score": 0.9, "hx": 0.0, "hy": -1.0})
    f = clean_frame(frame.astype(np.float32), cores, rs, pixel_size_nm=0.1, d_spacing_nm=0.473)
    assert len(f.cores) == 1 and not f.rocksalt[125:141].any()
    assert not f.cores["at_specimen_edge"].iloc[0]


def test_the_band_around_annotations_is_the_full_distance_transform_s():
    # Cropped to each annotation's box (a full-frame distance transform cost 0.6 s per
    # 2048² frame with a scale bar in every frame), the band must stay exactly the same.
    from scipy import ndimage

    from dislotrack.infer.cleanup import within_distance

    rng = np.random.default_rng(3)
    mask = np.zeros((300, 260), bool)
    mask[270:285, 150:250] = True  # a scale bar
    mask[5:20, 3:60] = True  # text in the opposite corner
    mask[100, 259] = True  # a pixel on the border
    for radius in (0.0, 1.0, 7.5, 20.0):
        full = ndimage.distance_transform_edt(~mask) <= radius
        np.testing.assert_array_equal(within_distance(mask, radius), full)
    blobs = ndimage.binary_dilation(rng.random((128, 128)) > 0.998, iterations=2)
    np.testing.assert_array_equal(within_distance(blobs, 4.2), ndimage.distance_transform_edt(~blobs) <= 4.2)
    assert not within_distance(np.zeros((8, 8), bool), 3.0).any()
