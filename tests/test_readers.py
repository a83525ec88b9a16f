"""Readers: small files written here with known content and calibration, then the real
microscope files in shared/realdata (skipped only where a file is absent)."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from dislotrack.data_gen.annotations import write_imagej_tiff
from dislotrack.infer.calibration import resolve_calibration
from dislotrack.infer.movie import to_gray_float32
from dislotrack.infer.pipeline import calibrate
from dislotrack.infer.readers import SUPPORTED_EXTENSIONS, open_movie

_DEFAULT_REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REALDATA = Path(os.environ.get("DISLOTRACK_REALDATA", _DEFAULT_REALDATA))


def real(rel: str) -> Path:
    path = REALDATA / rel
    if not path.exists():
        pytest.skip(f"real-data file {rel} not present in {REALDATA}")
    return path


def stack(rng: np.random.Generator, shape=(5, 32, 40), dtype=np.uint16) -> np.ndarray:
    return rng.integers(0, 1000, size=shape).astype(dtype)


# --- synthetic files -----------------------------------------------------------------------


def test_imagej_stack_nm_and_finterval(tmp_path):
    data = stack(np.random.default_rng(1))
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.05, 1 / 0.05),
                     metadata={"spacing": 0.2, "unit": "nm", "finterval": 0.5, "axes": "TYX"})
    with open_movie(path) as movie:
        assert movie.shape == (5, 32, 40) and len(movie) == 5
        cal = movie.calibration
        assert cal.pixel_size_nm == pytest.approx(0.05) and cal.pixel_size_source == "file"
        assert cal.frame_interval_s == pytest.approx(0.5) and cal.frame_interval_source == "file"
        assert movie[3].dtype == np.float32
        np.testing.assert_array_equal(movie[3], data[3])
        np.testing.assert_array_equal(movie[-1], data[4])
        np.testing.assert_array_equal(np.stack(list(movie)), data)


def test_imagej_micron_and_time_unit(tmp_path):
    path = tmp_path / "ij_um.tif"
    tifffile.imwrite(path, stack(np.random.default_rng(2), (3, 8, 8)), imagej=True,
                     resolution=(1 / 0.0002, 1 / 0.0002),
                     metadata={"unit": "micron", "finterval": 250, "tunit": "ms", "axes": "TYX"})
    with open_movie(path) as movie:
        assert movie.calibration.pixel_size_nm == pytest.approx(0.2)
        assert movie.calibration.frame_interval_s == pytest.approx(0.25)


def test_imagej_hyperstack_reads_channel_zero(tmp_path):
    data = stack(np.random.default_rng(3), (4, 3, 16, 20))
    path = tmp_path / "tc.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TCYX"})
    with open_movie(path) as movie:
        assert movie.shape == (4, 16, 20)
        np.testing.assert_array_equal(movie[2], data[2, 0])
        assert movie.metadata["warnings"] == ["the file holds 3 channels; only channel 0 was read"]


@pytest.mark.parametrize(("n_channels", "frames"), [(12, 12), (3, 1)])
def test_a_stack_saved_as_imagej_channels_is_a_movie_unless_it_has_few(tmp_path, n_channels, frames):
    # tifffile.imwrite(imagej=True) stores a 3-D array as channels when no axes are given.
    data = stack(np.random.default_rng(3), (n_channels, 16, 20))
    path = tmp_path / "cyx.tif"
    tifffile.imwrite(path, data, imagej=True)
    with open_movie(path) as movie:
        assert movie.metadata["axes"] == "CYX" and movie.shape == (frames, 16, 20)
        np.testing.assert_array_equal(movie[frames - 1], data[frames - 1])
        said = "read as 12 frames" if frames > 1 else "only channel 0 was read"
        assert said in movie.metadata["warnings"][0]
        cal = calibrate(movie, pixel_size_nm=0.1, frame_interval_s=None, d_spacing_nm=0.473)
        assert any(said in w for w in cal.warnings)  # what infer reports


def test_ome_tiff_angstrom_and_time_increment(tmp_path):
    data = stack(np.random.default_rng(4), dtype=np.float32)
    path = tmp_path / "ome.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": 1.5, "PhysicalSizeXUnit": "Å", "PhysicalSizeY": 1.5,
        "PhysicalSizeYUnit": "Å", "TimeIncrement": 250, "TimeIncrementUnit": "ms"})
    with open_movie(path) as movie:
        assert movie.metadata["format"] == "OME-TIFF"
        assert movie.calibration.pixel_size_nm == pytest.approx(0.15)
        assert movie.calibration.frame_interval_s == pytest.approx(0.25)
        np.testing.assert_array_equal(movie[1], data[1])


@pytest.mark.parametrize("compression", [None, "zlib"])  # memory-mapped / page by page
def test_plain_tiff_has_no_calibration(tmp_path, compression):
    data = stack(np.random.default_rng(5))
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data, compression=compression)
    with open_movie(path) as movie:
        assert movie.shape == data.shape
        cal = movie.calibration
        assert cal.pixel_size_nm is None and cal.pixel_size_source is None
        assert cal.frame_interval_s is None and cal.frame_interval_source is None
        np.testing.assert_array_equal(movie[4], data[4])


def test_tiff_centimetre_resolution_used_but_print_dpi_ignored(tmp_path):
    img = np.zeros((8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "cm.tif", img, resolution=(2e7, 2e7), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72, 72), resolutionunit="INCH")
    with open_movie(tmp_path / "cm.tif") as cm, open_movie(tmp_path / "dpi.tif") as dpi:
        assert cm.calibration.pixel_size_nm == pytest.approx(0.5)
        assert dpi.calibration.pixel_size_nm is None
        # a calibration warning: it explains the missing (then estimated) pixel size
        assert any("print resolution" in w for w in dpi.calibration.warnings)


def test_tiff_reading_one_frame_does_not_load_the_stack(tmp_path):
    data = np.zeros((100, 256, 256), np.float32)  # 26 MB
    for name, compression in [("raw.tif", None), ("zip.tif", "zlib")]:
        tifffile.imwrite(tmp_path / name, data, compression=compression)
        tracemalloc.start()
        with open_movie(tmp_path / name) as movie:
            movie[57]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 3 * 2**20, f"{name}: {peak / 2**20:.1f} MB allocated to read one frame"


def test_rgb_tiff_and_png_become_luminance(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    expected = 0.2125 * 100 + 0.7154 * 200 + 0.0721 * 50
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    iio.imwrite(tmp_path / "rgb.png", rgb)
    for name in ("rgb.tif", "rgb.png"):
        with open_movie(tmp_path / name) as movie:
            assert movie.shape == (1, 4, 6)
            np.testing.assert_allclose(movie[0], expected, rtol=1e-6)


def test_png_single_image(tmp_path):
    img = np.random.default_rng(6).integers(0, 255, (30, 50)).astype(np.uint8)
    iio.imwrite(tmp_path / "one.png", img)
    movie = open_movie(tmp_path / "one.png")
    assert movie.shape == (1, 30, 50)
    assert movie.calibration.pixel_size_nm is None and movie.calibration.frame_interval_s is None
    np.testing.assert_array_equal(movie[0], img)


def test_folder_of_pngs_in_natural_order(tmp_path):
    for i, value in [(1, 10), (2, 20), (10, 100), (9, 90)]:
        iio.imwrite(tmp_path / f"frame_{i}.png", np.full((12, 16), value, np.uint8))
    (tmp_path / "readme.txt").write_text("not a frame")
    movie = open_movie(tmp_path)
    assert movie.shape == (4, 12, 16)
    assert [float(f.mean()) for f in movie] == [10, 20, 90, 100]
    assert movie.calibration.frame_interval_s is None


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no frames"):
        open_movie(tmp_path)
    iio.imwrite(tmp_path / "a1.png", np.zeros((12, 16), np.uint8))
    iio.imwrite(tmp_path / "a2.png", np.zeros((12, 17), np.uint8))
    with pytest.raises(ValueError, match=r"differ in shape.*a2.png is \(12, 17\)"):
        open_movie(tmp_path)
    (tmp_path / "a2.png").unlink()
    tifffile.imwrite(tmp_path / "a3.tif", np.zeros((12, 16), np.uint8))
    with pytest.raises(ValueError, match="mixes frame formats"):
        open_movie(tmp_path)
    movies = tmp_path / "movies"  # e.g. `dislotrack generate --movie` output
    movies.mkdir()
    tifffile.imwrite(movies / "m1.tif", np.zeros((3, 12, 16), np.uint8), imagej=True,
                     metadata={"axes": "TYX"})
    with pytest.raises(ValueError, match=r"m1.tif holds 3 frames.*pass the movie files themselves"):
        open_movie(movies)


@pytest.mark.parametrize(("name", "codec"), [("clip.mp4", "libx264"), ("clip.avi", "mjpeg")])
def test_video_playback_interval(tmp_path, name, codec):
    levels = [20, 70, 120, 170, 220]
    frames = np.stack([np.full((48, 64, 3), v, np.uint8) for v in levels])
    kwargs = {"out_pixel_format": "yuvj420p"} if codec == "mjpeg" else {}
    iio.imwrite(tmp_path / name, frames, plugin="pyav", codec=codec, fps=2, **kwargs)
    with open_movie(tmp_path / name) as movie:
        assert movie.shape == (5, 48, 64)
        cal = movie.calibration
        assert cal.frame_interval_s == pytest.approx(0.5) and cal.frame_interval_source == "file"
        assert cal.pixel_size_nm is None
        assert any("playback" in n for n in movie.metadata["notes"])
        # infer warns about the playback rate only where it uses it
        used = calibrate(movie, pixel_size_nm=0.1, frame_interval_s=None, d_spacing_nm=0.473)
        assert used.frame_interval_s == pytest.approx(0.5)
        assert sum("playback" in w for w in used.warnings) == 1
        # with the user's pixel size, nothing says the video lacks one
        assert not any("pixel size" in w for w in used.warnings)
        given = calibrate(movie, pixel_size_nm=0.1, frame_interval_s=2.0, d_spacing_nm=0.473)
        assert given.frame_interval_source == "user"
        assert not any("playback" in w for w in given.warnings)
        np.testing.assert_allclose([f.mean() for f in movie], levels, atol=4)
        assert movie[3].mean() == pytest.approx(170, abs=4)  # random access after iteration


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(ValueError, match=r"unsupported file type '\.xyz'.*\.dm4.*\.mrc.*frames$"):
        open_movie(tmp_path / "x.xyz")
    (tmp_path / "movie.zip").write_text("?")
    with pytest.raises(ValueError, match=r"'\.zip'.*an archive: unpack it and pass the file or folder"):
        open_movie(tmp_path / "movie.zip")
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        open_movie(tmp_path / "nope.tif")
    assert {".tif", ".dm3", ".dm4", ".emd", ".ser", ".mrc", ".mp4", ".avi", ".png", ".jpg"} <= set(
        SUPPORTED_EXTENSIONS
    )


def test_index_errors_and_with_calibration(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    movie = open_movie(tmp_path / "s.tif")
    with pytest.raises(IndexError, match="frame 3 out of range for 3 frames"):
        movie[3]
    with pytest.raises(IndexError):
        movie[-4]
    with pytest.raises(TypeError):
        movie[1.0]
    resolved = movie.with_calibration(resolve_calibration(movie.calibration, pixel_size_nm=0.1))
    assert resolved.calibration.pixel_size_source == "user"
    assert movie.calibration.pixel_size_nm is None  # the original is unchanged
    np.testing.assert_array_equal(resolved[0], movie[0])
    movie.close()


def test_to_gray_rejects_non_images():
    with pytest.raises(ValueError, match="2-D"):
        to_gray_float32(np.zeros((2, 3, 4, 5)))
    assert to_gray_float32(np.array([[1 + 1j]])).item() == pytest.approx(np.sqrt(2))


# --- real microscope files (shared/realdata, see SOURCES.md) --------------------------------


@pytest.mark.parametrize(
    ("rel", "shape", "pixel_nm"),
    [
        ("temul/example_Se_implanted_MoS2.dm3", (1, 1024, 1024), 0.012695),
        ("rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3", (1, 68, 68), 0.24854),
        ("rosettasciio/digitalmicrograph/test_stackbuilder_imagestack.dm3", (3, 2, 16), 59.983),
        ("rosettasciio/tiff/test_dm_image_um_unit.dm3", (1, 68, 68), 168.67),
        ("ncempy/dmTest_float32_nonSquare_diffPixelSize.dm4", (1, 64, 128), 1.0),
        ("ncempy/dmTest_3D_int16_64,65,66.dm4", (66, 65, 64), 0.002),
        ("temul/example_Au_nanoparticle.emd", (1, 2048, 2048), 0.0074984),
        ("ncempy/Camera Ceta Imaging Micro.emd", (1, 512, 512), 3.139),
        ("ncempy/Acquisition_18.emd", (1, 1024, 1024), 0.012247),  # Berkeley EMD, unit "n_m"
        ("ncempy/16_STOimage_1.ser", (1, 1024, 1024), 0.010013),
        ("ncempy/16_STOimage.emi", (1, 1024, 1024), 0.010013),
        ("rosettasciio/tia/old/03_Scanning Preview_1.ser", (5, 128, 128), 0.384),
        ("rosettasciio/tia/new/128x128-TEM_search_1.ser", (1, 128, 128), 5.26),
        ("ncempy/temp.mrc", (3, 128, 128), 0.2),
        ("rosettasciio/mrc/HAADFscan.mrc", (1, 16, 16), 5.68),
        ("rosettasciio/tiff/test_loading_image_saved_with_imageJ_stack.tif", (2, 68, 68), 168.67),
        ("rosettasciio/tiff/test_loading_image_saved_with_DM.tif", (1, 68, 68), 168.67),
        ("scilink/YBCO_tem.tif", (1, 512, 512), 0.035246),  # FEI tags (SOURCES says none)
    ],
)
def test_real_file_shape_and_pixel_size(rel, shape, pixel_nm):
    with open_movie(real(rel)) as movie:
        assert movie.shape == shape
        assert movie.calibration.pixel_size_nm == pytest.approx(pixel_nm, rel=1e-3)
        assert movie.calibration.pixel_size_source == "file"
        for frame in (movie[0], movie[-1]):
            assert frame.shape == shape[1:] and frame.dtype == np.float32
            assert np.all(np.isfinite(frame))


@pytest.mark.parametrize(
    "rel",
    [
        "kemstem/FigS6_0716__Cryo_NSMO110_5-1Mx_0p5us_1024px_REGISTERED.tif",
        "singleorigin/dDPC_ZnO.tif",  # resolution tags 1/1 without unit
        "rosettasciio/mrc/Custom_movie.mrc",  # scale -1: not set
        "atomsegnet/Grain_boundry_gold_512px.png",
        "strainpp/example-image_PZT_ADF.jpg",
    ],
)
def test_real_file_without_calibration(rel):
    with open_movie(real(rel)) as movie:
        assert movie.calibration.pixel_size_nm is None
        assert movie.calibration.frame_interval_s is None
        assert np.all(np.isfinite(movie[0]))


def test_real_velox_time_stack():
    with open_movie(real("rosettasciio/emd/fei_example_tem_stack.emd")) as movie:
        assert movie.shape == (2, 3, 3)
        assert movie.calibration.pixel_size_nm == pytest.approx(0.0081729, rel=1e-4)
        assert movie.calibration.frame_interval_s == pytest.approx(0.8)
        assert movie.calibration.frame_interval_source == "file"


def test_real_velox_multi_detector_choice():
    path = real("ncempy/STEM HAADF-DF4-DF2-BF Diffraction Micro.emd")
    with open_movie(path) as haadf, open_movie(path, signal="BF") as bf:
        assert haadf.metadata["signal"] == "HAADF" and bf.metadata["signal"] == "BF"
        assert set(haadf.metadata["signals"]) == {"HAADF", "DF2", "DF4", "BF"}
        assert haadf.calibration.pixel_size_nm == pytest.approx(87.37, rel=1e-3)
        assert not np.array_equal(haadf[0], bf[0])
    with pytest.raises(ValueError, match="has no image 'ABF'"):
        open_movie(path, signal="ABF")


def test_real_dm_multi_signal_picks_the_image():
    with open_movie(real("rosettasciio/digitalmicrograph/2D/multi_signal.dm3")) as movie:
        assert movie.metadata["signal"] == "HAADF"  # not the 1-D "Plot"
        assert movie.shape == (1, 512, 512)
        assert movie.calibration.pixel_size_nm == pytest.approx(0.017752, rel=1e-3)


def test_real_dm_non_square_pixels_warned_about():
    path = real("ncempy/dmTest_float32_nonSquare_diffPixelSize.dm3")
    warned = open_movie(path).calibration.warnings
    assert any("non-square" in w and "y 0.2 nm" in w and "off by that ratio" in w for w in warned)


def test_real_dm_rgba_and_complex():
    rgba = open_movie(real("rosettasciio/digitalmicrograph/2D_dtypes/test-23.dm4"))
    np.testing.assert_allclose(rgba[0], [[1, 2], [3, 4]], rtol=1e-6)  # grey stored as RGBA
    assert any("read whole" in n for n in rgba.metadata["notes"])
    cplx = open_movie(real("rosettasciio/digitalmicrograph/2D_dtypes/test-3.dm4"))
    np.testing.assert_allclose(cplx[0], [[1, 2], [3, 4]], rtol=1e-6)  # |1+0j| ... |4+0j|
    assert cplx.metadata["warnings"] == ["the image is complex (complex64): its modulus was analysed"]
    assert "warnings" not in rgba.metadata


def test_real_mrc_movie_without_scale():
    with open_movie(real("rosettasciio/mrc/ROI_Random_Scan_movie.mrc")) as movie:
        assert movie.shape == (348, 16, 16)
        assert movie.calibration.pixel_size_nm is None
        assert any("non-positive" in n for n in movie.metadata["notes"])
        assert sum(1 for _ in movie) == 348


def test_real_tia_series_clock_too_coarse():
    with open_movie(real("rosettasciio/tia/old/64x64x5_TEM_preview_1.ser")) as movie:
        assert movie.shape == (5, 64, 64)
        assert movie.calibration.pixel_size_nm == pytest.approx(6.2818, rel=1e-4)
        assert movie.calibration.frame_interval_s is None  # 5 frames within 1 s of a 1-s clock
        assert movie.timestamps_s is None  # whole seconds are no per-frame clock
        assert any(w.startswith("the TIA file's whole-second clock is too coarse for a frame interval: "
                                "its 5 frames span 0 s, under the 10 s") for w in movie.calibration.warnings)


def test_real_dm_acquisition_time():
    movie = open_movie(real("temul/example_Se_implanted_MoS2.dm3"))
    # DataBar says 03-Jul-16 6:20:54 PM local; FILETIME is UTC
    assert 1467561600 < movie.metadata["acquired_unix_s"] < 1467648000  # 2016-07-03 UTC


def test_real_png_folder_movie():
    folder = real("insitu_ti_nomelabs")
    with open_movie(folder) as movie:
        assert movie.shape == (17, 660, 660)
        assert movie.metadata["first_file"] == "Chip-4-Heat-1-Frame-1770-Cropped.png"
        assert movie.calibration.pixel_size_nm is None
        assert movie.calibration.frame_interval_s is None  # PNGs carry no clock
        # the annotation band (rows 514-659) is black, the image above is not
        assert movie[16][520:, :100].mean() < movie[16][:514].mean()
        # No lattice fringes (diffraction contrast at 0.26 nm/px): the periodic text of the
        # annotation band must not pass for (003) fringes and calibrate the movie.
        from dislotrack.infer.fringes import pixel_size_from_fringes_or_none

        assert pixel_size_from_fringes_or_none(movie[0]) is None


def test_gms_insitu_tree_of_dm_frames_uses_acquisition_clock(tmp_path):
    """A GMS-style in-situ folder tree, made of copies of a real DM3 whose DataBar
    FILETIME is rewritten to 4 frames/s (one 0.35 s step); frame names are unpadded."""
    src = real("rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3")
    raw = src.read_bytes()
    filetime = 1.3115143597000824e17  # the file's "Acquisition Time (OS)" [100 ns]
    needle = struct.pack("<d", filetime)
    assert raw.count(needle) == 1
    times = [0.25 * i + (0.1 if i >= 6 else 0.0) for i in range(12)]
    for i, t in enumerate(times):
        second = tmp_path / "Hour_00" / "Minute_00" / f"Second_{int(t):02d}"
        second.mkdir(parents=True, exist_ok=True)
        frame = raw.replace(needle, struct.pack("<d", filetime + t * 1e7))
        (second / f"Hour_00_Minute_00_Second_{int(t):02d}_Frame_{i}.dm3").write_bytes(frame)
    (tmp_path / "recording.txt").write_text("top level holds no frames")
    with open_movie(tmp_path) as movie:
        assert movie.shape == (12, 68, 68)
        cal = movie.calibration
        assert cal.frame_interval_s == pytest.approx(0.25, abs=1e-5)
        assert cal.frame_interval_source == "file"
        assert cal.pixel_size_nm == pytest.approx(0.24854, rel=1e-4)
        np.testing.assert_allclose(movie.timestamps_s, times, atol=1e-5)
        # Uneven steps are a calibration warning (summary.json, res.warnings), not a note.
        (uneven,) = [w for w in cal.warnings if "vary" in w]
        assert uneven.startswith("frame steps vary from 0.25 to 0.35 s: times and velocities "
                                 "assume one interval per frame (the median, 0.25 s, unless given)")
        np.testing.assert_array_equal(movie[11], movie[0])
    # Dropped frames (5 after frame 9, at 1 frame/s) are named.
    times = [float(i) for i in range(10)] + [float(i) for i in range(15, 25)]
    gap = tmp_path / "gap"
    gap.mkdir()
    for i, t in enumerate(times):
        (gap / f"frame_{i:02d}.dm3").write_bytes(raw.replace(needle, struct.pack("<d", filetime + t * 1e7)))
    with open_movie(gap) as movie:
        assert movie.calibration.frame_interval_s == pytest.approx(1.0, abs=1e-5)
        assert any("from 1 to 6 s (frames dropped or paused after frame 9?)" in w
                   for w in movie.calibration.warnings)
        # An even stretch (--frames) takes its own clock and is not warned about.
        even = movie.window(0, 10).calibration
        assert even.frame_interval_s == pytest.approx(1.0, abs=1e-5)
        assert not any("vary" in w for w in even.warnings)
    # A movie whose clock slows from 1 s to 5 s per frame: each stretch has its own interval.
    times = [float(i) for i in range(10)] + [9.0 + 5 * i for i in range(1, 11)]
    slow = tmp_path / "slow"
    slow.mkdir()
    for i, t in enumerate(times):
        (slow / f"frame_{i:02d}.dm3").write_bytes(raw.replace(needle, struct.pack("<d", filetime + t * 1e7)))
    with open_movie(slow) as movie:
        assert movie.window(0, 10).calibration.frame_interval_s == pytest.approx(1.0, abs=1e-5)
        assert movie.window(10, 20).calibration.frame_interval_s == pytest.approx(5.0, abs=1e-5)
        assert not any("vary" in w for w in movie.window(10, 20).calibration.warnings)


@pytest.mark.parametrize("name", ["notes.tif", "broken.dm4", "broken.png", "broken.mp4", "broken.mrc"])
def test_a_damaged_or_mislabelled_file_is_a_one_line_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_text("# Results\nnot an image at all\n")
    with pytest.raises(ValueError, match=rf"{name}: cannot be read as {path.suffix[1:].upper()}: "):
        open_movie(path)


def test_numpy_arrays_read_lazily_and_pickles_are_refused(tmp_path):
    data = stack(np.random.default_rng(5), (3, 16, 20))
    np.save(tmp_path / "movie.npy", data)
    np.save(tmp_path / "image.npy", data[0])
    with open_movie(tmp_path / "movie.npy") as movie:
        assert movie.shape == (3, 16, 20) and movie.calibration.pixel_size_nm is None
        np.testing.assert_array_equal(movie[2], data[2])
        assert movie[2].dtype == np.float32
    with open_movie(tmp_path / "image.npy") as image:
        assert image.shape == (1, 16, 20)
    np.save(tmp_path / "coords.npy", np.array({0: data[0]}), allow_pickle=True)  # a pickled dict
    with pytest.raises(ValueError, match="coords.npy is not a plain numeric array"):
        open_movie(tmp_path / "coords.npy")
    np.save(tmp_path / "line.npy", data[0, 0])
    with pytest.raises(ValueError, match=r"line.npy holds a uint16 array of shape \(20,\)"):
        open_movie(tmp_path / "line.npy")
    for name, bad in (("empty.npy", np.zeros((0, 8, 8))), ("complex.npy", np.zeros((8, 8), complex))):
        np.save(tmp_path / name, bad)
        with pytest.raises(ValueError, match=f"{name} holds a"):
            open_movie(tmp_path / name)
    rgb = np.random.default_rng(6).integers(0, 255, (16, 20, 3)).astype(np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    with open_movie(tmp_path / "rgb.npy") as colour:  # (y, x, RGB): one image, as luminance
        assert colour.shape == (1, 16, 20) and colour[0].shape == (16, 20)


def test_a_frame_that_cannot_be_read_names_the_file(tmp_path):
    from dislotrack.infer.calibration import Calibration
    from dislotrack.infer.readers import Movie

    def read(i: int) -> np.ndarray:
        raise OSError("mmap length is greater than file size")

    movie = Movie(tmp_path / "cut.mrc", (3, 8, 8), Calibration(), {}, read)
    with pytest.raises(ValueError, match=r"cut.mrc: frame 1 cannot be read: mmap length"):
        movie[1]
    with pytest.raises(ValueError, match=r"cut.mrc: frame 0 cannot be read"):
        list(Movie(tmp_path / "cut.mrc", (3, 8, 8), Calibration(), {}, read,
                   iterate=lambda: (read(i) for i in range(3))))


def test_real_hyperspy_file():
    with open_movie(real("temul/Cropped_PTO-SRO_Aligned.hspy")) as movie:  # 0.014997 nm/px
        assert movie.shape == (1, 224, 1312)
        assert movie.calibration.pixel_size_nm == pytest.approx(0.014997, rel=1e-3)
        assert np.isfinite(movie[0]).all()


def test_generic_hdf5_reads_its_largest_image_dataset_frame_by_frame(tmp_path):
    import h5py

    data = stack(np.random.default_rng(7), (4, 24, 32))
    with h5py.File(tmp_path / "movie.h5", "w") as f:
        f["meta/scan"] = np.arange(5.0)  # 1-D: metadata, not an image
        f["meta/lut"] = np.zeros((8, 8))  # below the smallest image side
        f["raw/frames"] = data
        f["processed"] = data[0].astype(np.float32)
    with open_movie(tmp_path / "movie.h5") as movie:  # the stack, not the single image
        assert movie.shape == (4, 24, 32) and movie.metadata["signal"] == "raw/frames"
        np.testing.assert_array_equal(movie[3], data[3])
        assert [f.shape for f in movie] == [(24, 32)] * 4
        assert movie.calibration.pixel_size_nm is None and movie.metadata["format"] == "HDF5"
        assert "also holds 'processed'" in " ".join(movie.metadata["notes"])
    with open_movie(tmp_path / "movie.h5", signal="processed") as movie:
        assert movie.shape == (1, 24, 32)
        np.testing.assert_array_equal(movie[0], data[0])
    with pytest.raises(ValueError, match=r"no image dataset 'nope'; its image datasets are "
                                         r"\['raw/frames', 'processed'\]"):
        open_movie(tmp_path / "movie.h5", signal="nope")
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f["table"] = np.arange(10)
        f["null"] = h5py.Empty("f")  # a null dataspace has no shape at all
    with pytest.raises(ValueError, match=r"empty.hdf5 holds no \(y, x\) image"):
        open_movie(tmp_path / "empty.hdf5")
    (tmp_path / "old.hdf").write_bytes(b"\x0e\x03\x13\x01" + bytes(64))  # HDF4's signature
    with pytest.raises(ValueError, match=r"old.hdf: cannot be read as HDF5 \(HDF4 files are not "
                                         r"supported"):
        open_movie(tmp_path / "old.hdf")


@pytest.mark.parametrize("rel, shape", [("atomap/test_ADF_cropped.hdf5", (1, 400, 380)),
                                        ("aicrystallographer/G-dimSi.hdf5", (1, 512, 512))])
def test_real_hdf5_files(rel, shape):
    with open_movie(real(rel)) as movie:  # HyperSpy layout (rosettasciio) and a plain dataset
        assert movie.shape == shape
        assert movie.metadata["format"] == ("HyperSpy" if "atomap" in rel else "HDF5")
        assert np.isfinite(movie[0]).all() and movie[0].std() > 0


def test_a_truncated_imagej_stack_is_an_error_not_one_frame(tmp_path, caplog):
    from dislotrack.data_gen.annotations import write_imagej_tiff

    write_imagej_tiff(tmp_path / "full.tif", np.random.default_rng(7).random((8, 64, 64)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 5 // 8])
    with open_movie(tmp_path / "full.tif") as movie:
        assert movie.shape == (8, 64, 64)
    with pytest.raises(ValueError, match=r"cut.tif: the ImageJ header lists 8 images but fewer"):
        open_movie(tmp_path / "cut.tif")
    assert not [r for r in caplog.records if r.name == "tifffile"]  # our error says it, once


@pytest.mark.parametrize("kind", ["plain", "zlib", "ome", "no shape header"])
def test_a_truncated_tiff_is_refused_before_any_frame_is_analysed(tmp_path, kind):
    data = np.random.default_rng(9).integers(0, 4000, (10, 48, 64)).astype(np.uint16)
    kw = {"plain": {}, "zlib": {"compression": "zlib"}, "ome": {"ome": True, "metadata": {"axes": "TYX"}},
          "no shape header": {"metadata": None}}[kind]
    tifffile.imwrite(tmp_path / "full.tif", data, **kw)
    raw = (tmp_path / "full.tif").read_bytes()
    with open_movie(tmp_path / "full.tif") as movie:
        np.testing.assert_array_equal(movie[9], data[9])
    # Cut inside frame 4's data (contiguous) or past about 4 of the 10 compressed pages.
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) * 45 // 100])
    # With tifffile's shape header the frames the file holds are counted; without one (OME,
    # other writers) the chain of pages breaks off, and tifffile would read one frame.
    said = (r"truncated: [34] of its 10 frames are in the file" if kind in ("plain", "zlib")
            else r"truncated or damaged: its pages break off after 1 frame\(s\)")
    with pytest.raises(ValueError, match=rf"cut.tif: {said} \(an incomplete write or copy\?\)"):
        open_movie(tmp_path / "cut.tif")
    (tmp_path / "header.tif").write_bytes(b"II*\x00\x00\x00\x00\x00")  # an interrupted write
    with pytest.raises(ValueError, match=r"header.tif: the TIFF holds no images"):
        open_movie(tmp_path / "header.tif")


def test_a_multi_file_ome_tiff_reads_every_frame_and_names_a_missing_file(tmp_path):
    import shutil

    data = np.random.default_rng(10).integers(0, 4000, (4, 32, 48)).astype(np.uint16)
    ua, ub = "urn:uuid:11111111-1111-1111-1111-111111111111", "urn:uuid:22222222-2222-2222-2222-222222222222"
    ns = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{ns}" UUID="{ua}"><Image ID="Image:0">'
           '<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="48" SizeY="32" SizeC="1" '
           'SizeZ="1" SizeT="4"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
           f'<TiffData FirstT="0" IFD="0" PlaneCount="1"><UUID FileName="a.ome.tif">{ua}</UUID></TiffData>'
           f'<TiffData FirstT="1" IFD="0" PlaneCount="3"><UUID FileName="b.ome.tif">{ub}</UUID></TiffData>'
           '</Pixels></Image></OME>')
    only_pixels = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{ns}" UUID="{ub}">'
                   f'<BinaryOnly MetadataFile="a.ome.tif" UUID="{ua}"/></OME>')
    tifffile.imwrite(tmp_path / "a.ome.tif", data[0], description=xml, metadata=None)
    tifffile.imwrite(tmp_path / "b.ome.tif", data[1:], description=only_pixels, metadata=None,
                     photometric="minisblack")
    with open_movie(tmp_path / "a.ome.tif") as movie:  # frames 1-3 live in b.ome.tif
        assert movie.shape == (4, 32, 48)
        np.testing.assert_array_equal(movie[3], data[3])
    (tmp_path / "alone").mkdir()
    shutil.copy(tmp_path / "a.ome.tif", tmp_path / "alone")
    with pytest.raises(ValueError, match=r"frame 1 is in a file of this multi-file OME-TIFF that is "
                                         r"missing"):
        open_movie(tmp_path / "alone" / "a.ome.tif")


def test_nan_padding_becomes_the_frame_median_with_one_warning(tmp_path, caplog):
    data = stack(np.random.default_rng(8), (3, 20, 24)).astype(np.float32)
    data[1:, :4, :] = np.nan  # alignment padding in frames 1 and 2
    data[2, -1, -1] = np.inf
    np.save(tmp_path / "aligned.npy", data)
    with caplog.at_level("WARNING", logger="dislotrack"), open_movie(tmp_path / "aligned.npy") as m:
        frames = list(m)
    assert all(np.isfinite(f).all() for f in frames)
    np.testing.assert_array_equal(frames[0], data[0])
    assert (frames[1][:4] == np.median(data[1, 4:])).all()
    warned = [r.getMessage() for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert warned == ["aligned.npy: frame 1 has 96 NaN or infinite pixels (e.g. padding from "
                      "alignment), set to the frame's median; later frames likewise"]


def test_an_hdf5_file_that_only_looks_like_hyperspy_is_read_plainly(tmp_path):
    import h5py

    data = stack(np.random.default_rng(9), (2, 20, 24))
    with h5py.File(tmp_path / "fake.h5", "w") as f:
        f["Experiments/foo/data"] = data  # no HyperSpy metadata
    with open_movie(tmp_path / "fake.h5") as movie:
        assert movie.shape == (2, 20, 24) and movie.metadata["format"] == "HDF5"
        np.testing.assert_array_equal(movie[1], data[1])
        assert "not a valid HyperSpy file" in " ".join(movie.metadata["notes"])


def test_a_unitless_scale_is_named_when_no_pixel_size_can_be_found():
    from dislotrack.infer.pipeline import calibrate

    with open_movie(real("atomap/test_ADF_cropped.hdf5")) as movie, pytest.raises(
            ValueError, match=r"no usable pixel size in the file \(x axis: .*0\.00932\d* has no "
                              r"unit.*pass pixel_size_nm=NM "
                              r"\(pixel_size_nm=0\.00932627 if the "
                              r"file's number is in nm\)"):
        calibrate(movie, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=0.473)


@pytest.mark.parametrize("name", ["movie.mp4", "image.dm4", "stack.tif", "frame.png"])
def test_an_empty_file_is_named_as_such(tmp_path, name):
    (tmp_path / name).touch()
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        open_movie(tmp_path / name)


def test_a_folder_passes_on_what_its_frame_files_warn(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(3):  # each frame file: three detector channels of one scan
        tifffile.imwrite(tmp_path / f"f{i}.tif", stack(rng, (3, 16, 20)), imagej=True)
    with open_movie(tmp_path) as movie:
        assert movie.shape == (3, 16, 20)
        assert movie.metadata["warnings"] == ["the file holds 3 channels; only channel 0 was read"]
    with open_movie(tmp_path, signal="HAADF") as movie:
        said = "folder of ImageJ TIFF frames input has no images to choose from"
        assert said in movie.metadata["warnings"][-1]


def test_non_square_ome_pixels_are_a_calibration_warning_also_for_a_folder(tmp_path):
    meta = {"axes": "YX", "PhysicalSizeX": 1.0, "PhysicalSizeXUnit": "Å", "PhysicalSizeY": 2.0,
            "PhysicalSizeYUnit": "Å"}
    for i in range(2):
        tifffile.imwrite(tmp_path / f"f{i}.ome.tif", stack(np.random.default_rng(i), (16, 16)),
                         ome=True, metadata=meta)
    for path in (tmp_path / "f0.ome.tif", tmp_path):
        with open_movie(path) as movie:
            assert movie.calibration.pixel_size_nm == pytest.approx(0.1)
            assert [w[:46] for w in movie.calibration.warnings] == [
                "non-square pixels: x 0.1 nm, y 0.2 nm; using x"]


@pytest.mark.parametrize("n", [3, 4])
def test_a_short_stack_written_by_tifffile_is_frames_not_colour(tmp_path, n):
    data = stack(np.random.default_rng(n), (n, 16, 20), dtype=np.float32)
    tifffile.imwrite(tmp_path / "short.tif", data)  # tifffile: planar RGB(A), axes SYX
    with open_movie(tmp_path / "short.tif") as movie:
        assert movie.shape == (n, 16, 20)
        np.testing.assert_array_equal(movie[n - 1], data[n - 1])
        assert f"read as {n} frames" in movie.metadata["warnings"][0]
    rgb = stack(np.random.default_rng(9), (16, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")  # a colour image: (y, x, 3)
    with open_movie(tmp_path / "rgb.tif") as movie:
        assert movie.shape == (1, 16, 20) and not movie.metadata["warnings"]


def test_an_annotated_tiff_without_calibration_takes_its_sidecars(tmp_path):
    from dislotrack.data_gen.annotations import Annotation, write_annotation

    cores = pd.DataFrame({"frame": [0], "x": [5.0], "y": [6.0], "hx": [0.0], "hy": [1.0], "particle": [0]})
    write_annotation(tmp_path, "lab", Annotation(np.zeros((3, 32, 32), np.float32), cores, None,
                                                 0.08, 2.0, {}))
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((3, 32, 32), np.float32),  # as a lab saves it
                     photometric="minisblack")
    with open_movie(tmp_path / "lab.tif") as m:
        assert (m.calibration.pixel_size_nm, m.calibration.frame_interval_s) == (0.08, 2.0)
        assert m.calibration.pixel_size_source == m.calibration.frame_interval_source == "annotation"
        cal = calibrate(m, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=0.473)
        assert (cal.pixel_size_source, cal.frame_interval_source) == ("annotation", "annotation")
        assert any("from the annotation lab.json" in w for w in cal.warnings)  # reaches summary.json
        assert cal.with_frame_interval(1.0).frame_interval_source == "user"
        said = calibrate(m, pixel_size_nm=0.1, frame_interval_s=None, d_spacing_nm=0.473).warnings
        assert "pixel size 0.1 nm/px given by the user overrides the annotation's 0.08 nm/px" in said
        assert "pixel_size_nm 0.08 and frame_interval_s 2 from the annotation lab.json (the file " \
               "has none)" in m.calibration.warnings
    # The file's own calibration wins; a plain TIFF without a sidecar stays uncalibrated.
    write_imagej_tiff(tmp_path / "lab.tif", np.zeros((3, 32, 32), np.float32), pixel_size_nm=0.1,
                      frame_interval_s=0.5)
    with open_movie(tmp_path / "lab.tif") as m:
        assert (m.calibration.pixel_size_nm, m.calibration.frame_interval_s) == (0.1, 0.5)
    # An unusable sidecar value is left out, and said, rather than stopping infer.
    side = json.loads((tmp_path / "lab.json").read_text())
    (tmp_path / "lab.json").write_text(json.dumps({**side, "pixel_size_nm": 0}))
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((3, 32, 32), np.float32), photometric="minisblack")
    with open_movie(tmp_path / "lab.tif") as m:
        assert m.calibration.pixel_size_nm is None and m.calibration.frame_interval_s == 2.0
        assert (m.calibration.pixel_size_source, m.calibration.frame_interval_source) == (None, "annotation")
        assert any("lab.json's pixel_size_nm must be a positive" in w and "not used" in w
                   for w in m.calibration.warnings)
    tifffile.imwrite(tmp_path / "other.tif", np.zeros((32, 32), np.float32))
    with open_movie(tmp_path / "other.tif") as m:
        assert m.calibration.pixel_size_nm is None


def test_a_tiff_written_frame_by_frame_is_a_movie_and_a_missing_codec_is_named(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.random((6, 24, 28)).astype(np.float32)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:  # one write per frame: 6 series
        for f in frames:
            tw.write(f)
    with open_movie(tmp_path / "pages.tif") as m:
        assert m.shape == (6, 24, 28)
        np.testing.assert_array_equal(m[4], frames[4])
        assert m.metadata["warnings"] == ["the TIFF holds 6 single-page images of one size "
                                          "(written frame by frame): read as 6 frames"]
    # Named images (a scan's detectors) and OME positions stay separate images.
    with tifffile.TiffWriter(tmp_path / "named.tif") as tw:
        for f, name in zip(frames, ["HAADF", "BF", "DF1", "DF2", "DF3", "DF4"], strict=True):
            tw.write(f, metadata={"name": name})
    with tifffile.TiffWriter(tmp_path / "positions.ome.tif", ome=True) as tw:
        for f in frames:
            tw.write(f)
    for name in ("named.tif", "positions.ome.tif"):
        with open_movie(tmp_path / name) as m:
            assert m.shape == (1, 24, 28), name
    with tifffile.TiffWriter(tmp_path / "two.tif") as tw:  # two images: a scan's detectors?
        for f in frames[:2]:
            tw.write(f)
    with open_movie(tmp_path / "two.tif") as m:
        assert m.shape == (1, 24, 28)
        assert m.metadata["warnings"] == ["the TIFF holds 2 image series; only the first was read"]
    from PIL import Image

    pages = [Image.fromarray((f * 255).astype(np.uint8)) for f in frames[:2]]
    pages[0].save(tmp_path / "lzw.tif", compression="tiff_lzw", save_all=True, append_images=pages[1:])
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with open_movie(tmp_path / "lzw.tif") as m, pytest.raises(
                ValueError, match=r"frame 0 cannot be read: .*imagecodecs.* \(pip install imagecodecs\)"):
            m[0]
    else:
        with open_movie(tmp_path / "lzw.tif") as m:  # read where the codec is installed
            assert m.shape == (2, 24, 28) and m[0].shape == (24, 28)


def test_a_dm_stack_with_an_acquisition_time_can_be_windowed(monkeypatch):
    # GMS stores one acquisition time for a whole stack: it is no per-frame clock, and
    # --frames on such a stack must not index past it (it raised IndexError).
    import dislotrack.infer.readers as readers

    path = real("ncempy/dmTest_3D_int16_64,65,66.dm3")
    monkeypatch.setattr(readers, "_dm_acquisition_time_s", lambda tags: 1.7e9)
    with open_movie(path) as movie:
        assert len(movie) == 66 and movie.metadata["acquired_unix_s"] == 1.7e9
        assert movie.timestamps_s is None
        part = movie.window(2, 5)
        assert len(part) == 3
        np.testing.assert_array_equal(part[0], movie[2])


def test_an_array_read_as_one_colour_image_says_so(tmp_path):
    # A (y, x, t) stack of 4 frames was silently read as one RGBA image (0 cores found).
    from dislotrack.infer.readers import movie_from_array

    stack = np.zeros((64, 64, 4), np.float32)
    movie = movie_from_array(stack)
    assert movie.shape == (1, 64, 64)
    (said,) = movie.metadata["warnings"]
    assert "colour" in said and "np.moveaxis(a, -1, 0)" in said
    np.save(tmp_path / "s.npy", stack)
    with open_movie(tmp_path / "s.npy") as m:
        assert m.metadata["warnings"] == [said]
    assert "warnings" not in movie_from_array(np.zeros((4, 64, 64), np.float32)).metadata
