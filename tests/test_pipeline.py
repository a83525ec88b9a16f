"""infer end to end: a short generated movie through analyze and the writers."""

import argparse
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import imageio.v3
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from dislotrack.data_gen.annotations import write_imagej_tiff
from dislotrack.data_gen.movie import make_movie
from dislotrack.data_gen.sample import GeneratorConfig, make_sample
from dislotrack.infer import run
from dislotrack.infer.cli import main
from dislotrack.infer.columns import TABLES, TRACK_COLUMNS
from dislotrack.infer.interface import command_line
from dislotrack.infer.outputs import MaskWriter
from dislotrack.infer.pipeline import AnalysisWarning, analyze
from dislotrack.infer.preprocess import canonical_to_input, input_to_canonical, to_canonical
from dislotrack.models.metrics import match_cores

#: ../shared/realdata next to the repository (CI provides it; tests skip without it).
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"

CONTRACT = {
    "detections": ["frame", "x", "y", "x_nm", "y_nm", "score", "hx", "hy", "bx_nm", "by_nm"],
    "tracks": ["frame", "x", "y", "x_nm", "y_nm", "score", "hx", "hy", "bx_nm", "by_nm",
               "particle", "t_s", "glide_nm", "climb_nm"],
    "track_summary": ["particle", "first_frame", "last_frame", "n_frames", "glide_velocity_nm_s",
                      "climb_velocity_nm_s", "glide_velocity_se_nm_s", "climb_velocity_se_nm_s",
                      "kind", "partner", "birth", "death"],
    "events": ["frame", "t_s", "kind", "x", "y", "particles", "x_nm", "y_nm"],
    "counts": ["frame", "t_s", "n_dislocations", "n_dipoles", "rocksalt_fraction"],
    "drift": ["frame", "dx", "dy"],
    "dipoles": ["pair", "frame", "t_s", "particle_a", "particle_b", "separation_nm",
                "glide_separation_nm", "climb_separation_nm"],
}



@pytest.mark.parametrize("s", [0.5, 0.8, 1.25])
def test_canonical_mapping_keeps_features_in_place(s):
    yy, xx = np.mgrid[0:80, 0:80]
    x0, y0 = 33.3, 41.7
    img = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 4.0**2))
    can = to_canonical(img, pixel_size_nm=0.1 * s, canonical_nm=0.1)
    cy, cx = np.unravel_index(np.argmax(can), can.shape)
    r = int(np.ceil(4 * 4.0 * s))  # +-4 sigma: the centroid is unbiased
    w = can[cy - r:cy + r + 1, cx - r:cx + r + 1]
    yy2, xx2 = np.mgrid[cy - r:cy + r + 1, cx - r:cx + r + 1]
    c = np.array([(w * xx2).sum() / w.sum(), (w * yy2).sum() / w.sum()])
    back = canonical_to_input(c, s)
    assert np.allclose(back, [x0, y0], atol=0.05)
    assert np.allclose(input_to_canonical(back, s), c)


def test_infer_writes_every_output_with_the_contract_columns(tmp_path):
    m = make_movie(np.random.default_rng(0), GeneratorConfig(size=64, mode="stem"), n_frames=4,
                   frame_interval=0.5)
    movie = tmp_path / "clip.tif"
    write_imagej_tiff(movie, m.frames, pixel_size_nm=0.1, frame_interval_s=0.5)
    out = tmp_path / "out"
    # The bundled model finds cores here (test_min_track_score_drops_weak_tracks), so the
    # tables are checked with rows in them, not as bare headers.
    assert main(["infer", str(movie), "--out", str(out), "--model", "default",
                 "--min-length", "2"]) == 0
    d = out / "clip"
    for name, cols in CONTRACT.items():
        table = pd.read_csv(d / f"{name}.csv")
        assert list(table.columns) == cols, name
        if name in ("detections", "tracks", "track_summary", "counts", "drift"):
            assert len(table) > 0, name
    assert set(TABLES) == set(CONTRACT)
    for name in ("detections", "tracks"):  # the values, not only the columns (DESIGN.md)
        t = pd.read_csv(d / f"{name}.csv")
        np.testing.assert_allclose(t[["x_nm", "y_nm"]], 0.1 * t[["x", "y"]], atol=1e-6)
        np.testing.assert_allclose(np.hypot(t.hx, t.hy), 1.0, atol=1e-6)
        b, h = t[["bx_nm", "by_nm"]].to_numpy(), t[["hx", "hy"]].to_numpy()
        b_hat = np.c_[h[:, 1], -h[:, 0]]  # h turned 90 deg counter-clockwise as displayed
        np.testing.assert_allclose((b * h).sum(axis=1), 0.0, atol=1e-3)  # b perpendicular to h
        np.testing.assert_allclose((b * b_hat).sum(axis=1), 0.473, atol=0.02)  # misfit: c/3 along b-hat
    tracks = pd.read_csv(d / "tracks.csv")
    np.testing.assert_allclose(tracks.t_s, 0.5 * tracks.frame)
    counts = pd.read_csv(d / "counts.csv")
    assert list(counts.frame) == [0, 1, 2, 3] and np.allclose(counts.t_s, [0, 0.5, 1.0, 1.5])
    summary = json.loads((d / "summary.json").read_text())
    assert summary["schema_version"] == 2  # DESIGN.md's 1 with the changes README › Changelog 0.1.14 lists
    track_summary = pd.read_csv(d / "track_summary.csv")
    for end, column in (("births", "birth"), ("deaths", "death")):
        assert summary["totals"][end] == track_summary[column].value_counts().to_dict()
    assert summary["calibration"]["pixel_size_source"] == "file"
    assert summary["calibration"]["frame_interval_s"] == 0.5
    assert len(summary["input"]["sha256"]) == 64 and len(summary["model"]["sha256"]) == 64
    with tifffile.TiffFile(d / "rocksalt_mask.tif") as t:
        assert t.series[0].shape == (4, 64, 64) and t.series[0].dtype == np.uint8
        assert t.imagej_metadata["unit"] == "nm"
        assert set(np.unique(t.asarray())) <= {0, 1}
        x_res = t.pages[0].tags["XResolution"].value  # ImageJ: pixels per unit
        assert x_res[1] / x_res[0] == pytest.approx(0.1)
        assert t.is_imagej and all(p.compression == tifffile.COMPRESSION.ADOBE_DEFLATE for p in t.pages)
    assert not list(d.glob(".*"))  # the uncompressed stack the masks went to first is gone
    for fig in ("trajectories.png", "displacement.png", "counts.png", "events.png", "dipoles.png",
                "overlay.mp4"):
        assert (d / "figures" / fig).stat().st_size > 0


def test_unusable_device_or_output_folder_is_a_one_line_error(tiny_model, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1,
                      frame_interval_s=1.0)
    args = ["infer", str(movie), "--model", str(tiny_model), "--no-movie"]
    assert main([*args, "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main([*args, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "file"), "--n", "1", "--size", "32"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    below_a_file = tmp_path / "file" / "sub"  # cannot be made: the option is named
    assert main([*args, "--out", str(below_a_file)]) == 2
    assert f"--out {below_a_file}: cannot create the folder" in capsys.readouterr().err
    from dislotrack.infer.cli import _check_out_folder

    _check_out_folder(str(tmp_path / "new" / ".." / "probe"))  # a path through "..": probed,
    assert not (tmp_path / "new").exists() and not (tmp_path / "probe").exists()  # nothing left
    assert main(["generate", "--out", str(tmp_path / "g"), "--n", "1", "--movie", "0"]) == 2
    assert "--movie needs at least 2 frames" in capsys.readouterr().err and not (tmp_path / "g").exists()
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "m.tif"  # the same stem: would overwrite m's outputs
    twin.write_bytes(movie.read_bytes())
    assert main(["infer", str(movie), str(twin), "--model", str(tiny_model),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "separate runs" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_missing_calibration_is_reported_not_guessed(tiny_model, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(2, 48, 48)).astype(np.float32)
    movie = tmp_path / "noise.tif"
    tifffile.imwrite(movie, frames)
    # A user error: one line on stderr, exit status 2, no traceback.
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dislotrack infer: error:") and "--pixel-size" in err
    # With several inputs the others still run; the status says one failed.
    ok = tmp_path / "ok.tif"
    tifffile.imwrite(ok, frames, imagej=True, resolution=(10.0, 10.0), metadata={"unit": "nm"})
    assert main(["infer", str(movie), str(ok), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--no-movie"]) == 1
    err = capsys.readouterr().err
    assert err.count("noise.tif") == 1 and "no usable pixel size" in err  # the input named once
    assert err.rstrip().endswith("1 of 2 inputs failed (see above)")
    assert (tmp_path / "o" / "ok" / "summary.json").exists()
    assert not (tmp_path / "o" / "noise").exists()  # no empty results folder for a failed input
    monkeypatch.setenv("DISLOTRACK_DEBUG", "1")
    with pytest.raises(ValueError, match="--pixel-size"):
        main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model)])
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--pixel-size", "0.1", "--no-movie", "--tta"]) == 0
    summary = json.loads((tmp_path / "o" / "noise" / "summary.json").read_text())
    assert summary["calibration"]["pixel_size_source"] == "user"
    assert summary["calibration"]["frame_interval_s"] is None
    assert summary["velocities"]["unit"] == "nm/frame"
    assert summary["options"]["tta"] == 8  # --tta alone: all flips and transposes
    assert any("frame interval" in w for w in summary["warnings"])
    # The unit is in the column names (DESIGN.md), so per-frame velocities say so.
    header = pd.read_csv(tmp_path / "o" / "noise" / "track_summary.csv", nrows=0).columns
    assert "glide_velocity_nm_per_frame" in header and "climb_velocity_se_nm_per_frame" in header
    assert not any(c.endswith("_nm_s") for c in header)


def test_per_frame_velocities_convert_back_with_a_frame_interval():
    from dislotrack.infer.columns import velocities_in_nm_s, velocity_columns_as_written

    table = pd.DataFrame({"particle": [0], "glide_velocity_nm_s": [0.6], "glide_velocity_se_nm_s": [0.1]})
    written = velocity_columns_as_written(table, None)
    assert list(written.columns) == ["particle", "glide_velocity_nm_per_frame",
                                     "glide_velocity_se_nm_per_frame"]
    assert velocity_columns_as_written(table, 2.0) is table
    back = velocities_in_nm_s(written, 2.0)  # 0.6 nm/frame at 2 s/frame
    assert back.glide_velocity_nm_s.iloc[0] == 0.3 and back.glide_velocity_se_nm_s.iloc[0] == 0.05
    assert velocities_in_nm_s(written, None) is None and velocities_in_nm_s(table, None) is table


def test_a_failed_analysis_leaves_no_half_written_folder(tiny_model, tmp_path, monkeypatch):
    movie = tmp_path / "m.tif"
    frames = np.random.default_rng(0).normal(size=(2, 48, 48)).astype(np.float32)
    tifffile.imwrite(movie, frames, imagej=True, resolution=(10.0, 10.0), metadata={"unit": "nm"})

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(run, "analyze", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        run.infer_one(movie, tmp_path / "o", model=tiny_model)
    assert not (tmp_path / "o" / "m").exists()
    # A folder that was there before (an earlier run's results) is left alone.
    (tmp_path / "o" / "m").mkdir(parents=True)
    (tmp_path / "o" / "m" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        run.infer_one(movie, tmp_path / "o", model=tiny_model)
    assert (tmp_path / "o" / "m" / "notes.txt").read_text() == "mine"


def test_gpa_detector_and_strain_maps_run_end_to_end(tiny_model, tmp_path):
    cfg = GeneratorConfig(size=160, mode="stem", dose=(3000, 3000), perfect_fraction=0.0, density=3.0,
                          realism=0.0)
    m = make_movie(np.random.default_rng(2), cfg, n_frames=2, frame_interval=1.0)
    movie = tmp_path / "g.tif"
    write_imagej_tiff(movie, m.frames, pixel_size_nm=0.1, frame_interval_s=1.0)
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"),  # --model: refused for gpa
                 "--detector", "gpa", "--strain", "--no-movie"]) == 0
    d = tmp_path / "o" / "g"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["model"]["id"] == "gpa-baseline"
    det = pd.read_csv(d / "detections.csv")
    f0, t0 = det[det.frame == 0], m.cores[m.cores.frame == 0]
    pi, _ = match_cores(f0[["x", "y"]].to_numpy(), t0[["x", "y"]].to_numpy(), radius=5.0)
    assert len(f0) >= 3 and len(pi) >= 0.5 * len(f0)  # the baseline finds real cores
    for name in ("strain_exx", "strain_eyy", "strain_exy", "rotation_rad"):
        with tifffile.TiffFile(d / f"{name}.tif") as t:
            arr = t.asarray()
            assert arr.shape == (2, 160, 160) and arr.dtype == np.float32
            assert np.isfinite(arr).mean() > 0.5
            # Strain of a few cores in a crystal: small away from them, not noise or garbage.
            assert abs(np.nanmedian(arr[:, 40:120, 40:120])) < 0.01
            assert np.isnan(arr[:, :10]).all() and np.isfinite(arr[:, 10:150, 10:150]).mean() > 0.9
    assert (d / "figures" / "strain.png").stat().st_size > 0
    # A coarser resolution: smoother maps, and a border of one (wider) filter width.
    assert main(["infer", str(movie), "--out", str(tmp_path / "o2"), "--detector", "gpa", "--strain",
                 "--strain-resolution", "2", "--no-movie"]) == 0
    coarse = tifffile.imread(tmp_path / "o2" / "g" / "strain_eyy.tif")
    fine = tifffile.imread(d / "strain_eyy.tif")
    assert np.isnan(coarse[:, :20]).all() and np.isfinite(coarse[:, 20:140, 20:140]).mean() > 0.9
    assert np.nanstd(coarse[:, 20:140, 20:140]) < np.nanstd(fine[:, 20:140, 20:140])
    assert main(["infer", str(movie), "--out", str(tmp_path / "o3"), "--detector", "gpa", "--strain",
                 "--strain-resolution", "0", "--no-movie"]) == 2
    assert main(["infer", str(movie), "--out", str(tmp_path / "o3"), "--detector", "gpa",
                 "--strain-resolution", "2", "--no-movie"]) == 2  # without --strain: refused
    assert not (tmp_path / "o3").exists()


def test_infer_reads_a_real_microscope_file(tiny_model, tmp_path):
    """A real TIA SER/EMI SrTiO3 image goes through the whole pipeline with its calibration."""
    real = REALDATA / "ncempy" / "16_STOimage.emi"
    if not real.exists():
        pytest.skip(f"real data not present at {real} (../shared/realdata is provided by CI)")
    assert main(["infer", str(real), "--out", str(tmp_path), "--model", str(tiny_model), "--no-movie"]) == 0
    summary = json.loads((tmp_path / "16_STOimage" / "summary.json").read_text())
    assert summary["calibration"]["pixel_size_source"] == "file"
    assert abs(summary["calibration"]["pixel_size_nm"] - 0.010013) < 1e-5
    assert summary["input"]["shape"] == [1, 1024, 1024]


@pytest.mark.parametrize(("rel", "pixel_size_nm"), [("singleorigin/dDPC_ZnO.tif", 0.02117),
                                                   ("temul/Cropped_PTO-SRO_Aligned.hspy", None)])
def test_no_false_cores_on_the_padded_edge_of_real_lattices(rel, pixel_size_nm):
    """Frames whose canonical size is not a multiple of the network's stride are padded at
    the bottom and right; mirrored padding made a chevron of inclined fringes there, and
    the bundled model reported cores on the last row of these real perfect lattices."""
    real = REALDATA / rel
    if not real.exists():
        pytest.skip(f"real data not present at {real} (../shared/realdata is provided by CI)")
    for views in (1, 2):
        res = analyze(real, model="default", pixel_size_nm=pixel_size_nm, tta=views, progress=False)
        height = res.shape[1]
        assert res.detections.empty, (views, height, res.detections[["x", "y", "score"]])


def test_min_track_score_drops_weak_tracks(tmp_path):
    m = make_movie(np.random.default_rng(0), GeneratorConfig(size=64, mode="stem"), n_frames=6,
                   frame_interval=0.5)
    movie = tmp_path / "clip.tif"
    write_imagej_tiff(movie, m.frames, pixel_size_nm=0.1, frame_interval_s=0.5)
    kw = dict(model="default", min_length=2, progress=False)  # the bundled model finds cores here
    everything = analyze(movie, **kw)
    strict = analyze(movie, min_track_score=float(everything.tracks["score"].max()) + 1e-6, **kw)
    assert len(everything.tracks) > 0 and strict.tracks.empty and strict.track_summary.empty


def test_weak_fraction_must_be_positive(tmp_path):
    from dislotrack.infer.pipeline import analyze

    with pytest.raises(ValueError, match="weak_fraction"):
        analyze(tmp_path / "never_read.tif", weak_fraction=0.0)


@pytest.fixture(scope="module")
def seed_like_movie(tmp_path_factory):
    """The demo's movie (one climbing, one gliding core, a dipole), with its truth."""
    from dislotrack.infer.demo import make_demo_movie

    return make_demo_movie(tmp_path_factory.mktemp("demo"), n_frames=24, size=256)[1]


def _true_detections(m, keep=None):
    c = m.cores if keep is None else m.cores[keep]
    return c.assign(score=0.9)[["frame", "x", "y", "score", "hx", "hy", "bx_nm", "by_nm"]]


@pytest.mark.parametrize("thin", [False, True])
def test_true_cores_give_the_true_events_and_velocities(seed_like_movie, thin):
    """Everything after the detector, fed the generator's own cores: the analysis recovers
    the scenario (events, velocities, identities), also when every third detection of
    each core is missed."""
    from dislotrack.infer.demo import DEMO_PIXEL_NM
    from dislotrack.infer.evaluate import event_scores, tracking_scores
    from dislotrack.infer.pipeline import track_detections

    m = seed_like_movie
    keep = None
    if thin:  # per core, drop frames 1, 4, 7, ... after its first: misses inside the track
        first = m.cores.groupby("particle").frame.transform("min")
        keep = ((m.cores.frame - first) % 3 != 1).to_numpy()
        assert (~keep).sum() > 10
    out = track_detections(_true_detections(m, keep), pixel_size_nm=DEMO_PIXEL_NM,
                           frame_interval_s=1.0, n_frames=len(m.frames),
                           image_shape=m.frames.shape[1:], drift=m.drift)
    scores, table = tracking_scores(out.tracks, out.track_summary, m.cores, m.truth,
                                    pixel_size_nm=DEMO_PIXEL_NM)
    assert scores["identity_switches"] == 0
    assert len(table) == len(m.truth)
    for comp in ("glide", "climb"):
        assert np.allclose(table[f"pred_{comp}_nm_s"], table[f"true_{comp}_nm_s"], atol=0.01), comp
    ev = event_scores(out.events, m.events, pixel_size_nm=DEMO_PIXEL_NM)
    assert len(m.events) >= 2 and ev["event_f1"] == 1.0, (m.events, out.events)
    assert list(out.counts.frame) == list(range(len(m.frames)))


def test_non_square_pixels_are_warned_about(tmp_path):
    from dislotrack.infer.pipeline import calibrate
    from dislotrack.infer.readers import open_movie

    real = REALDATA / "ncempy" / "dmTest_float32_nonSquare_diffPixelSize.dm4"  # x 1, y 0.2 nm
    if not real.exists():
        pytest.skip(f"real data not present at {real} (../shared/realdata is provided by CI)")
    with open_movie(real) as m:
        # (a test pattern at 1 nm/px: a lattice spacing it resolves, so it is not refused)
        cal = calibrate(m, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=9.46)
    assert cal.pixel_size_nm == 1.0
    assert any("non-square pixels" in w and "y 0.2 nm" in w for w in cal.warnings)
    # The user's pixel size replaces both of the file's: "using x" would be untrue.
    with open_movie(real) as m:
        cal = calibrate(m, pixel_size_nm=0.9, frame_interval_s=None, d_spacing_nm=9.46)
    assert cal.pixel_size_nm == 0.9 and not any("non-square" in w for w in cal.warnings)


def test_a_pixel_size_too_coarse_for_the_fringes_is_warned_about_or_refused(tmp_path):
    from dislotrack.infer.pipeline import calibrate
    from dislotrack.infer.readers import open_movie

    movie = tmp_path / "coarse.tif"
    tifffile.imwrite(movie, np.zeros((2, 32, 32), np.float32))
    with open_movie(movie) as m:
        coarse = calibrate(m, pixel_size_nm=0.2, frame_interval_s=1.0, d_spacing_nm=0.473)
        fine = calibrate(m, pixel_size_nm=0.1, frame_interval_s=1.0, d_spacing_nm=0.473)
        # Below 2 px per period (Nyquist) nothing can show: refused before any resampling
        # (a 68 px frame at 169 nm/px would become 115 000 px wide at 0.1 nm/px).
        for ps in (0.256, 169.0):
            with pytest.raises(ValueError, match="below the 2 px"):
                calibrate(m, pixel_size_nm=ps, frame_interval_s=1.0, d_spacing_nm=0.473)
    assert any("not resolved" in w for w in coarse.warnings)  # 2.4 px per (003) period
    assert not any("not resolved" in w for w in fine.warnings)  # 4.7 px


def test_annotated_folders_are_not_read_as_one_movie_and_masks_are_skipped(tiny_model, tmp_path, capsys):
    from dislotrack.data_gen.export import generate_dataset

    generate_dataset(out=tmp_path / "lab", n=2, size=48, mode="stem", seed=3, progress=False)
    out = tmp_path / "o"
    assert main(["infer", str(tmp_path / "lab"), "--out", str(out), "--model", str(tiny_model)]) == 2
    assert "holds annotated images or movies" in capsys.readouterr().err and not out.exists()
    files = sorted(str(p) for p in (tmp_path / "lab").glob("*.tif"))  # as `lab/*.tif` expands
    assert len(files) == 4
    assert main(["infer", *files, "--out", str(out), "--model", str(tiny_model), "--no-movie"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped (the rock-salt mask of annotation") == 2
    assert sorted(p.name for p in out.iterdir()) == ["image_00000", "image_00001"]


def test_a_single_image_keeps_its_cores_as_tracks_and_counts_them(tmp_path):
    from dislotrack.infer.pipeline import calibrate, track_detections
    from dislotrack.infer.readers import open_movie

    det = pd.DataFrame({"frame": 0, "x": [20.0, 50.0, 80.0], "y": 40.0, "score": 0.9,
                        "hx": 0.0, "hy": -1.0})
    out = track_detections(det, pixel_size_nm=0.1, frame_interval_s=None, n_frames=1,
                           image_shape=(100, 100))  # default min_length 6 > 1 frame
    assert len(out.track_summary) == 3 and out.counts.n_dislocations.tolist() == [3]
    assert set(out.track_summary.birth) == {"present"} and out.events.empty
    # A three-frame movie keeps cores seen in all three frames.
    three = pd.concat([det.assign(frame=f) for f in range(3)])
    out = track_detections(three, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=3,
                           image_shape=(100, 100))
    assert out.counts.n_dislocations.tolist() == [3, 3, 3]
    # Cores from elsewhere (frame, x, y, h only): tracks get every column tracks.csv
    # has, and rock salt that nobody judged is NaN, not a measured 0.
    assert set(TRACK_COLUMNS) <= set(out.tracks.columns)
    np.testing.assert_allclose(out.tracks[["x_nm", "y_nm"]], out.tracks[["x", "y"]] * 0.1)
    assert out.counts.rocksalt_fraction.isna().all()
    # A single image needs no frame interval: no per-frame-units warning.
    write_imagej_tiff(tmp_path / "one.tif", np.zeros((64, 64), np.float32), pixel_size_nm=0.1)
    with open_movie(tmp_path / "one.tif") as m:
        cal = calibrate(m, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=0.473)
    assert cal.frame_interval_s is None and not any("frame interval" in w for w in cal.warnings)


def test_logged_warnings_go_into_the_result_not_bare_to_stderr(monkeypatch):
    import io
    import logging

    from dislotrack.infer.warning_log import collected_warnings, keeping_logged_warnings

    # As under the CLI: no handler anywhere, so Python prints warnings bare (lastResort).
    bare = io.StringIO()
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging, "lastResort", logging.StreamHandler(bare))
    log = logging.getLogger("dislotrack.infer.drift")
    log.warning("outside")
    assert bare.getvalue() == "outside\n"  # the setup shows a bare print when there is one
    with collected_warnings() as logged:
        log.warning("drift along the fringes: %d frames", 3)
        log.info("not a warning")
    assert logged == ["drift along the fringes: 3 frames"]
    assert bare.getvalue() == "outside\n"  # collected, not printed

    def fails() -> None:
        log.warning("seen before the failure")
        raise RuntimeError("analysis failed")

    with pytest.raises(RuntimeError):
        keeping_logged_warnings(fails)()
    assert bare.getvalue().endswith("seen before the failure\n")  # not lost with the result


def test_warnings_that_explain_the_others_are_listed_first():
    import logging

    from dislotrack.infer.pipeline import LEADS, collected_warnings

    log = logging.getLogger("dislotrack.infer.pipeline")
    with collected_warnings() as logged:
        log.warning("drift step changed")
        log.warning("no fringes: check the pixel size", extra={LEADS: True})
        log.warning("drift along the fringes")
        log.warning("pixel size estimated", extra={LEADS: True})
    assert logged == ["no fringes: check the pixel size", "pixel size estimated",
                      "drift step changed", "drift along the fringes"]


def test_threshold_outside_0_1_is_refused(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1, frame_interval_s=1.0)
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--no-movie", "--threshold", "1.5"]) == 2
    assert "threshold is a core score in (0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="got nan"):  # the Python API refuses it too
        analyze(movie, model=tiny_model, threshold=float("nan"))


def test_a_strain_rerun_that_makes_no_maps_leaves_no_earlier_maps(tiny_model, tmp_path):
    # Noise: no lattice reflections, so no strain TIFFs; an earlier run's would belie it.
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    args = ["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model), "--no-movie"]
    assert main(args) == 0
    d = tmp_path / "o" / "m"
    for old in ("strain_exx.tif", "rotation_rad.tif", "figures/strain.png"):
        (d / old).write_bytes(b"old")
    assert main([*args, "--strain"]) == 0
    assert not any((d / n).exists() for n in ("strain_exx.tif", "rotation_rad.tif", "figures/strain.png"))


def test_a_rerun_removes_what_it_does_not_rewrite(tiny_model, tmp_path):
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    args = ["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model)]
    assert main(args) == 0
    d = tmp_path / "o" / "m"
    assert (d / "figures" / "overlay.mp4").is_file()
    for old in ("strain_exx.tif", "figures/evaluation.png", "notes.txt"):  # an earlier run's, and the user's
        (d / old).write_bytes(b"old")
    assert main([*args, "--no-movie", "--threshold", "1.5"]) == 2  # refused: nothing removed
    assert (d / "figures" / "overlay.mp4").is_file() and (d / "strain_exx.tif").is_file()
    assert main([*args, "--no-movie"]) == 0
    assert not (d / "figures" / "overlay.mp4").exists()  # would mismatch the new tables
    assert not (d / "strain_exx.tif").exists() and not (d / "figures" / "evaluation.png").exists()
    assert (d / "notes.txt").read_bytes() == b"old" and (d / "summary.json").is_file()
    # evaluate's report beside the results: stale where it scored this input, kept otherwise.
    report = tmp_path / "o" / "evaluation.json"
    report.write_text(json.dumps({"other": {"f1": 1.0}}))
    assert main([*args, "--no-movie"]) == 0 and report.is_file()
    report.write_text(json.dumps({"m": {"f1": 1.0}, "other": {"f1": 1.0}}))
    assert main([*args, "--no-movie"]) == 0 and not report.exists()


def test_an_unreadable_single_input_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    notes = tmp_path / "Custom_info.txt"
    notes.write_text("Frames Per Second = 1")
    assert main(["infer", str(notes), "--out", str(tmp_path / "o")]) == 2
    assert "unsupported file type '.txt' for Custom_info.txt" in capsys.readouterr().err
    empty = tmp_path / "cut.tif"
    empty.write_bytes(b"")
    assert main(["infer", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "cut.tif is empty (0 bytes)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_failed_rerun_leaves_the_earlier_results_whole(tiny_model, tmp_path, monkeypatch):
    from dislotrack.infer import run

    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    run.infer_one(movie, tmp_path / "o", model=tiny_model, movie=False, progress=False)
    d = tmp_path / "o" / "m"
    before = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert Path("rocksalt_mask.tif") in before and Path("summary.json") in before

    def fails(*args, **kwargs):  # after the masks and tables were written
        raise RuntimeError("figure failed")

    monkeypatch.setattr(run.figures, "counts", fails)
    with pytest.raises(RuntimeError, match="figure failed"):
        run.infer_one(movie, tmp_path / "o", model=tiny_model, movie=False, progress=False)
    after = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert after == before  # the mask was not truncated, no table replaced
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["m"]  # no staging folder left
    with pytest.raises(RuntimeError, match="figure failed"):  # a first run: no folder at all
        run.infer_one(movie, tmp_path / "o2", model=tiny_model, movie=False, progress=False)
    assert list((tmp_path / "o2").iterdir()) == []


def test_frames_without_lattice_fringes_or_too_small_are_warned_about(tiny_model, tmp_path):
    noise = tmp_path / "noise.tif"
    write_imagej_tiff(noise, np.random.default_rng(2).normal(size=(2, 128, 128)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    res = analyze(noise, model=tiny_model, progress=False)
    (said,) = [w for w in res.warnings if "no 0.473 nm (003) lattice fringes stand out" in w]
    n = int((res.detections.score > res.options["threshold"]).sum())
    assert ("none could be found here" if n == 0 else "the detection here is doubtful" if n == 1
            else f"the {n} detections here are doubtful") in said
    assert ("the rock salt reported" in said) == (res.counts.rocksalt_fraction.max() > 0)
    m = make_movie(np.random.default_rng(3), GeneratorConfig(size=128, mode="hrtem"), n_frames=2)
    lattice = tmp_path / "lattice.tif"
    write_imagej_tiff(lattice, m.frames, pixel_size_nm=m.meta["pixel_size"], frame_interval_s=1.0)
    res = analyze(lattice, model=tiny_model, progress=False)
    assert not any("fringes stand out" in w or "too small" in w for w in res.warnings)
    tiny = tmp_path / "tiny.tif"  # 12 px at 0.1 nm/px: under 3 fringe periods
    write_imagej_tiff(tiny, m.frames[:, :12, :12], pixel_size_nm=0.1, frame_interval_s=1.0)
    res = analyze(tiny, model=tiny_model, progress=False)
    assert any("too small to show a dislocation core or rock salt, so none is reported" in w
               for w in res.warnings)
    assert res.counts.rocksalt_fraction.isna().all()  # not judged, not zero
    # A low threshold makes the untrained network fire anywhere: none of it is reported
    # from frames too small (or too coarse) to show a core, all of it from larger ones.
    low = dict(model=tiny_model, threshold=0.01, progress=False)
    assert analyze(tiny, **low).detections.empty
    coarse = tmp_path / "coarse.tif"
    write_imagej_tiff(coarse, m.frames[:, :64, :64], pixel_size_nm=0.2, frame_interval_s=1.0)
    res = analyze(coarse, **low)
    assert res.detections.empty and any("not resolved" in w for w in res.warnings)
    fine = tmp_path / "fine.tif"
    write_imagej_tiff(fine, m.frames[:1, :64, :64], pixel_size_nm=0.1, frame_interval_s=1.0)
    assert len(analyze(fine, **low).detections) > 0


def test_frames_that_cannot_show_cores_get_no_drift_or_fringe_warnings_about_cores(tiny_model, tmp_path):
    # One set of fringes (period 6 px, normal at 30 deg) drifting 0.5 px per frame: the
    # drift along them cannot be seen, which matters only where cores can be reported.
    yy, xx = np.mgrid[0:128, 0:128].astype(float)
    frames = np.stack([np.cos(2 * np.pi * (0.5 * (yy - 0.3 * t) + 0.866 * (xx - 0.4 * t)) / 6.0)
                       for t in range(6)]).astype(np.float32)
    path = tmp_path / "fringes.tif"
    write_imagej_tiff(path, frames, pixel_size_nm=0.1, frame_interval_s=1.0)
    one_set = analyze(path, model=tiny_model, progress=False)
    assert any("drift along the lattice fringes cannot be seen" in w for w in one_set.warnings)
    assert one_set.drift.attrs["frames_unseen_along_fringes"] == 5  # for displacement.png's climb
    from dislotrack.infer.outputs import summary_dict

    said = summary_dict(one_set)["drift"]  # summary.json counts them too
    assert said["frames_unseen_along_fringes"] == 5 and said["frames_along_fringes_from_layer_spots"] == 0
    assert said["largest_px"] == pytest.approx(np.hypot(*one_set.drift[["dx", "dy"]].to_numpy()[-1]))
    write_imagej_tiff(path, frames, pixel_size_nm=0.2, frame_interval_s=1.0)  # 2.4 px fringes
    blind = analyze(path, model=tiny_model, progress=False).warnings
    assert any("not resolved" in w for w in blind)
    assert not any("drift along" in w or "fringes stand out" in w for w in blind)
    # Frames of 16 px: one warning that they are too small, not also drift's about them.
    tiny = tmp_path / "tiny.tif"
    write_imagej_tiff(tiny, np.random.default_rng(1).normal(size=(6, 16, 16)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    said = analyze(tiny, model=tiny_model, progress=False).warnings
    assert [w for w in said if "too small" in w]
    assert not [w for w in said if "drift" in w or "correlation" in w]
    # Frames of 3 px (a real EMD stack): figures drawn without matplotlib's layout complaint.
    write_imagej_tiff(tiny, np.random.default_rng(1).normal(size=(2, 3, 3)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="constrained_layout")
        assert main(["infer", str(tiny), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                     "--no-movie"]) == 0
    with pytest.warns(AnalysisWarning, match="drift along the lattice fringes cannot be seen"):
        analyze(np.zeros((5, 64, 64), np.float32) + np.arange(64.0) % 3, pixel_size_nm=0.1,
                model=tiny_model, progress=False)


def test_no_strain_tiffs_are_written_where_no_map_can_be_made(tmp_path):
    # Stacks of NaN (31 MB for a 60-frame 512² movie) said nothing the warning does not.
    from dislotrack.infer.strain import COMPONENTS, StrainWriter

    writer = StrainWriter(tmp_path, shape=(2, 32, 32), pixel_size_nm=0.1, frame_interval_s=1.0,
                          d_spacing_nm=0.473)
    blank = np.zeros((32, 32), np.float32)  # no lattice: no reflections to measure strain from
    for i in range(2):
        writer(i, blank, pd.DataFrame({"x": [], "y": []}))
    writer.close()
    assert not any((tmp_path / f"{name}.tif").exists() for name in COMPONENTS.values())


def test_strain_maps_start_after_a_blank_first_frame(tmp_path):
    # A movie that starts with the beam blanked: the reflections come from the first frame
    # that shows the lattice; the blank frame's maps are NaN, the others measured.
    from dislotrack.infer.strain import COMPONENTS, StrainWriter

    cfg = GeneratorConfig(size=160, mode="stem", dose=(3000, 3000), perfect_fraction=1.0, realism=0.0)
    frames = make_movie(np.random.default_rng(2), cfg, n_frames=3, frame_interval=1.0).frames
    frames[0] = 0.0
    frames[0, 150:154, 4:40] = frames.max()  # its scale bar still drawn
    writer = StrainWriter(tmp_path, shape=frames.shape, pixel_size_nm=0.1, frame_interval_s=1.0,
                          d_spacing_nm=0.473)
    for i, f in enumerate(frames):
        writer(i, f, pd.DataFrame({"x": [], "y": []}))
    writer.close()
    for name in COMPONENTS.values():
        maps = tifffile.imread(tmp_path / f"{name}.tif")
        assert np.isnan(maps[0]).all()
        assert all(np.isfinite(maps[i]).mean() > 0.3 for i in (1, 2))
    # A video that yields fewer frames than its header said: the frames never given are
    # NaN (not measured), not a strain of 0.
    (tmp_path / "short").mkdir()
    writer = StrainWriter(tmp_path / "short", shape=(4, *frames.shape[1:]), pixel_size_nm=0.1,
                          frame_interval_s=1.0, d_spacing_nm=0.473)
    for i in (1, 2):
        writer(i - 1, frames[i], pd.DataFrame({"x": [], "y": []}))
    writer.close()
    maps = tifffile.imread(tmp_path / "short" / "strain_exx.tif")
    assert np.isfinite(maps[:2]).mean() > 0.3 and np.isnan(maps[2:]).all()


def test_a_blank_first_frame_does_not_stop_the_pixel_size_estimate():
    from dislotrack.infer.pipeline import calibrate
    from dislotrack.infer.readers import movie_from_array

    cfg = GeneratorConfig(size=128, mode="hrtem", dose=(3000, 3000), perfect_fraction=1.0)
    frames = make_movie(np.random.default_rng(1), cfg, n_frames=3, frame_interval=1.0).frames
    frames[0] = 0.0
    with movie_from_array(frames) as movie:
        cal = calibrate(movie, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=0.473)
    assert cal.pixel_size_source == "estimated" and cal.pixel_size_nm == pytest.approx(0.1, rel=0.02)
    frames[0, 120:124, 4:40] = frames.max()  # the blanked frame keeps its scale bar
    with movie_from_array(frames) as movie:
        cal = calibrate(movie, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=0.473)
    assert cal.pixel_size_nm == pytest.approx(0.1, rel=0.02)


def test_no_strain_maps_is_said_in_plain_words(tmp_path, caplog):
    from dislotrack.infer.strain import StrainWriter

    y = np.mgrid[:96, :96][0] * 0.1
    fringes = np.cos(2 * np.pi * y / 0.473).astype(np.float32)  # (003) only, as in [1-10]
    noise = np.random.default_rng(0).normal(size=(96, 96)).astype(np.float32)
    for name, frame, says in (("blank", np.zeros((96, 96), np.float32), "every frame is blank"),
                              ("noise", noise, "frame 0 shows no (003) fringes"),
                              ("fringes", fringes, "frame 0 shows no second reflection besides (003)")):
        caplog.clear()
        (tmp_path / name).mkdir()
        writer = StrainWriter(tmp_path / name, shape=(1, 96, 96), pixel_size_nm=0.1,
                              frame_interval_s=None, d_spacing_nm=0.473)
        with caplog.at_level(logging.WARNING, logger="dislotrack"):
            writer(0, frame, pd.DataFrame({"x": [], "y": []}))
            writer.close()
        (msg,) = [r.getMessage() for r in caplog.records]
        assert msg.startswith("no strain maps (no strain TIFFs are written): 2-D strain needs two")
        assert says in msg


def test_strain_from_a_reflection_off_the_003_spacing_is_said(tmp_path, caplog):
    from dislotrack.infer.strain import StrainWriter

    cfg = GeneratorConfig(size=160, mode="stem", dose=(3000, 3000), perfect_fraction=1.0, realism=0.0)
    frame = make_movie(np.random.default_rng(2), cfg, n_frames=2, frame_interval=1.0).frames[0]
    for ps, off in ((0.1, False), (0.087, True)):  # 0.087 nm/px: its (003) fringes read 0.41 nm
        caplog.clear()
        (tmp_path / str(ps)).mkdir()
        writer = StrainWriter(tmp_path / str(ps), shape=(1, 160, 160), pixel_size_nm=ps,
                              frame_interval_s=None, d_spacing_nm=0.473)
        with caplog.at_level(logging.WARNING, logger="dislotrack"):
            writer(0, frame, pd.DataFrame({"x": [], "y": []}))
        writer.close()
        said = [r.getMessage() for r in caplog.records if "strain maps are from" in r.getMessage()]
        assert len(said) == off and writer.first is not None  # the maps are made either way
        if off:
            assert re.match(r"strain maps are from the 0\.4[12]\d* nm reflection, 1[23] % off the "
                            r"0\.473 nm \(003\) spacing: check the pixel size", said[0])


def test_small_option_mistakes_read_as_one_line(tmp_path, capsys, tiny_model):
    from dislotrack.infer.readers import _pick
    from dislotrack.models.io import load_model

    image = tmp_path / "one.tif"
    write_imagej_tiff(image, np.random.default_rng(0).random((1, 32, 32), np.float32), pixel_size_nm=0.1)
    # A fraction of the threshold above 1 is refused before anything is read.
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--weak-fraction", "3"]) == 2
    assert "error: --weak-fraction must be in (0, 1]" in capsys.readouterr().err
    # A single image reports cores, not tracks and events.
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--no-movie"]) == 0
    assert re.search(r"one.tif: \d+ cores?\n", capsys.readouterr().out)
    with pytest.raises(FileNotFoundError, match="or a bundled name: default, fine"):
        load_model("nosuch")
    with pytest.raises(ValueError,
                       match=r"holds one image \(untitled\): signal chooses among several"):
        _pick(["None"], "HAADF", Path("temp.mrc"), what="image")


def test_strain_maps_leave_out_the_border_the_filter_wraps(tmp_path, caplog):
    from dislotrack.infer.strain import COMPONENTS, StrainWriter, border_width_px

    y, x = np.mgrid[:96, :96] * 0.1  # a [100]-like lattice: (003) and a 0.249 nm in-layer row
    frame = (np.cos(2 * np.pi * y / 0.473) + np.cos(2 * np.pi * (x / 0.249 + y / 0.473 / 3))
             ).astype(np.float32)
    writer = StrainWriter(tmp_path, shape=(1, 96, 96), pixel_size_nm=0.1, frame_interval_s=None,
                          d_spacing_nm=0.473)
    writer(0, frame, pd.DataFrame({"x": [], "y": []}))
    writer.close()
    edge = border_width_px(1.0, 0.1)
    assert edge == 10
    for name in COMPONENTS.values():
        m = tifffile.imread(tmp_path / f"{name}.tif")
        assert np.isnan(m[:edge]).all() and np.isnan(m[:, -edge:]).all()
        inner = m[edge:-edge, edge:-edge]
        assert np.isfinite(inner).all() and np.abs(inner).max() < 0.01  # a perfect lattice
    # Frames no wider than the two borders: NaN maps and a warning, not a NaN figure.
    (tmp_path / "s").mkdir()
    small = StrainWriter(tmp_path / "s", shape=(3, 32, 32), pixel_size_nm=0.1, frame_interval_s=None,
                         d_spacing_nm=0.473, resolution_nm=2.0)
    with caplog.at_level(logging.WARNING, logger="dislotrack"):  # frame 0 blank: said once, later
        for i, f in enumerate([np.zeros((32, 32), np.float32), frame[:32, :32], frame[:32, :32]]):
            small(i, f, pd.DataFrame({"x": [], "y": []}))
    small.close()
    assert sum("not wider than the two" in r.getMessage() for r in caplog.records) == 1
    assert not (tmp_path / "s" / "strain_eyy.tif").exists()
    # What was left out: the wrapped-in edge reads as strain several times the interior's.
    from dislotrack.infer.gpa import find_reflections, strain_maps

    g = find_reflections(frame, pixel_size_nm=0.1, layered=True)
    raw = strain_maps(frame, g[0], g[1], pixel_size_nm=0.1, resolution_nm=1.0)["eyy"]
    inner = np.abs(raw[edge:-edge, edge:-edge]).max()
    assert np.nanmax(np.abs(raw[:edge])) > 3 * inner


def test_parquet_without_pyarrow_is_refused_before_the_analysis(tiny_model, tmp_path, monkeypatch, capsys):
    import importlib.util

    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pyarrow", "fastparquet")
                        else real_find(name, *a))
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1, frame_interval_s=1.0)
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--parquet"]) == 2
    assert "Parquet output (--parquet) needs pyarrow" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    from dislotrack.infer import run

    # The API: before the analysis too.
    with pytest.raises(ImportError, match=r"\(parquet=True\) needs pyarrow"):
        run.infer_one(movie, tmp_path / "o", parquet=True, model=tiny_model, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--max-speed", "-1", r"error: --max-speed must be a positive speed"),
    ("--max-speed", "nan", r"error: --max-speed must be a positive speed"),
    ("--memory", "-1", r"error: --memory must be a number of frames >= 0"),
    ("--min-length", "0", r"error: --min-length must be a number of frames >= 1"),
    ("--max-gap", "-1", r"error: --max-gap must be a number of frames >= 0"),
    ("--d-spacing", "inf", r"error: --d-spacing must be a positive spacing"),
    ("--d-spacing", "-0.4", r"error: --d-spacing must be a positive spacing"),
    ("--pixel-size", "-1", r"error: --pixel-size must be a positive size \[nm/px\], got -1"),
    ("--frame-interval", "0", r"error: --frame-interval must be a positive time"),
    ("--pixel-size", "3.5e-11", r"finer than any microscope samples .*; 3.5e-11 m is 0.035 nm"),
])
def test_impossible_analysis_options_are_refused_by_name(tiny_model, tmp_path, capsys, monkeypatch,
                                                         flag, value, message):
    import re

    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1, frame_interval_s=1.0)
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--no-movie", flag, value]) == 2
    assert re.search(message, capsys.readouterr().err) and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"frame_interval_s": "0.5"}, r"^frame_interval_s must be a positive time "
                                  r"\[s\], got '0.5' \(a str\)"),
    ({"pixel_size_nm": "0.1"}, r"^pixel_size_nm .* got '0.1' \(a str\)"),
    ({"memory": 2.5}, r"^memory must be a whole number of frames, got 2.5"),
    ({"memory": "2"}, r"^memory .* got '2' \(a str\)"),
    ({"max_speed_nm_s": None}, r"^max_speed_nm_s .* got None \(a NoneType\)"),
    ({"min_length": True}, r"^min_length .* got True \(a bool\)"),
    ({"lattice_h": "no"}, r"^lattice_h must be True or False, got 'no'"),  # truthy: it snapped
    ({"lattice_h": None}, r"^lattice_h must be True or False, got None"),
    ({"progress": "no"}, r"^progress must be True or False, got 'no'"),
])
def test_analyze_refuses_options_of_the_wrong_type_by_name(kwargs, message):
    with pytest.raises(TypeError, match=message):
        analyze(np.zeros((2, 32, 32), np.float32), **{"pixel_size_nm": 0.1, **kwargs})
    with pytest.raises(TypeError, match=r"got a list: for a list of frames, pass np.stack\(frames\)"):
        analyze([np.zeros((32, 32))] * 2, pixel_size_nm=0.1)


@pytest.mark.parametrize(("extra", "named"), [
    (["--tta"], ["does not use --tta:"]),
    (["--tta", "2"], ["does not use --tta:"]),
    (["--threshold", "0.3"], ["does not use --threshold:"]),
    (["--model", "default", "--tta"], ["does not use --model or --tta:"]),
    (["--weak-fraction", "0.3"], ["does not use --weak-fraction:"]),
])
def test_unet_options_with_the_gpa_detector_are_refused_by_name(tmp_path, capsys, monkeypatch,
                                                                  extra, named):
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    movies = [tmp_path / "a.tif", tmp_path / "b.tif"]
    for movie in movies:
        write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1,
                          frame_interval_s=1.0)
    # Refused once, up front, for all inputs: not per input after reading each.
    assert main(["infer", *map(str, movies), "--out", str(tmp_path / "o"), "--no-movie",
                 "--detector", "gpa", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dislotrack infer: error: the gpa detector "
                                                    "(--detector gpa)")
    assert all(n in err for n in named) and "U-Net only" in err
    assert not (tmp_path / "o").exists()
    kwargs = ({"tta": True} if "--tta" in extra else {"weak_fraction": 0.3}
              if "--weak-fraction" in extra else {"threshold": 0.3})
    with pytest.raises(ValueError, match=rf"\(detector='gpa'\) does not use {next(iter(kwargs))}: "
                                         r".*U-Net only \(detector='unet'\)"):
        analyze(movies[0], detector="gpa", progress=False, **kwargs)
    with pytest.raises(ValueError, match=r"^detector must be 'unet' or 'gpa'"):
        analyze(movies[0], detector="gpaa", progress=False)
    with pytest.raises(ValueError, match=r"^tta must be one of 1, 2, 4, 8"):
        analyze(movies[0], tta=3, progress=False)  # before the model is loaded


def test_single_images_get_two_views_unless_told(tmp_path, tiny_model):
    # Two views cut false cores on real perfect lattices (README); a movie's tracks
    # already filter them, so movies keep one view (twice as fast).
    image, movie = tmp_path / "one.tif", tmp_path / "many.tif"
    rng = np.random.default_rng(0)
    write_imagej_tiff(image, rng.random((1, 32, 32), np.float32), pixel_size_nm=0.1)
    write_imagej_tiff(movie, rng.random((3, 32, 32), np.float32), pixel_size_nm=0.1)
    views = {}
    for path, tta in [(image, None), (movie, None), (image, 1), (movie, 2), (image, False)]:
        res = analyze(path, model=tiny_model, tta=tta, progress=False, device="cpu")
        views[path.stem, tta] = res.options["tta"]
    assert views == {("one", None): 2, ("many", None): 1, ("one", 1): 1, ("many", 2): 2,
                     ("one", False): 1}
    # The GPA baseline has no views to average, and None is not an option given to it.
    res = analyze(image, detector="gpa", progress=False)
    assert res.options["tta"] == 1


def test_tta_takes_a_number_of_views(capsys):
    from dislotrack.infer.cli import build_parser

    parse = lambda *a: build_parser().parse_args(["infer", "m.tif", "--out", "o", *a]).tta  # noqa: E731
    # Not given: None, which `analyze` resolves per input (`default_tta`).
    assert (parse(), parse("--tta"), parse("--tta", "2"), parse("--tta", "4")) == (None, 8, 2, 4)
    with pytest.raises(SystemExit):
        parse("--tta", "3")
    # --tta alone before an input still means 8 views (as before it took a count).
    from dislotrack.infer.cli import _bare_tta

    args = build_parser().parse_args(_bare_tta(["infer", "--tta", "a.tif", "b.tif", "--out", "o"]))
    assert (args.tta, args.inputs) == (8, ["a.tif", "b.tif"])
    assert _bare_tta(["infer", "a.tif", "--tta", "3"]) == ["infer", "a.tif", "--tta", "3"]
    assert "argument --tta: invalid choice: 3 (choose from 1, 2, 4, 8)" in capsys.readouterr().err


def test_max_speed_without_a_frame_interval_applies_at_an_assumed_interval(tiny_model, tmp_path):
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((3, 32, 32), np.float32), pixel_size_nm=0.1)  # no interval
    res = analyze(movie, model=tiny_model, max_speed_nm_s=1.5, progress=False)
    assert [w for w in res.warnings if "max_speed" in w] == [
        "the frame interval is unknown (pass frame_interval_s=S): max_speed_nm_s=1.5 nm/s was "
        "applied at an assumed 1 s per frame, so cores were linked within 1.5 nm (15 px) per frame"]
    # On the command line the message names the flags.
    with command_line():
        res = analyze(movie, model=tiny_model, max_speed_nm_s=1.5, progress=False)
    assert [w for w in res.warnings if "max-speed" in w][0].startswith(
        "the frame interval is unknown (pass --frame-interval S): --max-speed 1.5 nm/s was applied")
    # At its default, or with a frame interval (from the file or given), it is used: no warning.
    for kwargs in ({}, {"max_speed_nm_s": 1.5, "frame_interval_s": 1.0}):
        res = analyze(movie, model=tiny_model, progress=False, **kwargs)
        assert not any("max_speed" in w for w in res.warnings), kwargs
    # Below the detections' scatter the search range is raised to 0.75 nm, and said so.
    res = analyze(movie, model=tiny_model, progress=False, max_speed_nm_s=0.5, frame_interval_s=1.0)
    assert [w for w in res.warnings if "max_speed" in w] == [
        "max_speed_nm_s=0.5 nm/s allows 0.5 nm per 1 s frame, under the detections' "
        "own scatter: cores were linked within 0.75 nm per frame"]


def test_a_min_length_longer_than_the_movie_is_reported():
    from dislotrack.infer.options import DEFAULT_MIN_LENGTH
    from dislotrack.infer.pipeline import collected_warnings, track_detections

    det = pd.DataFrame({"frame": 0, "x": [20.0, 50.0], "y": 40.0, "score": 0.9, "hx": 0.0, "hy": -1.0})
    three = pd.concat([det.assign(frame=f) for f in range(3)], ignore_index=True)
    kw = dict(pixel_size_nm=0.1, frame_interval_s=1.0, image_shape=(100, 100))
    with collected_warnings() as logged:
        out = track_detections(three, n_frames=3, min_length=10, **kw)
    assert len(out.track_summary) == 2  # clamped to 3: both cores are in every frame
    assert logged == ["min_length=10 is longer than the 3 frames analysed: used 3, so "
                      "only cores detected in every frame make tracks"]
    with collected_warnings() as logged:
        track_detections(det, n_frames=1, min_length=10, **kw)
    assert logged == ["min_length=10 is longer than the 1 frame analysed: used 1, so "
                      "every core of the image is a track"]
    # Its default on an image, or a length that fits: nothing to say.
    assert DEFAULT_MIN_LENGTH > 3
    with collected_warnings() as logged:
        track_detections(det, n_frames=1, **kw)
        track_detections(three, n_frames=3, min_length=3, **kw)
    assert logged == []
    # Its default on a short movie: the tracks' velocities rest on that many points.
    with collected_warnings() as logged:
        out = track_detections(three, n_frames=3, **kw)
    assert len(out.track_summary) == 2
    assert logged == [f"3 frames were analysed, fewer than the {DEFAULT_MIN_LENGTH} a track needs "
                      "by default (min_length): tracks are cores found in all 3 "
                      "frames, and their velocities rest on 3 points"]


def test_track_detections_refuses_tables_it_cannot_use_by_name():
    from dislotrack.infer.pipeline import track_detections

    det = pd.DataFrame({"frame": [0, 1, 2], "x": 20.0, "y": 40.0, "score": 0.9, "hx": 0.0, "hy": -1.0})
    kw = dict(pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=3, image_shape=(100, 100))
    with pytest.raises(ValueError, match=r"^detections lacks column frame \(it has: x, y, score, hx, hy\)$"):
        track_detections(det.drop(columns="frame"), **kw)
    with pytest.raises(TypeError, match="detections must be a pandas DataFrame, got ndarray"):
        track_detections(det.to_numpy(), **kw)
    with pytest.raises(ValueError, match="drift lacks columns dx, dy"):
        track_detections(det, drift=pd.DataFrame({"frame": [0, 1, 2]}), **kw)
    with pytest.raises(ValueError, match="detections lacks column score"):
        track_detections(det.drop(columns="score"), min_track_score=0.5, **kw)
    assert len(track_detections(det.drop(columns="score"), **kw).tracks) == 3  # score: optional
    weak = pd.DataFrame({"frame": [3], "x": 20.0, "y": 40.0, "hx": 0.0, "hy": -1.0})
    with pytest.raises(ValueError, match="weak lacks column score"):
        track_detections(det, weak=weak, **kw)
    kw["n_frames"] = 4  # a weak peak (no Burgers vector columns) extends the track by a frame
    out = track_detections(det, weak=weak.assign(score=0.3), min_length=2, **kw)
    assert out.tracks.frame.tolist() == [0, 1, 2, 3]


def test_an_unavailable_device_is_a_one_line_error_listing_those_available(tmp_path, monkeypatch):
    from dislotrack.infer.predict import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^CUDA requested \(device 'cuda:0'\) but not available: "
                                         r"torch sees no CUDA device \(available: cpu\)$"):
        analyze(tmp_path / "never_read.tif", device="cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one GPU, the second asked for
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"torch sees 1 CUDA device \(available: cpu, cuda:0\)"):
        pick_device("cuda:1")
    assert pick_device("cuda:0") == torch.device("cuda:0")
    for name in ("gpu", "mps", "meta", "cpu:3"):  # unknown, or torch's but not checked here
        with pytest.raises(ValueError, match=f"must be auto, cpu, cuda or cuda:N, got '{name}'"):
            pick_device(name)
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


def test_infer_takes_a_cuda_index_and_refuses_a_missing_device_once(tmp_path, monkeypatch, capsys):
    movies = [tmp_path / "a.tif", tmp_path / "b.tif"]
    for m in movies:
        write_imagej_tiff(m, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("cuda:1", "CUDA requested (device 'cuda:1') but not available"),
                            ("gpu", "must be auto, cpu, cuda or cuda:N, got 'gpu'")):
        assert main(["infer", *map(str, movies), "--out", str(tmp_path / "o"), "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err  # one line, before any input is read
    assert not (tmp_path / "o").exists()


def test_summary_json_records_the_analysis_options(tiny_model, tmp_path):
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((3, 32, 32), np.float32), pixel_size_nm=0.1)  # no interval
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--no-movie", "--device", "cpu", "--frame-interval", "0.5", "--max-speed", "0.4",
                 "--memory", "3", "--min-length", "2", "--max-gap", "0", "--d-spacing", "0.47",
                 "--network-h", "--precision", "float32"]) == 0
    summary = json.loads((tmp_path / "o" / "m" / "summary.json").read_text())
    assert summary["options"] == {
        "detector": "unet", "model": str(tiny_model), "threshold": 0.5,  # the card's default
        "tta": 1, "weak_fraction": 0.5, "max_speed_nm_s": 0.4, "memory": 3, "min_length": 2,
        "max_gap": 0, "min_track_score": 0.0, "border_nm": 2.0, "d_spacing_nm": 0.47,
        "lattice_h": False, "pixel_size_nm": None, "frame_interval_s": 0.5, "signal": None,
        "device": "cpu", "device_used": "cpu", "precision": "float32", "precision_used": "float32",
        "frames": None, "region": None, "network_view": "as read"}
    assert {"schema_version", "dislotrack_version", "model", "input", "calibration", "totals",
            "velocities", "lattice", "warnings"} < set(summary)  # the keys before stay
    # Numpy numbers, paths and devices, as notebooks pass them, are written as plain JSON.
    res = analyze(movie, model=tiny_model, memory=np.int64(3), d_spacing_nm=np.float32(0.47),
                  detector="unet", progress=False, device=torch.device("cpu"),
                  weak_fraction=np.float32(1.0))
    assert res.options["memory"] == 3 and type(res.options["memory"]) is int
    assert res.options["model"] == str(tiny_model) and res.options["frame_interval_s"] is None
    assert (res.options["device"], res.options["weak_fraction"]) == ("cpu", 1.0)
    assert type(res.options["weak_fraction"]) is float
    from dislotrack.infer.outputs import summary_dict

    assert json.loads(json.dumps(summary_dict(res), allow_nan=False))["options"] == res.options


def test_returned_track_summary_names_per_frame_velocities_as_the_csv_does(tiny_model, tmp_path):
    from dislotrack.infer.columns import velocities_in_nm_s
    from dislotrack.infer.evaluate import tracking_scores
    from dislotrack.infer.outputs import summary_dict
    from dislotrack.infer.pipeline import track_detections

    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1)  # no interval
    res = run.infer_one(movie, tmp_path / "o", model=tiny_model, movie=False, progress=False)
    header = pd.read_csv(tmp_path / "o" / "m" / "track_summary.csv", nrows=0).columns
    assert list(res.track_summary.columns) == list(header)
    assert "glide_velocity_nm_per_frame" in header and not any(c.endswith("_nm_s") for c in header)
    # 0.1 nm per frame along x, h up: glide -0.1 nm/frame under the per-frame name.
    det = pd.DataFrame({"frame": range(10), "x": np.linspace(50, 59, 10), "y": 40.0, "score": 0.9,
                        "hx": 0.0, "hy": -1.0})
    kw = dict(pixel_size_nm=0.1, n_frames=10, image_shape=(100, 100), min_length=3)
    per_frame = track_detections(det, frame_interval_s=None, **kw).track_summary
    assert per_frame.glide_velocity_nm_per_frame.round(3).tolist() == [-0.1]
    assert "glide_velocity_nm_s" not in per_frame
    per_s = track_detections(det, frame_interval_s=2.0, **kw).track_summary
    assert per_s.glide_velocity_nm_s.round(3).tolist() == [-0.05]
    assert np.allclose(velocities_in_nm_s(per_frame, 2.0).glide_velocity_nm_s, per_s.glide_velocity_nm_s)
    # summary.json's mean velocities are found under either name.
    res.track_summary = per_frame
    assert summary_dict(res)["velocities"]["glide"]["mean"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="velocities per frame"):  # not compared with nm/s truth
        tracking_scores(det.assign(particle=0), per_frame, det.assign(particle=0),
                        pd.DataFrame({"particle": [0], "n_frames": [10], "glide_velocity_nm_s": [-0.05],
                                      "climb_velocity_nm_s": [0.0]}), pixel_size_nm=0.1)


def test_infer_defaults_are_analyzes():
    import inspect

    from dislotrack.infer.cli import build_parser

    args = build_parser().parse_args(["infer", "m.tif", "--out", "o"])
    defaults = {k: p.default for k, p in inspect.signature(analyze).parameters.items()}
    flags = {"max_speed": "max_speed_nm_s", "min_length": "min_length", "memory": "memory",
             "max_gap": "max_gap", "weak_fraction": "weak_fraction", "d_spacing": "d_spacing_nm",
             "threshold": "threshold", "device": "device", "detector": "detector",
             "signal": "signal", "tta": "tta", "precision": "precision"}
    assert {f: getattr(args, f) for f in flags} == pytest.approx({f: defaults[k] for f, k in flags.items()})


def test_precision_takes_either_vocabulary(capsys):
    # infer names the arithmetic by dtype, finetune by Lightning's precision: each takes both.
    from dislotrack.infer.cli import build_parser

    parser = build_parser()
    infer = ["infer", "m.tif", "--out", "o", "--precision"]
    tune = ["finetune", "--data", "d", "--out", "o", "--precision"]
    for dtype, lightning in (("float32", "32-true"), ("bfloat16", "bf16-mixed"), ("float16", "16-mixed")):
        assert parser.parse_args([*infer, lightning]).precision == dtype
        assert parser.parse_args([*infer, dtype]).precision == dtype
        assert parser.parse_args([*tune, dtype]).precision == lightning
        assert parser.parse_args([*tune, lightning]).precision == lightning
    with pytest.raises(SystemExit):
        parser.parse_args([*infer, "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


def test_precision_choices_and_refusal(tiny_model, tmp_path, capsys, monkeypatch):
    from dislotrack.infer import predict
    from dislotrack.infer.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("infer", "demo"):
        flag = next(a for a in sub.choices[command]._actions if a.dest == "precision")
        assert tuple(flag.choices) == predict.PRECISIONS and flag.default == "auto"
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1)
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--device", "cpu",
                 "--precision", "float16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --precision float16 runs on CUDA only" in err
    assert not (tmp_path / "o").exists()
    # auto: bfloat16 where the CPU has AMX, recorded as used, and what the network ran in.
    ran = []

    def spy(precision, device):
        ran.append(dtype := network_dtype(precision, device))
        return dtype

    network_dtype = predict.network_dtype
    monkeypatch.setattr(predict, "network_dtype", spy)  # as predict_logits calls it
    for amx, used in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(predict, "fast_cpu_bfloat16", lambda amx=amx: amx)
        ran.clear()
        res = analyze(movie, model=tiny_model, device="cpu", frame_interval_s=1.0, progress=False)
        assert (res.options["precision"], res.options["precision_used"]) == ("auto", used)
        assert ran and set(ran) == {torch.bfloat16 if amx else None}
    # The GPA baseline runs no network: precision is a U-Net option.
    res = analyze(movie, detector="gpa", device="cpu", frame_interval_s=1.0, progress=False)
    assert res.options["precision_used"] == "float32"
    with pytest.raises(ValueError, match=r"does not use precision:"):
        analyze(movie, detector="gpa", precision="float16", progress=False)


def test_signal_picks_the_dataset_of_an_hdf5_file_and_a_choice_is_reported(tiny_model, tmp_path):
    import h5py

    rng = np.random.default_rng(3)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["movie"] = rng.normal(size=(3, 40, 40)).astype(np.float32)
        f["thumbnail"] = rng.normal(size=(40, 40)).astype(np.float32)
    common = dict(model=tiny_model, pixel_size_nm=0.1, frame_interval_s=1.0, device="cpu")
    res = analyze(tmp_path / "two.h5", **common)
    assert res.shape == (3, 40, 40) and res.options["signal"] == "movie"
    assert res.warnings[0] == ("the file holds 2 images ('movie', 'thumbnail') and 'movie' was "
                               "analysed; pick another with signal='thumbnail'")
    res = analyze(tmp_path / "two.h5", signal="thumbnail", **common)
    assert res.shape == (1, 40, 40) and res.options["signal"] == "thumbnail"
    assert not any("holds 2 images" in w for w in res.warnings)  # asked for: no warning
    assert main(["infer", str(tmp_path / "two.h5"), "--out", str(tmp_path / "o"), "--model",
                 str(tiny_model), "--pixel-size", "0.1", "--signal", "1", "--no-movie"]) == 0
    # One folder per signal, named by its title: a second signal does not replace the first.
    summary = json.loads((tmp_path / "o" / "two_thumbnail" / "summary.json").read_text())
    assert summary["options"]["signal"] == "thumbnail"
    assert main(["infer", str(tmp_path / "two.h5"), "--out", str(tmp_path / "o"), "--model",
                 str(tiny_model), "--pixel-size", "0.1", "--signal", "movie", "--no-movie"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["two_movie", "two_thumbnail"]


def test_demo_refuses_a_missing_device_before_rendering(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--device", "gpu"]) == 2
    assert "must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    (tmp_path / "file").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dislotrack demo: error: --out {tmp_path / 'file'} is a file, not a folder"


def test_a_missing_input_among_several_is_refused_before_any_is_analysed(tmp_path, capsys):
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1, frame_interval_s=1.0)
    assert main(["infer", str(movie), str(tmp_path / "nothere.tif"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"dislotrack infer: error: no such file or folder: {tmp_path / 'nothere.tif'}"
    assert not (tmp_path / "o").exists()


def test_analyze_warnings_show_in_python_and_once_in_the_cli(tiny_model, tmp_path, capsys):
    from dislotrack.infer.pipeline import AnalysisWarning

    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((3, 32, 32), np.float32), pixel_size_nm=0.1)  # no interval
    with pytest.warns(AnalysisWarning, match="per-frame units") as caught:
        res = analyze(movie, model=tiny_model, progress=False)
    assert [str(w.message) for w in caught] == [f"m.tif: {w}" for w in res.warnings]  # each once
    assert caught[0].filename == __file__  # pointing at the caller's line
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--no-movie"]) == 0
    out, err = capsys.readouterr()
    assert "per-frame units" not in out and err.count("per-frame units") == 1


def test_relink_reproduces_analyze_and_records_what_it_changed(tmp_path):
    from dislotrack.infer.pipeline import AnalysisWarning

    # The bundled model on a generated movie (with weak peaks that extend track ends).
    m = make_movie(np.random.default_rng(3), GeneratorConfig(size=128, mode="stem", density=3.0,
                                                             dose=(3000, 3000)), n_frames=12)
    res = analyze(m.frames, pixel_size_nm=m.meta["pixel_size"], frame_interval_s=1.0, progress=False)
    assert len(res.track_summary) and res.weak is not None and len(res.weak)
    same = res.relink()
    for table in ("tracks", "track_summary", "events", "counts"):
        pd.testing.assert_frame_equal(getattr(same, table), getattr(res, table))
    assert same.options == res.options and same.warnings == res.warnings
    strict = res.relink(min_length=12)  # only cores found in all 12 frames
    assert len(strict.track_summary) < len(res.track_summary)
    assert strict.options["min_length"] == 12 and res.options["min_length"] != 12
    from dislotrack.infer.outputs import write_tables

    write_tables(strict, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["options"]["min_length"] == 12
    with pytest.raises(TypeError, match="relink takes frame_interval_s, lattice_h, max_speed_nm_s, "
                                        ".*not threshold"):
        res.relink(threshold=0.3)
    with pytest.warns(AnalysisWarning, match="min_length=40 is longer than the 12 frames analysed") as caught:
        res.relink(min_length=40)
    assert caught[0].filename == __file__  # at the caller's line, as analyze's warnings


def test_a_window_of_frames_is_analysed_as_that_part_of_the_movie(tiny_model, tmp_path, capsys):
    from dislotrack.infer.readers import open_movie

    m = make_movie(np.random.default_rng(0), GeneratorConfig(size=64, mode="stem"), n_frames=8)
    path = tmp_path / "m.tif"
    write_imagej_tiff(path, m.frames, pixel_size_nm=m.meta["pixel_size"], frame_interval_s=1.0)
    with open_movie(path) as whole:
        part = whole.window(2, 6)
        assert len(part) == 4 and part.metadata["frames"] == [2, 6]
        np.testing.assert_array_equal(np.stack(list(part)), np.stack([whole[i] for i in range(2, 6)]))
        np.testing.assert_array_equal(part[3], whole[5])
    res = analyze(path, model=tiny_model, frames="2:6", threshold=0.3, progress=False)
    alone = analyze(m.frames[2:6], model=tiny_model, pixel_size_nm=m.meta["pixel_size"],
                    frame_interval_s=1.0, threshold=0.3, progress=False)
    assert res.shape == (4, 64, 64) and res.options["frames"] == "2:6"
    for table in ("detections", "tracks", "track_summary", "events", "counts", "drift", "dipoles"):
        pd.testing.assert_frame_equal(getattr(res, table), getattr(alone, table))
    assert main(["infer", str(path), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--frames", "2:", "--no-movie"]) == 0
    written = json.loads((tmp_path / "o" / "m_frames2-8" / "summary.json").read_text())
    assert written["options"]["frames"] == "2:8" and written["totals"]["frames"] == 6
    capsys.readouterr()
    assert main(["infer", str(path), "--out", str(tmp_path / "o"), "--frames", "6:9"]) == 2
    assert "error: --frames 6:9 is not a window of the movie's 8 frames" in capsys.readouterr().err
    # An empty window is refused before any input is opened, as such.
    for empty in ("30:10", "5:5"):
        assert main(["infer", str(path), "--out", str(tmp_path / "o"), "--frames", empty]) == 2
        assert "holds no frame: START must be below STOP" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^frames='6:9' is not a window of the movie's 8 frames"):
        analyze(path, model=tiny_model, frames=(6, 9), progress=False)
    # A window of the whole movie is the movie: its results, under its own name.
    assert main(["infer", str(path), "--out", str(tmp_path / "w"), "--model", str(tiny_model),
                 "--frames", ":", "--no-movie"]) == 0
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["m"]
    assert json.loads((tmp_path / "w" / "m" / "summary.json").read_text())["options"]["frames"] is None


def test_a_region_is_analysed_as_that_part_of_every_frame(tiny_model, tmp_path, capsys):
    from dislotrack.infer.figures import input_name
    from dislotrack.infer.readers import open_movie

    m = make_movie(np.random.default_rng(0), GeneratorConfig(size=96, mode="stem"), n_frames=6)
    path = tmp_path / "m.tif"
    write_imagej_tiff(path, m.frames, pixel_size_nm=m.meta["pixel_size"], frame_interval_s=1.0)
    with open_movie(path) as whole:
        part = whole.crop(10, 74, 20, 84)
        assert part.shape == (6, 64, 64) and part.metadata["region"] == [10, 74, 20, 84]
        np.testing.assert_array_equal(part[2], whole[2][20:84, 10:74])
        np.testing.assert_array_equal(np.stack(list(part)), m.frames[:, 20:84, 10:74])
        inner = part.crop(5, 15, 0, 10).window(1, 3)  # offsets add up; windows keep the region
        assert inner.metadata["region"] == [15, 25, 20, 30] and inner.metadata["frames"] == [1, 3]
        np.testing.assert_array_equal(inner[0], whole[1][20:30, 15:25])
        with pytest.raises(ValueError, match="not a region of the 64 x 64 px frames"):
            part.crop(0, 65, 0, 10)
        with pytest.raises(ValueError, match="whole numbers"):
            part.crop(0, 10.0, 0, 10)
    res = analyze(path, model=tiny_model, region="10:74,20:84", threshold=0.3, progress=False)
    alone = analyze(m.frames[:, 20:84, 10:74], model=tiny_model, pixel_size_nm=m.meta["pixel_size"],
                    frame_interval_s=1.0, threshold=0.3, progress=False)
    assert res.shape == (6, 64, 64) and res.options["region"] == "10:74,20:84"
    assert input_name(res) == "m.tif (x 10:74, y 20:84)"
    for table in ("detections", "tracks", "track_summary", "events", "counts", "drift", "dipoles"):
        pd.testing.assert_frame_equal(getattr(res, table), getattr(alone, table))
    assert analyze(path, model=tiny_model, region=((None, None), (0, None)),
                   progress=False).options["region"] is None  # the whole frame is no region
    assert main(["infer", str(path), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--region", "10:74,20:", "--frames", "1:", "--no-movie"]) == 0
    written = json.loads((tmp_path / "o" / "m_frames1-6_x10-74_y20-96" / "summary.json").read_text())
    assert written["options"]["region"] == "10:74,20:96" and written["input"]["shape"] == [5, 76, 64]
    assert "m.tif (frames 1:6; x 10:74, y 20:96): " in capsys.readouterr().out  # the part analysed
    for bad, says in (("10:74", "must be X0:X1,Y0:Y1"), ("a:b,1:2", "must be X0:X1,Y0:Y1"),
                      ("74:10,:", "holds no columns: each START must be below its STOP"),
                      (":,5:5", "holds no rows"), ("-5:10,:", "pixels count from 0 (no negative columns)"),
                      ("0:97,:", "not a rectangle of the 96 x 96"),
                      ("0:1,:", "spans under 10 columns: too small"),
                      ("5:14,0:9", "spans under 10 columns and rows")):
        assert main(["infer", str(path), "--out", str(tmp_path / "o"), f"--region={bad}"]) == 2
        assert says in capsys.readouterr().err
    from dislotrack.infer.options import region_box

    assert region_box(":,0:32", (64, 8)) == (0, 8, 0, 32)  # narrow frames: their whole width is fine
    with pytest.raises(ValueError, match=r"^region=\(\(0, 200\), \(0, 10\)\) is not a rectangle"):
        analyze(path, model=tiny_model, region=((0, 200), (0, 10)), progress=False)


def test_a_region_shares_the_whole_frames_calibration_and_is_refused_when_too_small(
        tiny_model, tmp_path):
    m = make_movie(np.random.default_rng(1), GeneratorConfig(size=128, mode="hrtem"), n_frames=2)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, m.frames)  # no calibration: the pixel size is estimated
    whole = analyze(path, model=tiny_model, progress=False).calibration
    assert whole.pixel_size_source == "estimated"
    for region in ("0:40,0:40", "70:128,20:60"):  # estimated on the frames, not the region
        assert analyze(path, model=tiny_model, region=region,
                       progress=False).calibration.pixel_size_nm == whole.pixel_size_nm
    with pytest.raises(ValueError, match=r"the region \(12 x 15 px\) spans under 4 lattice fringes "
                                         r"\(4.7\d px each .* at least 19 px each way"):
        analyze(path, model=tiny_model, region="50:62,30:45", progress=False)
    assert main(["infer", str(path), "--out", str(tmp_path / "small"), "--model", str(tiny_model),
                 "--region", "50:62,30:45"]) == 2
    assert not (tmp_path / "small").exists()  # refused before anything was written
    assert run.infer_one(path, tmp_path / "o", model=tiny_model, region="0:40,0:40", movie=False,
                         progress=False).calibration.pixel_size_nm == whole.pixel_size_nm  # calibrated apart


def test_notebook_inputs_none_float32_overrides_and_parquet_without_pyarrow(tiny_model, tmp_path,
                                                                           monkeypatch):
    with pytest.raises(TypeError, match="analyze takes a path, a Movie or a .* array, got None"):
        analyze(None, model=tiny_model)
    frames = np.zeros((2, 32, 32), np.float32)
    res = analyze(frames, model=tiny_model, pixel_size_nm=np.float32(0.1),
                  frame_interval_s=np.float32(0.5), progress=False)  # e.g. read from an array's dtype
    assert (res.calibration.pixel_size_nm, res.calibration.frame_interval_s) == (0.1, 0.5)
    import importlib.util

    from dislotrack.infer.outputs import write_tables

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name in ("pyarrow", "fastparquet") else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install -e '.\[parquet\]'"):
        write_tables(res, tmp_path / "o", parquet=True)
    assert not (tmp_path / "o").exists()  # refused before writing anything


def test_track_detections_checks_options_and_keeps_its_warnings():
    from dislotrack.infer.pipeline import AnalysisWarning, track_detections

    det = pd.DataFrame({"frame": [0, 1, 2], "x": [50.0, 51, 52], "y": 40.0, "score": 0.9,
                        "hx": 0.0, "hy": -1.0})
    common = {"pixel_size_nm": 0.1, "n_frames": 3, "image_shape": (100, 100)}
    # A short movie warns (velocities from 3 points): kept, and issued once at the caller.
    with pytest.warns(AnalysisWarning, match="3 frames were analysed") as caught:
        out = track_detections(det, frame_interval_s=1.0, **common)
    assert len(out.warnings) == 1 and str(caught[0].message) == out.warnings[0]
    assert caught[0].filename == __file__
    assert repr(out) == "TrackedTables(3 frames, 3 tracked detections, 1 tracks, 0 events, 1 warnings)"
    for bad, said in (({"frame_interval_s": "1"}, "frame_interval_s must be"),
                      ({"frame_interval_s": 1.0, "memory": 2.5}, "memory must be"),
                      ({"frame_interval_s": 1.0, "max_speed_nm_s": -1}, "max_speed_nm_s must be")):
        with pytest.raises((TypeError, ValueError), match=re.escape(said)):
            track_detections(det, **common, **bad)
    with pytest.raises(ValueError, match=r"detections in frame\(s\) 2 outside the movie's 0..1 "):
        track_detections(det, frame_interval_s=1.0, **{**common, "n_frames": 2})


def test_signal_given_for_a_one_image_format_is_reported_as_ignored(tiny_model, tmp_path):
    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1, frame_interval_s=1.0)
    res = analyze(movie, model=tiny_model, signal="HAADF", progress=False)
    said = "signal='HAADF' was ignored: ImageJ TIFF input has no images to choose from"
    assert said in res.warnings
    assert res.options["signal"] is None  # not recorded as if it had picked something
    plain = analyze(movie, model=tiny_model, progress=False)
    assert not any("--signal" in w for w in plain.warnings)


def test_the_notebook_api_is_importable_from_infer_without_slowing_the_command_line():
    import subprocess
    import sys

    code = ("import sys, dislotrack.infer.cli; assert 'torch' not in sys.modules; "
            "from dislotrack.infer import analyze, track_detections, AnalysisWarning; "
            "from dislotrack.infer.pipeline import analyze as a; assert analyze is a")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    import dislotrack.infer

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dislotrack.infer.nothing  # noqa: B018


def test_summary_names_the_input_by_its_absolute_path(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_imagej_tiff(tmp_path / "m.tif", np.zeros((2, 32, 32), np.float32), pixel_size_nm=0.1,
                      frame_interval_s=1.0)
    assert main(["infer", "m.tif", "--out", "o", "--model", str(tiny_model), "--no-movie"]) == 0
    summary = json.loads((tmp_path / "o" / "m" / "summary.json").read_text())
    assert summary["input"]["path"] == str(tmp_path / "m.tif")  # not "m.tif"


def test_infer_opens_each_input_once(tiny_model, tmp_path, monkeypatch):
    """A folder of frames reads every file's header when opened: once, not per stage."""
    import dislotrack.infer.pipeline as pipeline
    import dislotrack.infer.run as run
    from dislotrack.infer.readers import open_movie

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        frame = np.random.default_rng(i).normal(size=(32, 32)).astype(np.float32)
        tifffile.imwrite(frames / f"f{i}.tif", frame)
    opened: list[str] = []

    def counting(path, **kw):
        opened.append(str(path))
        return open_movie(path, **kw)

    monkeypatch.setattr(run, "open_movie", counting)
    monkeypatch.setattr(pipeline, "open_movie", counting)
    res = run.infer_one(frames, tmp_path / "o", model=tiny_model, pixel_size_nm=0.1, device="cpu",
                        progress=False)  # with the overlay MP4
    assert opened == [str(frames)] and res.shape == (3, 32, 32)
    assert (tmp_path / "o" / "frames" / "figures" / "overlay.mp4").stat().st_size > 0
    assert res.input_path == str(frames)  # still the input, not the movie object


def test_infer_estimates_a_missing_pixel_size_once(tiny_model, tmp_path, monkeypatch):
    """The fringe estimate (1.5 s on a 1024² frame) runs once per input, not per stage."""
    import dislotrack.infer.pipeline as pipeline
    import dislotrack.infer.run as run

    y = np.arange(64, dtype=np.float32)[:, None]
    frames = np.broadcast_to(np.cos(2 * np.pi * y / 4.73), (2, 64, 64)).astype(np.float32)
    movie = tmp_path / "fringes.tif"
    tifffile.imwrite(movie, frames)  # no pixel size in the file
    calls: list[int] = []
    estimate = pipeline.pixel_size_from_fringes_or_none

    def counting(*args, **kw):
        calls.append(1)
        return estimate(*args, **kw)

    monkeypatch.setattr(pipeline, "pixel_size_from_fringes_or_none", counting)
    res = run.infer_one(movie, tmp_path / "o", model=tiny_model, movie=False, device="cpu",
                        progress=False)
    assert len(calls) == 1
    assert res.calibration.pixel_size_source == "estimated"
    assert res.calibration.pixel_size_nm == pytest.approx(0.1, rel=0.02)


def test_an_in_memory_stack_is_analysed_as_its_file_would_be(tiny_model, tmp_path):
    from dislotrack.infer.outputs import write_tables

    m = make_movie(np.random.default_rng(3), GeneratorConfig(size=64, mode="hrtem"), n_frames=2)
    image = m.frames[0].astype(np.float32)  # a (y, x) image: the untrained network fires often
    kw = dict(model=tiny_model, pixel_size_nm=0.1, threshold=0.01, progress=False)
    res = analyze(image, **kw)
    path = tmp_path / "m.tif"
    write_imagej_tiff(path, image[None], pixel_size_nm=0.1)
    from_file = analyze(path, **kw)
    assert len(res.detections) > 0
    pd.testing.assert_frame_equal(res.detections, from_file.detections)
    assert res.input_path == "<array>" and len(res.input_sha256) == 64
    from dislotrack.infer.readers import movie_from_array

    sha = lambda a: movie_from_array(a).metadata["sha256"]  # noqa: E731
    assert sha(image) == res.input_sha256 == sha(np.asfortranarray(image))  # values, not layout
    assert sha(image.reshape(32, 128)) != sha(image) != sha(image + 1)
    stack = m.frames.astype(np.float32)
    two = analyze(stack, model=tiny_model, pixel_size_nm=0.1, frame_interval_s=0.5, progress=False)
    assert two.shape == (2, 64, 64) and two.calibration.frame_interval_s == 0.5
    assert two.input_sha256 != res.input_sha256
    assert "<array>" in repr(res) and len(repr(res)) < 300  # not the model card and frame 0
    assert "pixel_size_nm=0.1 (user)" in repr(res)  # 4 digits at most, and where it came from
    written = write_tables(res, str(tmp_path / "out"))  # a str is fine
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["input"]["path"] == "<array>"
    assert all(p.is_file() for p in written)
    with pytest.raises(ValueError, match=r"array of shape \(2, 3, 4, 5\) is not an image"):
        analyze(np.zeros((2, 3, 4, 5)), **kw)


def test_blank_and_saturated_frames_are_named_and_report_no_rock_salt(tiny_model):
    frames = np.random.default_rng(4).normal(100, 10, (6, 64, 64)).astype(np.float32)
    frames[2] = 0.0  # blank
    frames[4] = 4095.0  # saturated
    res = analyze(frames, model=tiny_model, pixel_size_nm=0.1, frame_interval_s=1.0,
                  threshold=0.01, progress=False)  # a tiny model's low threshold finds cores
    assert set(res.detections.frame) - {2, 4} and not set(res.detections.frame) & {2, 4}
    fractions = res.counts.set_index("frame").rocksalt_fraction
    assert fractions[[2, 4]].isna().all() and fractions[[0, 1, 3, 5]].notna().all()
    said = "2 of 6 frames are blank or saturated (one value nearly throughout): frames 2, 4; "
    assert said in " ".join(res.warnings)
    said = [w for w in res.warnings if "no correlation peak" in w]
    assert said and said[0].startswith("2 of the 5 frames after the first had no correlation peak "
                                       "(blank?): frames 2, 4;")


def test_summary_json_lists_the_moving_tracks_the_figure_draws(tiny_model, tmp_path):
    from dislotrack.infer.outputs import summary_dict
    from dislotrack.infer.pipeline import track_detections

    # Track 0 glides 0.1 nm per frame; track 1 rests: the mean of both means neither.
    moving = pd.DataFrame({"frame": range(10), "x": np.linspace(20, 29, 10), "y": 20.0})
    resting = pd.DataFrame({"frame": range(10), "x": 70.0, "y": 70.0 + 0.01 * np.arange(10)})
    det = pd.concat([moving, resting]).assign(score=0.9, hx=0.0, hy=-1.0)
    t = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=10,
                         image_shape=(100, 100), min_length=3)
    res = analyze(np.zeros((2, 32, 32), np.float32), model=tiny_model, pixel_size_nm=0.1,
                  frame_interval_s=1.0, progress=False)
    res.track_summary = t.track_summary
    glide = summary_dict(res)["velocities"]["glide"]
    assert glide["n_tracks"] == 2 and glide["mean"] == pytest.approx(-0.05, abs=0.002)
    assert glide["sd"] == pytest.approx(np.std([-0.1, 0.0], ddof=1), abs=0.002)  # sample SD
    assert list(glide["moving"]) == ["0"] and glide["moving"]["0"] == pytest.approx(-0.1, abs=1e-3)
    assert summary_dict(res)["totals"]["dipoles"] == 0
    # Two opposite-h cores born together 1 nm apart: one dipole (two tracks), counted once.
    pair = pd.concat([moving.assign(y=50.0, hy=-1.0), moving.assign(y=60.0, hy=1.0)])
    pair = pair.assign(frame=pair.frame + 2, score=0.9, hx=0.0)
    t = track_detections(pair, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=12,
                         image_shape=(100, 100), min_length=3)
    res.track_summary = t.track_summary
    assert t.track_summary.kind.tolist() == ["dipole", "dipole"]
    assert summary_dict(res)["totals"]["dipoles"] == 1


def test_results_of_another_input_of_the_same_name_are_not_replaced_silently(tiny_model, tmp_path):
    frames = np.zeros((2, 32, 32), np.float32)
    write_imagej_tiff(tmp_path / "x.tif", frames, pixel_size_nm=0.1, frame_interval_s=1.0)
    np.save(tmp_path / "x.npy", frames)
    kw = dict(model=tiny_model, movie=False, progress=False, pixel_size_nm=0.1, frame_interval_s=1.0)
    first = run.infer_one(tmp_path / "x.tif", tmp_path / "o", **kw)
    again = run.infer_one(tmp_path / "x.tif", tmp_path / "o", **kw)  # a rerun: nothing to say
    assert not any("replaced" in w for w in first.warnings + again.warnings)
    with pytest.warns(AnalysisWarning) as caught:
        other = run.infer_one(tmp_path / "x.npy", tmp_path / "o", **kw)
    said = f"replaced the results of {tmp_path / 'x.tif'} in {tmp_path / 'o' / 'x'}"
    assert any(said in w for w in other.warnings)
    # Issued in notebooks too, once each and at the caller's line (not infer_one's).
    issued = [str(w.message) for w in caught if issubclass(w.category, AnalysisWarning)]
    assert sum(said in m for m in issued) == 1 and len(issued) == len(set(issued))
    assert {w.filename for w in caught if issubclass(w.category, AnalysisWarning)} == {__file__}
    assert any(said in w for w in json.loads((tmp_path / "o" / "x" / "summary.json").read_text())["warnings"])
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "x.npy").rename(moved / "x.npy")  # the same file elsewhere: a rerun
    assert not any("replaced" in w for w in run.infer_one(moved / "x.npy", tmp_path / "o", **kw).warnings)


def test_importing_the_figures_leaves_the_users_matplotlib_backend_alone(monkeypatch):
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('pdf'); import dislotrack.infer.figures, "
            "dislotrack.infer.strain; assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("MPLBACKEND", "pdf")  # restored after the test, as is its absence
    monkeypatch.delenv("MPLBACKEND")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __import__("os").environ["MPLBACKEND"] == "Agg"  # the command line draws off-screen


def test_summary_json_says_what_a_fine_tuned_model_learnt_from(tiny_model):
    from dislotrack.infer.outputs import summary_dict

    res = analyze(np.zeros((1, 32, 32), np.float32), model=tiny_model, pixel_size_nm=0.1, progress=False)
    assert summary_dict(res)["model"]["finetuned_on"] is None  # trained on synthetic data only
    res.model_card["training"] = {"finetune": {"data": "/lab/ann", "split": "items",
                                               "val_items": ["/lab/ann/b.json"], "epochs": 20}}
    assert summary_dict(res)["model"]["finetuned_on"] == {"data": "/lab/ann", "split": "items",
                                                          "val_items": ["/lab/ann/b.json"],
                                                          "train_items": None,
                                                          "train_items_sha256": None}


def test_a_mistyped_option_names_the_nearest_one(capsys):
    for argv, hint in ((["infer", "m.tif", "--out", "o", "--pixelsize", "0.1"], "--pixel-size"),
                       (["generate", "--out", "g", "--n", "1", "--sizee", "3"], "--size")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"dislotrack {argv[0]}: error: unrecognized arguments: {argv[-2]} {argv[-1]}")
        assert f"(did you mean {hint}?)" in err


def test_a_finer_model_registers_drift_on_the_input_frames_and_says_it_upsamples(tmp_path):
    """`fine` (0.05 nm/px) on a 0.1 nm/px movie: upsampled frames blur the in-layer
    fringes, and the drift across the (003) ones was lost (dx 0 instead of -5.3 px)."""
    from dislotrack.data_gen.export import generate_dataset

    generate_dataset(out=tmp_path, n=1, size=256, mode="stem", seed=4, progress=False,
                     movie_frames=12, dose=(1000, 1000), frame_interval=1.0)
    res = analyze(tmp_path / "movie_00000.tif", model="fine", progress=False)
    true = pd.read_csv(tmp_path / "movie_00000_drift.csv").set_index("frame")
    got = res.drift.set_index("frame")
    assert np.abs(got[["dx", "dy"]] - true[["dx", "dy"]]).to_numpy().max() < 1.0  # input px
    assert abs(true.dx.iloc[-1]) > 5  # a drift to lose
    assert any("frames are upsampled 2x, which adds no detail" in w for w in res.warnings)
    assert not any("cannot be seen" in w for w in res.warnings)


def test_track_detections_reproduces_analyze_from_its_in_memory_detections(tmp_path):
    from dislotrack.data_gen.export import generate_dataset
    from dislotrack.infer.outputs import write_tables
    from dislotrack.infer.pipeline import track_detections

    generate_dataset(out=tmp_path, n=1, size=128, mode="stem", seed=1, progress=False,
                     movie_frames=10, dose=(3000, 3000), rocksalt_probability=1.0)
    res = analyze(tmp_path / "movie_00000.tif", progress=False, weak_fraction=1.0)  # no weak peaks
    assert res.detections.in_rocksalt.any()  # in memory, for track_detections ...
    write_tables(res, tmp_path / "out")
    assert "in_rocksalt" not in pd.read_csv(tmp_path / "out" / "detections.csv").columns  # ... not the CSV
    kw = dict(pixel_size_nm=res.calibration.pixel_size_nm, frame_interval_s=res.calibration.frame_interval_s,
              n_frames=res.shape[0], image_shape=res.shape[1:], drift=res.drift,
              lattice=res.lattice if res.lattice_h else None, rocksalt_fraction=res.rocksalt_fraction)
    again = track_detections(res.detections, **kw)
    pd.testing.assert_frame_equal(again.track_summary, res.track_summary)
    pd.testing.assert_frame_equal(again.events, res.events)
    # Without the flags a core vanishing into rock salt would read as an annihilation.
    assert len(track_detections(res.detections.drop(columns="in_rocksalt"), **kw).events) > len(res.events)


@pytest.mark.parametrize("recorded, hinted", [(0.2, True), (0.05, True), (0.01, True),
                                              (0.1, False), (0.12, False)])
def test_a_binning_or_unit_slip_in_the_calibration_is_named(recorded, hinted):
    from dislotrack.infer.calibration import Calibration
    from dislotrack.infer.pipeline import slipped_calibration_hint

    # A layered lattice at 0.1 nm/px whose file says otherwise.
    cfg = GeneratorConfig(size=160, mode="stem", dose=(5000, 5000), perfect_fraction=1.0, realism=0.0)
    image = make_sample(np.random.default_rng(5), cfg).image
    said = slipped_calibration_hint(image, Calibration.from_file(pixel_size_nm=recorded), 0.473)
    if hinted:  # the (003) fringes, 4.73 px apart, give 0.1 nm/px
        period, est, ratio = re.search(r"repeat every ([\d.]+) px, .* fringes at ([\d.]+) nm/px, "
                                       r"([\d.]+) times the file's", said).groups()
        assert float(period) == pytest.approx(4.73, rel=0.02)  # the (003) spacing
        assert float(est) == pytest.approx(0.1, rel=0.02)
        assert float(ratio) == pytest.approx(0.1 / recorded, rel=0.03)
        assert said.endswith(f"the file's {recorded:g}: if the calibration is off (binning? units?), "
                             f"pass pixel_size_nm={est}")
    else:  # right, or off by no typical factor (e.g. another material's fringes)
        assert said == ""
    estimated = Calibration(pixel_size_nm=0.2, pixel_size_source="estimated")
    assert slipped_calibration_hint(image, estimated, 0.473) == ""  # already from the fringes


def test_rock_salt_without_any_layered_fringes_is_called_doubtful(monkeypatch):
    # Rock salt is told from the layered lattice by the (003) fringes: where none show, the
    # mask may be another material's (a perovskite gave 4 % "rock salt").
    from dislotrack.infer import pipeline
    from dislotrack.infer.detectors import CORE_COLUMNS

    class HalfRockSalt:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, raw, canonical):
            rs = np.zeros(raw[0].shape, bool)
            rs[:, : raw[0].shape[1] // 2] = True
            return [(pd.DataFrame(columns=CORE_COLUMNS, dtype=float), rs) for _ in raw]

    monkeypatch.setattr(pipeline, "NetworkDetector", HalfRockSalt)
    noise = np.random.default_rng(2).normal(size=(1, 128, 128)).astype(np.float32)
    res = analyze(noise, pixel_size_nm=0.1, progress=False)
    (said,) = [w for w in res.warnings if "lattice fringes stand out" in w]
    assert "none could be found here; the rock salt reported (up to 50 % of a frame) is doubtful" in said


def test_track_detections_refuses_frames_before_0_and_an_empty_movie():
    from dislotrack.infer.pipeline import track_detections

    det = pd.DataFrame({"frame": [-1, 0, 1], "x": [50.0, 51, 52], "y": 40.0, "score": 0.9,
                        "hx": 0.0, "hy": -1.0})
    kw = dict(pixel_size_nm=0.1, frame_interval_s=1.0, image_shape=(100, 100))
    with pytest.raises(ValueError, match=r"detections in frame\(s\) -1 outside the movie's 0..2"):
        track_detections(det, n_frames=3, **kw)
    with pytest.raises(ValueError, match=r"n_frames must be an int >= 1 \(the frames of the movie\), got 0"):
        track_detections(det.iloc[:0], n_frames=0, **kw)


def test_track_detections_refuses_values_that_would_give_wrong_tables_silently():
    from dislotrack.infer.pipeline import track_detections

    f = np.arange(5, 15)
    det = pd.DataFrame({"frame": f, "x": 250.0 + f, "y": 50.0, "score": 0.9, "hx": 0.0, "hy": -1.0})
    kw = dict(pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=20, min_length=3)
    # Nucleated and annihilated inside a 300 px wide frame; a swapped shape is refused.
    out = track_detections(det, image_shape=np.array([100, 300]), **kw)  # any (ny, nx) pair
    assert out.track_summary[["birth", "death"]].values.tolist() == [["nucleated", "annihilated"]]
    with pytest.raises(ValueError, match=r"10 of 10 rows lie outside frames of image_shape "
                                         r"\(ny, nx\) = \(300, 100\) px .*is the shape \(ny, nx\)\?"):
        track_detections(det, image_shape=(300, 100), **kw)
    shape = dict(image_shape=(100, 300))
    for bad, said in ((det.assign(hx=0.0, hy=0.0), "10 of 10 rows have h = (0, 0)"),
                      (det.assign(x=det.x.where(det.frame != 7)),
                       "1 of 10 rows have a x that is not a finite"),
                      (det.assign(frame=det.frame * 0.5), "rows have a frame that is not a whole number"),
                      (det.assign(frame=det.frame.astype(str) + "a"), "have a frame that is not a finite"),
                      (det.assign(in_rocksalt="False"),
                       "in_rocksalt must be boolean (True/False) throughout, got dtype ")):
        with pytest.raises(ValueError, match=re.escape(said)):
            track_detections(bad, **shape, **kw)
    with pytest.raises(TypeError, match="lattice must be a Lattice .* got str"):
        track_detections(det, lattice="abc", **shape, **kw)
    with pytest.raises(ValueError, match="in_rocksalt must be boolean .* with missing values"):
        track_detections(det.assign(in_rocksalt=pd.array([True] + [None] * 9, dtype="boolean")),
                         **shape, **kw)
    # Pixel-corner clicks up to the frame's width pass; an empty table's flags of any type too.
    track_detections(det.assign(x=299.6 + f / 100), **shape, **kw)  # beyond the last centre
    track_detections(det.iloc[:0].assign(in_rocksalt=pd.Series(dtype=object)), **shape, **kw)


def test_warnings_before_a_failure_are_printed_once(monkeypatch, capsys):
    # No result carries them: without logging configured they are printed (Python's last
    # resort); with it, its handlers saw each once already and do not see it again.
    from dislotrack.infer import tracking

    def fails(*args, **kwargs):
        raise RuntimeError("linking failed")

    monkeypatch.setattr(tracking, "link_cores", fails)
    det = pd.DataFrame({"frame": [0, 1, 2], "x": [50.0, 51, 52], "y": 40.0, "score": 0.9,
                        "hx": 0.0, "hy": -1.0})
    kw = dict(n_frames=3, pixel_size_nm=0.1, frame_interval_s=None, image_shape=(100, 100),
              max_speed_nm_s=5.0, min_length=3)
    monkeypatch.setattr(logging.root, "handlers", [])
    with pytest.raises(RuntimeError):
        tracking.track_detections(det, **kw)
    assert capsys.readouterr().err.count("max_speed_nm_s=5 nm/s was applied") == 1
    seen: list[str] = []

    class Listing(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    monkeypatch.setattr(logging.root, "handlers", [Listing()])
    with pytest.raises(RuntimeError):
        tracking.track_detections(det, **kw)
    assert sum("was applied" in m for m in seen) == 1
    assert "was applied" not in capsys.readouterr().err


def test_frame_windows_must_hold_frames_of_the_movie():
    from dislotrack.infer.options import frame_window
    from dislotrack.infer.readers import movie_from_array

    with pytest.raises(ValueError, match=r"^frames='3:3' holds no frame"):
        frame_window("3:3", 8)
    with pytest.raises(ValueError, match=r"^frames must be START:STOP .*e.g. frames='100:250'.*or a pair"):
        frame_window((True, 3), 8)  # a bool is no frame number
    with pytest.raises(ValueError, match=r"takes frame numbers from 0"):
        frame_window("-2:3", 8)
    with pytest.raises(ValueError, match="is not a window of the 8 frames"):
        movie_from_array(np.zeros((8, 16, 16), np.float32)).window(2, 9)
    # An open end, as "3:" is on the command line.
    assert len(movie_from_array(np.zeros((8, 16, 16), np.float32)).window(3, None)) == 5
    assert len(movie_from_array(np.zeros((8, 16, 16), np.float32)).window(None, 2)) == 2


def test_relink_keeps_the_options_analyze_used_and_drops_warnings_it_no_longer_has():
    m = make_movie(np.random.default_rng(3), GeneratorConfig(size=128, mode="stem", density=3.0,
                                                             dose=(3000, 3000)), n_frames=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        res = analyze(m.frames, pixel_size_nm=m.meta["pixel_size"], frame_interval_s=1.0,
                      progress=False, min_length=12, lattice_h=False)
        same = res.relink()  # the options analyze was given, not the defaults
        for table in ("tracks", "track_summary", "events", "counts"):
            pd.testing.assert_frame_equal(getattr(same, table), getattr(res, table))
        # Snapping h to the lattice acts after the detector: relink does as analyze does.
        snapped = analyze(m.frames, pixel_size_nm=m.meta["pixel_size"], frame_interval_s=1.0,
                          progress=False, min_length=12, lattice_h=True)
        via = res.relink(lattice_h=True)
        assert via.lattice_h == snapped.lattice_h and via.options["lattice_h"] is True
        for table in ("tracks", "track_summary", "events", "counts"):
            pd.testing.assert_frame_equal(getattr(via, table), getattr(snapped, table))
        short = analyze(m.frames[:4], pixel_size_nm=m.meta["pixel_size"], frame_interval_s=1.0,
                        progress=False, min_length=40)
        assert any("frames analysed: used" in w for w in short.warnings)
        fits = short.relink(min_length=2)
    assert not any("frames analysed: used" in w for w in fits.warnings)


def test_track_detections_drops_a_nucleation_it_did_not_see():
    # A dipole's unresolved blob from frame 0 on: its nucleation is not in the movie.
    from test_events import DOWN, N_FRAMES, PIXEL_NM, UP, _blob, _track

    from dislotrack.infer.pipeline import track_detections

    det = pd.concat([_track(0, range(3, 17), 100.0, 100.0, DOWN),
                     _track(1, range(3, 17), 110.0, 100.0, UP)])
    det = det[["frame", "x", "y", "hx", "hy"]].assign(score=0.9)
    out = track_detections(det, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, n_frames=N_FRAMES,
                           image_shape=(200, 300), weak=_blob([0, 1, 2], 105.0, 100.0))
    assert out.events.kind.tolist() == ["dipole_annihilation"]
    assert set(out.track_summary.birth) == {"present"}


def test_every_option_a_message_names_is_a_flag_of_dislotrack_infer():
    # `option` derives a flag from the keyword; a keyword without that flag (e.g.
    # lattice_h, whose flag is --network-h) would send users to an option that is not there.
    import dislotrack.infer as infer_package
    from dislotrack.infer.cli import build_parser
    from dislotrack.infer.interface import option

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {o for action in sub.choices["infer"]._actions for o in action.option_strings}
    source = "".join(p.read_text() for p in Path(infer_package.__path__[0]).glob("*.py"))
    names = set(re.findall(r"""option\(["']([a-z_]+)["']""", source))
    assert {"pixel_size_nm", "frames", "min_length", "detector", "out"} <= names
    with command_line():
        assert {n: option(n) for n in names if option(n) not in flags} == {}


def test_frames_too_small_for_a_core_are_not_given_to_the_network(monkeypatch, tmp_path):
    from dislotrack.infer import pipeline

    class Refuses:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, raw, canonical):
            raise AssertionError("the network ran on frames that cannot show a core")

    monkeypatch.setattr(pipeline, "NetworkDetector", Refuses)
    frames = np.random.default_rng(1).normal(size=(4, 16, 16)).astype(np.float32)
    res = analyze(frames, pixel_size_nm=0.1, frame_interval_s=1.0, progress=False)
    assert res.detections.empty and res.counts.rocksalt_fraction.isna().all()


def test_result_line_titles_and_wording_follow_the_input(tmp_path, capsys, tiny_model):
    from dislotrack.infer import figures
    from dislotrack.infer.cli import main

    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    assert main(["infer", str(movie), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--no-movie", "--threshold", "0.99"]) == 0
    assert f"{movie}: 0 detections, 0 tracks, 0 events" in capsys.readouterr().out
    res = analyze(movie, model=tiny_model, frames="1:5", progress=False)
    assert figures.input_name(res) == "m.tif (frames 1:5)"
    one = analyze(np.zeros((1, 64, 64), np.float32) + np.arange(64.0) % 5, pixel_size_nm=0.1,
                  model=tiny_model, progress=False)
    title = figures.trajectories_figure(one).axes[0].get_title()
    assert title.endswith(": cores")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        noise = np.random.default_rng(i).random((32, 32)) * 255
        imageio.v3.imwrite(folder / f"f{i}.png", noise.astype(np.uint8))
    with pytest.raises(ValueError, match="no usable pixel size in the frames"):
        analyze(folder, model=tiny_model, progress=False)


def test_relink_takes_the_frame_interval_a_file_lacked():
    # A frame interval changes no detection: relink gives what analyze with it gives.
    m = make_movie(np.random.default_rng(3), GeneratorConfig(size=128, mode="stem", density=3.0,
                                                             dose=(3000, 3000)), n_frames=12)
    # (At 1 s per frame the default speed limit gives the 2 nm per frame that no interval
    # gives, so analyze finds the same stage jumps: relink keeps analyze's drift.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        per_frame = analyze(m.frames, pixel_size_nm=0.1, progress=False)
        assert [w for w in per_frame.warnings if w.startswith("no frame interval")]
        timed = per_frame.relink(frame_interval_s=1.0)
        direct = analyze(m.frames, pixel_size_nm=0.1, frame_interval_s=1.0, progress=False)
    for table in ("tracks", "track_summary", "events", "counts"):
        pd.testing.assert_frame_equal(getattr(timed, table), getattr(direct, table))
    assert "glide_velocity_nm_s" in timed.track_summary and "t_s" in timed.events
    assert (timed.calibration.frame_interval_s, timed.calibration.frame_interval_source) == (1.0, "user")
    assert timed.warnings == direct.warnings == []
    assert timed.options["frame_interval_s"] == 1.0
    with pytest.raises(ValueError, match="frame_interval_s must be a positive time"):
        per_frame.relink(frame_interval_s=-1.0)
    with pytest.raises(TypeError, match="relink takes frame_interval_s, lattice_h, max_speed_nm_s"):
        per_frame.relink(pixel_size_nm=0.2)


def test_notebook_mistakes_are_named_with_the_nearest_keyword(tmp_path):
    from dislotrack.infer.outputs import write_tables
    from dislotrack.infer.pipeline import track_detections
    from dislotrack.infer.run import infer_one

    frames = np.zeros((3, 32, 32), np.float32)
    with pytest.raises(TypeError, match=r"analyze\(\) got unexpected keyword\(s\) pixel_size "
                                        r"\(did you mean pixel_size_nm\?\)"):
        analyze(frames, pixel_size=0.1)
    with pytest.raises(TypeError, match=r"infer_one\(\) got unexpected keyword\(s\) frame_interval "
                                        r"\(did you mean frame_interval_s\?\)"):
        infer_one(tmp_path / "m.tif", tmp_path / "o", frame_interval=1.0)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match=r"out='.*file' is a file; give a folder"):
        infer_one(tmp_path / "m.tif", tmp_path / "file")
    for bad, said in (({"min_track_score": 2}, "min_track_score must be a core score in"),
                      ({"border_nm": -1}, "border_nm must be a distance >= 0"),
                      ({"batch_size": 0}, "batch_size must be a whole number of frames >= 1"),
                      ({"min_length": 3.5}, "min_length must be a whole number of frames, got 3.5")):
        with pytest.raises((TypeError, ValueError), match=said):
            analyze(frames, pixel_size_nm=0.1, **bad)
    det = pd.DataFrame({"frame": [0, 1, 2], "x": [10.0, 11, 12], "y": 10.0, "score": 0.9,
                        "hx": 0.0, "hy": -1.0})
    with pytest.raises(ValueError, match=r"image_shape must be the frames' \(ny, nx\) \[px\], got 32"):
        track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=3, image_shape=32)
    tables = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=3,
                              image_shape=(32, 32), min_length=2)
    with pytest.raises(TypeError, match="write_tables takes an AnalysisResult .* got TrackedTables"):
        write_tables(tables, tmp_path / "t")
    res = analyze(frames, pixel_size_nm=0.1, detector="GPA", progress=False)  # any case
    assert res.options["detector"] == "gpa"


def test_detections_without_any_track_are_explained():
    from dislotrack.infer.pipeline import collected_warnings, track_detections

    rng = np.random.default_rng(0)  # a core here and there, never twice in one place
    det = pd.DataFrame({"frame": np.arange(8), "x": rng.uniform(10, 90, 8), "y": rng.uniform(10, 90, 8),
                        "score": 0.9, "hx": 0.0, "hy": -1.0})
    with collected_warnings() as logged:
        out = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=8,
                               image_shape=(100, 100))
    assert out.track_summary.empty
    assert logged == ["8 detections but no track: no core was linked over 6 frames (min_length=6); "
                      "flickering false cores (tta=2 averages two views and drops many) or cores "
                      "moving faster than max_speed_nm_s allows give this"]
    # A core in every frame whose track's mean score is under min_track_score: said so; and
    # without a frame interval the speed limit applies at an assumed 1 s per frame.
    steady = det.assign(x=50.0, y=50.0, score=0.5)
    with collected_warnings() as logged:
        track_detections(steady, pixel_size_nm=0.1, frame_interval_s=None, n_frames=8,
                         image_shape=(100, 100), min_track_score=0.9)
    (said,) = [w for w in logged if "no track" in w]
    assert said.endswith("flickering false cores (tta=2 averages two views and drops many) or "
                         "cores moving faster than max_speed_nm_s allows at an assumed 1 s per frame "
                         "or tracks of a mean score under min_track_score=0.9 give this")


def test_the_notebook_api_imports_from_the_package_without_torch():
    import subprocess
    import sys

    code = ("import sys, dislotrack.infer as api; assert 'torch' not in sys.modules; "
            "from dislotrack.infer import analyze, infer_one, track_detections, write_tables; "
            "print(sorted(api.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "'infer_one'" in done.stdout and "'write_tables'" in done.stdout


def test_relink_finds_stage_jumps_anew_where_the_search_range_changes():
    # A 0.8 nm stage jump at frame 6: beyond half the 0.75 nm search range of 0.1 s per
    # frame (and the 0.6 nm scatter), within half the 2 nm per frame without an interval.
    m = make_movie(np.random.default_rng(5), GeneratorConfig(size=160, mode="stem", density=3.0,
                                                             dose=(3000, 3000)), n_frames=12)
    frames = m.frames.copy()
    frames[6:] = np.roll(frames[6:], 8, axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        per_frame = analyze(frames, pixel_size_nm=0.1, progress=False)
        direct = analyze(frames, pixel_size_nm=0.1, frame_interval_s=0.1, progress=False)
        timed = per_frame.relink(frame_interval_s=0.1)
        back = timed.relink(max_speed_nm_s=20.0)  # 2 nm per 0.1 s frame again: no jump
    jumped = [w for w in direct.warnings if w.startswith("the whole field jumped")]
    assert len(jumped) == 1 and "frame 6:" in jumped[0]
    assert not any(w.startswith("the whole field jumped") for w in per_frame.warnings)
    for table in ("drift", "tracks", "track_summary", "events", "counts"):
        pd.testing.assert_frame_equal(getattr(timed, table), getattr(direct, table))
    assert sorted(timed.warnings) == sorted(direct.warnings)
    pd.testing.assert_frame_equal(back.drift[["dx", "dy"]], per_frame.drift[["dx", "dy"]])
    assert not any(w.startswith("the whole field jumped") for w in back.warnings)


def test_an_array_with_a_signal_says_it_is_ignored_and_figures_make_their_folder(tiny_model, tmp_path):
    from dislotrack.infer import figures

    frames = np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32)
    with pytest.warns(AnalysisWarning, match=r"<array>: signal='HAADF' was ignored: an array holds "
                                             r"one image stack"):
        res = analyze(frames, pixel_size_nm=0.1, signal="HAADF", model=tiny_model, progress=False)
    assert res.options["signal"] is None
    figures.trajectories(res, tmp_path / "new" / "t.png")  # as write_tables, the folder is made
    assert (tmp_path / "new" / "t.png").stat().st_size > 0


def test_two_runs_into_one_folder_do_not_mix_and_killed_runs_leave_nothing(tiny_model, tmp_path):
    import subprocess
    import sys

    from dislotrack.infer import run

    movie = tmp_path / "m.tif"
    write_imagej_tiff(movie, np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    out = tmp_path / "o"
    out.mkdir()
    for stale in (".m.running", ".m.running-999999999"):  # killed runs (an old name, a dead pid)
        (out / stale / "figures").mkdir(parents=True)
    kw = dict(model=tiny_model, movie=False, progress=False)
    run.infer_one(movie, out, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["m"]
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process writing the same results: refused, not mixed
        (out / f".m.running-{busy.pid}").mkdir()
        with pytest.raises(ValueError, match=f"another dislotrack run \\(process {busy.pid}\\) is "
                                             f"writing .*o/m: wait for it"):
            run.infer_one(movie, out, **kw)
    finally:
        busy.kill()
        busy.wait()
    run.infer_one(movie, out, **kw)  # once it has gone, its folder is cleared
    assert sorted(p.name for p in out.iterdir()) == ["m"]
    # A run on another machine (a shared folder) cannot be checked: refused, naming its folder.
    (out / ".m.running-othernode-12").mkdir()
    with pytest.raises(ValueError, match=r"\(process 12 on othernode\) is writing .* or, if that run "
                                         r"has ended, remove .*\.m\.running-othernode-12$"):
        run.infer_one(movie, out, **kw)


@pytest.mark.parametrize(("stop", "status", "said"), [
    ("ctrl-c", 130, "interrupted (Ctrl-C)"), ("sigterm", 143, "stopped by SIGTERM")])
def test_infer_stopped_midway_says_what_was_finished_in_one_line(tmp_path, capsys, monkeypatch,
                                                                 stop, status, said):
    import os
    import signal

    from dislotrack.infer import run

    inputs = [tmp_path / "bad.npy"]
    inputs[0].write_text("not an array")  # fails first: counted apart from those written
    for name in ("a", "b"):
        inputs.append(tmp_path / f"{name}.npy")
        np.save(inputs[-1], np.zeros((2, 32, 32), np.float32))
    real = run.infer_one

    def stopped_on_b(path, out, **kw):
        if Path(path).stem == "b":
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, as mid-analysis
        return real(path, out, **kw)

    monkeypatch.setattr(run, "infer_one", stopped_on_b)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["infer", *map(str, inputs), "--out", str(tmp_path / "o"), "--pixel-size", "0.1",
                 "--detector", "gpa", "--no-movie"]) == status
    err = capsys.readouterr().err
    assert f"dislotrack infer: {said} while analysing {inputs[2]}: its results folder is as it was " \
           "before (nothing half-written); 1 of 3 inputs were finished and written, 1 failed" in err
    assert "Traceback" not in err and (tmp_path / "o" / "a" / "summary.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the caller's again


def test_a_frames_window_leaves_a_single_image_among_movies_whole(tiny_model, tmp_path, capsys):
    movie, image = tmp_path / "movie.npy", tmp_path / "image.npy"
    np.save(movie, np.zeros((12, 32, 32), np.float32))
    np.save(image, np.zeros((32, 32), np.float32))
    assert main(["infer", str(movie), str(image), "--out", str(tmp_path / "o"), "--frames", "2:10",
                 "--model", str(tiny_model), "--pixel-size", "0.1", "--no-movie"]) == 0
    said = "--frames 2:10 does not apply to a single image: ignored"
    assert said in capsys.readouterr().err
    assert said in json.loads((tmp_path / "o" / "image" / "summary.json").read_text())["warnings"]
    assert (tmp_path / "o" / "movie_frames2-10" / "summary.json").is_file()


def test_a_frame_interval_for_a_single_image_is_ignored_and_said_so(tiny_model, tmp_path, capsys):
    # It was taken silently and recorded as the user's frame interval of a single image.
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((32, 32), np.float32))
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--frame-interval", "2",
                 "--model", str(tiny_model), "--pixel-size", "0.1", "--no-movie"]) == 0
    said = "--frame-interval 2.0 does not apply to a single image: ignored"
    assert said in capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "image" / "summary.json").read_text())
    assert said in summary["warnings"]
    assert summary["calibration"]["frame_interval_s"] is None
    assert summary["calibration"]["frame_interval_source"] is None


def test_mask_writer_takes_frames_in_any_order_and_leaves_one_compressed_stack(tmp_path):
    masks = np.zeros((5, 96, 80), np.uint8)
    for k in range(5):
        masks[k, 10:40, 5 + 10 * k:30 + 10 * k] = 1  # a domain moving right
    writer = MaskWriter(tmp_path / "rocksalt_mask.tif", shape=masks.shape, pixel_size_nm=0.05,
                        frame_interval_s=2.0)
    for k in (3, 0, 4, 1, 2):
        writer(k, masks[k])
    writer.close()
    writer.close()  # a second close does nothing
    assert [p.name for p in tmp_path.iterdir()] == ["rocksalt_mask.tif"]
    with tifffile.TiffFile(tmp_path / "rocksalt_mask.tif") as t:
        np.testing.assert_array_equal(t.asarray(), masks)
        assert t.is_imagej and t.imagej_metadata["finterval"] == 2.0
        assert t.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        x_res = t.pages[0].tags["XResolution"].value
        assert x_res[1] / x_res[0] == pytest.approx(0.05)
    assert (tmp_path / "rocksalt_mask.tif").stat().st_size < masks.nbytes / 4
    # A video that yields fewer frames than its header said: the stack ends where the
    # frames did (no empty masks for frames never read).
    short = MaskWriter(tmp_path / "short.tif", shape=masks.shape, pixel_size_nm=0.05, frame_interval_s=2.0)
    for k in range(3):
        short(k, masks[k])
    short.close()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "short.tif"), masks[:3])



@pytest.mark.parametrize("shape", [(3, 16, 1), (3, 1, 1), (3, 1, 16), (2, 5, 6)])
def test_mask_writer_writes_frames_of_any_size(tmp_path, shape):
    masks = (np.arange(np.prod(shape)).reshape(shape) % 3 == 0).astype(np.uint8)
    writer = MaskWriter(tmp_path / "m.tif", shape=shape, pixel_size_nm=0.1, frame_interval_s=None)
    for k, mask in enumerate(masks):
        writer(k, mask)
    writer.close()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m.tif").reshape(shape), masks)


def test_a_failed_analysis_raises_its_own_error_and_leaves_no_mask(tiny_model, tmp_path, monkeypatch):
    m = make_movie(np.random.default_rng(0), GeneratorConfig(size=64, mode="stem"), n_frames=3)
    path = tmp_path / "m.tif"
    write_imagej_tiff(path, m.frames, pixel_size_nm=m.meta["pixel_size"], frame_interval_s=1.0)

    def failing(*args, **kwargs):
        raise RuntimeError("analysis failed")

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run, "analyze", failing)
    monkeypatch.setattr(tifffile, "imwrite", no_space)  # compressing the mask would fail too
    with pytest.raises(RuntimeError, match="analysis failed"):
        run.infer_one(path, tmp_path / "out", model=tiny_model, movie=False, strain=True, progress=False)
    assert not list((tmp_path / "out").rglob("*.tif"))  # staging and the partial mask are gone


def test_a_pixel_size_from_an_annotation_prints_as_a_note(tiny_model, tmp_path, capsys):
    # Where a lab's own annotation supplies the pixel size there is nothing to check:
    # "note:", not "warning:".
    from dislotrack.data_gen.annotations import Annotation, write_annotation

    cores = pd.DataFrame({"frame": [0], "x": [5.0], "y": [6.0], "hx": [0.0], "hy": [1.0], "particle": [0]})
    frames = np.random.default_rng(2).normal(size=(1, 48, 48)).astype(np.float32)
    write_annotation(tmp_path, "lab", Annotation(frames, cores, None, 0.1, None, {}))
    tifffile.imwrite(tmp_path / "lab.tif", frames[0])  # a plain TIFF, as a lab saves it
    assert main(["infer", str(tmp_path / "lab.tif"), "--out", str(tmp_path / "o"),
                 "--model", str(tiny_model), "--no-movie"]) == 0
    err = capsys.readouterr().err
    assert "  note: pixel_size_nm 0.1 from the annotation lab.json (the file has none)" in err
    assert "warning: pixel_size_nm 0.1 from the annotation" not in err


@pytest.mark.parametrize("given, warned", [(0.2, True), (0.1, False)])
def test_a_pixel_size_twice_the_true_one_is_warned_where_the_in_layer_fringes_pass_for_003(
        tiny_model, given, warned):
    # At twice the true pixel size the 0.24 nm in-layer fringes sit where (003) should, so
    # the lattice is "found"; the (003) fringes then stand out at twice their spacing.
    cfg = GeneratorConfig(size=192, mode="hrtem", dose=(3000, 3000), perfect_fraction=1.0)
    image = make_sample(np.random.default_rng(3), cfg).image
    res = analyze(image[None], pixel_size_nm=given, model=tiny_model, progress=False)
    said = [w for w in res.warnings if "twice the 0.473 nm (003) spacing" in w]
    assert bool(said) == warned, res.warnings
    if warned:
        assert res.lattice is not None  # the check that passed
        assert said[0].endswith("give the true one (pixel_size_nm=NM)")


def test_importing_in_a_notebook_without_ipywidgets_warns_nothing():
    # tqdm.auto warned "IProgress not found" at import in a Jupyter kernel lacking
    # ipywidgets (not a dependency): the bars fall back to text, silently.
    code = """
import sys, types, warnings
class ZMQInteractiveShell: pass
ipython = types.ModuleType("IPython")
ipython.get_ipython = lambda: ZMQInteractiveShell()
sys.modules.update({"IPython": ipython, "ipykernel.zmqshell": types.ModuleType("ipykernel.zmqshell"),
                    "ipywidgets": None})
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dislotrack.data_gen.export, dislotrack.infer.evaluate
    import dislotrack.infer.pipeline, dislotrack.infer.run
import tqdm.auto
print(sum("IProgress" in str(w.message) for w in caught), tqdm.auto.tqdm.__module__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n_warned, bar_module = out.stdout.split()
    assert n_warned == "0" and "notebook" not in bar_module  # text bars


def test_a_truncated_video_is_analysed_on_the_frames_read_and_says_so(tiny_model, tmp_path):
    # A video whose header lists 8 frames but decodes 3 was analysed on 3 without a word.
    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.avi"
    imageio.v3.imwrite(whole, (rng.random((8, 128, 128, 3)) * 255).astype(np.uint8), plugin="pyav",
                       codec="mpeg4", fps=4)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.warns(AnalysisWarning, match=r"only 3 of the 8 frames .* truncated") as said:
        res = analyze(cut, model=tiny_model, pixel_size_nm=0.1, progress=False)
    assert res.shape[0] == 3 and any("only 3 of the 8" in w for w in res.warnings)
    assert len([w for w in said if "only 3 of the 8" in str(w.message)]) == 1
    # The command finishes on the frames read (it failed at the events figure, writing nothing).
    assert main(["infer", str(cut), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--pixel-size", "0.1"]) == 0
    summary = json.loads((tmp_path / "o" / "cut" / "summary.json").read_text())
    assert summary["input"]["shape"][0] == 3 and any("only 3 of the 8" in w for w in summary["warnings"])
    assert (tmp_path / "o" / "cut" / "figures" / "overlay.mp4").is_file()


def test_relink_issues_the_calibration_note_its_interval_makes(tmp_path):
    # The override note went only into res.warnings, unlike analyze's (review stop 38).
    path = tmp_path / "m.tif"
    write_imagej_tiff(path, np.random.default_rng(0).normal(size=(4, 48, 48)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        res = analyze(path, progress=False)
    with pytest.warns(AnalysisWarning, match=r"m.tif: .*0.5 s .*overrides") as said:
        timed = res.relink(frame_interval_s=0.5)
    assert [w for w in timed.warnings if "overrides" in w]
    assert sum("overrides" in str(w.message) for w in said) == 1
