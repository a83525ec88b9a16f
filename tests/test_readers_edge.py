"""Readers at their edges (review of stop 34): print resolutions, stray files beside a
recording, frames that disagree, optional modules, per-frame clocks, hyperstacks and
the notes that reach summary.json. Small files written here; real files where named."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from dislotrack.infer.calibration import Calibration
from dislotrack.infer.movie import Movie
from dislotrack.infer.outputs import summary_dict
from dislotrack.infer.pipeline import calibrate
from dislotrack.infer.readers import open_movie
from dislotrack.infer.result import AnalysisResult

_DEFAULT_REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REALDATA = Path(os.environ.get("DISLOTRACK_REALDATA", _DEFAULT_REALDATA))
D003_NM = 0.473


def real(rel: str) -> Path:
    path = REALDATA / rel
    if not path.exists():
        pytest.skip(f"real-data file {rel} not present in {REALDATA}")
    return path


def fringes(period_px: float = 8.0, size: int = 128) -> np.ndarray:
    """(003)-like fringes along y: a pixel size of 0.473 / period_px nm is estimated."""
    y = np.arange(size)[:, None] * np.ones(size)
    return (100 + 50 * np.cos(2 * np.pi * y / period_px)).astype(np.uint8)


def png(path: Path, value: int = 0, shape=(16, 20), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).convert(mode).save(path)


# --- 1. ImageJ print resolutions ----------------------------------------------------------


@pytest.mark.parametrize(("unit", "per_unit"), [("inch", 72), ("cm", 100)])
def test_an_imagej_print_resolution_is_no_pixel_size_and_the_fringes_give_one(tmp_path, unit, per_unit):
    path = tmp_path / f"ij_{unit}.tif"
    tifffile.imwrite(path, fringes(), imagej=True, resolution=(per_unit, per_unit), metadata={"unit": unit})
    with open_movie(path) as movie:
        assert movie.calibration.pixel_size_nm is None
        assert movie.calibration.warnings == (
            f"ignored the resolution {per_unit} px/{unit} (ImageJ): a print resolution, not a "
            "microscope calibration",)
        cal = calibrate(movie, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=D003_NM)
    # as for the same pixels saved as a plain TIFF: estimated, not refused
    assert cal.pixel_size_source == "estimated"
    assert cal.pixel_size_nm == pytest.approx(D003_NM / 8, rel=0.02)


def test_an_imagej_calibration_in_cm_at_microscope_scale_is_kept(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", fringes(), imagej=True, resolution=(1e8, 1e8),
                     metadata={"unit": "cm"})
    with open_movie(tmp_path / "cm.tif") as movie:
        assert movie.calibration.pixel_size_nm == pytest.approx(0.1)
        assert movie.calibration.warnings == ()


# --- 2. a stray image beside a GMS tree -----------------------------------------------------


def test_a_stray_image_beside_a_recording_tree_is_refused_naming_both(tmp_path):
    rec = tmp_path / "gms"
    for i in range(5):
        png(rec / "Hour_00" / "Minute_00" / "Second_00" / f"Frame_{i}.png", 10 * i)
    with open_movie(rec) as movie:
        assert len(movie) == 5
    png(rec / "preview.png", shape=(40, 60))
    with pytest.raises(ValueError, match=r"gms holds 1 frame file\(s\) at the top level \(preview\.png\) "
                                         r"and 5 in subfolders \(Hour_00\): move the top-level"):
        open_movie(rec)


def test_a_folder_of_frames_with_a_smaller_subfolder_reads_its_top_level(tmp_path):
    for i in range(3):
        png(tmp_path / f"f{i}.png", 10 * i)
    png(tmp_path / "thumbs" / "f0.png", shape=(4, 5))
    with open_movie(tmp_path) as movie:
        assert movie.shape == (3, 16, 20)


def test_a_folder_of_frames_holding_its_own_results_reads_its_frames(tmp_path):
    # `dislotrack infer frames --out frames/results`: the figures there are no frames.
    for i in range(4):
        png(tmp_path / f"frame_{i}.png", 10 * i)
    result = tmp_path / "results" / "frames"
    (result / "figures").mkdir(parents=True)
    (result / "summary.json").write_text("{}")
    for name in ("trajectories", "displacement", "counts", "events", "dipoles"):
        png(result / "figures" / f"{name}.png", shape=(30, 40))
    with open_movie(tmp_path) as movie:
        assert movie.shape == (4, 16, 20)


# --- 3. frames of differing pixel size ------------------------------------------------------


def test_a_folder_whose_frames_differ_in_pixel_size_warns_naming_them(tmp_path):
    blank = np.zeros((32, 32), np.uint16)
    tifffile.imwrite(tmp_path / "t1.tif", blank, imagej=True, resolution=(10, 10), metadata={"unit": "nm"})
    tifffile.imwrite(tmp_path / "t2.tif", blank, imagej=True, resolution=(10.05, 10.05),
                     metadata={"unit": "nm"})  # 0.5 %: the same
    with open_movie(tmp_path) as movie:
        assert movie.calibration.pixel_size_nm == pytest.approx(0.1)
        assert movie.calibration.warnings == ()
    tifffile.imwrite(tmp_path / "t3.tif", blank, imagej=True, resolution=(5, 5), metadata={"unit": "nm"})
    tifffile.imwrite(tmp_path / "t4.tif", blank)
    with open_movie(tmp_path) as movie:
        (said,) = movie.calibration.warnings
    assert said.startswith("the frames differ in pixel size: t1.tif is 0.1 nm/px, but t3.tif 0.2 nm/px, "
                           "t4.tif none (a magnification change?): one pixel size is used for all "
                           "frames, so distances and velocities in the others are off")


# --- 4. a Velox EMD with an EDS spectrum image -----------------------------------------------


def test_a_velox_emd_with_an_eds_spectrum_image_names_the_file_and_the_missing_module(tmp_path):
    with zipfile.ZipFile(real("rosettasciio/emd/velox_emd_version11.zip")) as z:
        z.extractall(tmp_path)
    path = tmp_path / "Test SI 16x16 215 kx.emd"
    try:
        import sparse  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError) as err:
            open_movie(path)
        said = str(err.value)
        assert said == (f"{path}: reading this EMD file (it holds an EDS spectrum image) needs the "
                        "optional 'sparse' package: pip install sparse")
    else:
        with open_movie(path) as movie:  # the HAADF beside the spectrum image
            assert movie.shape[1:] == (16, 16)


# --- 5. the OME DeltaT clock ---------------------------------------------------------------


def _ome(path: Path, delta_t: list[float]) -> None:
    tifffile.imwrite(path, np.zeros((len(delta_t), 16, 16), np.uint16), ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": 0.1, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.1,
        "PhysicalSizeYUnit": "nm", "Plane": {"DeltaT": delta_t, "DeltaTUnit": ["s"] * len(delta_t)}})


def test_the_ome_deltat_clock_is_kept_so_an_even_stretch_has_its_own_interval(tmp_path):
    _ome(tmp_path / "uneven.ome.tif", [10, 11, 12, 13, 19, 20])
    with open_movie(tmp_path / "uneven.ome.tif") as movie:
        np.testing.assert_allclose(movie.timestamps_s, [0, 1, 2, 3, 9, 10])
        assert any("frame steps vary from 1 to 6 s" in w for w in movie.calibration.warnings)
        even = movie.window(0, 4).calibration
        assert even.frame_interval_s == pytest.approx(1.0) and even.warnings == ()
    _ome(tmp_path / "back.ome.tif", [0, 0.5, 0.4, 1.5, 2])
    with open_movie(tmp_path / "back.ome.tif") as movie:
        assert movie.calibration.frame_interval_s is None
        assert movie.calibration.warnings == (
            "the frames' acquisition times do not increase: frame 2 is 0.1 s before frame 1 "
            "(frames out of order?); no frame interval",)


# --- 6, 7, 11. ImageJ hyperstacks, non-square pixels and escaped time units -----------------


def test_an_imagej_tzyx_hyperstack_reads_the_first_slice_of_each_time_point(tmp_path):
    data = np.random.default_rng(6).integers(0, 1000, (5, 2, 16, 16)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "tz.tif", data, imagej=True, resolution=(5, 5),
                     metadata={"axes": "TZYX", "unit": "nm", "finterval": 1.0})
    with open_movie(tmp_path / "tz.tif") as movie:
        assert movie.shape == (5, 16, 16)
        np.testing.assert_array_equal(movie[3], data[3, 0])
        assert movie.calibration.frame_interval_s == 1.0  # one frame per time point
        assert movie.metadata["warnings"] == [
            "the file holds 2 z-slices per time point (axes 'TZ'); only the first was read"]


def test_imagej_non_square_pixels_are_a_calibration_warning(tmp_path):
    tifffile.imwrite(tmp_path / "ns.tif", np.zeros((3, 16, 16), np.uint16), imagej=True,
                     resolution=(1 / 0.2, 1 / 0.4), metadata={"unit": "nm", "axes": "TYX"})
    with open_movie(tmp_path / "ns.tif") as movie:
        assert movie.calibration.pixel_size_nm == pytest.approx(0.2)
        said = [w[:46] for w in movie.calibration.warnings]
        assert said == ["non-square pixels: x 0.2 nm, y 0.4 nm; using x"]


@pytest.mark.parametrize(("tunit", "seconds"), [("\\u00B5s", 250e-6), ("frame", None)])
def test_an_escaped_imagej_time_unit_is_read_and_an_unusable_one_said(tmp_path, tunit, seconds):
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((3, 16, 16), np.uint16), imagej=True,
                     resolution=(10, 10), metadata={"unit": "nm", "axes": "TYX", "finterval": 250,
                                                    "tunit": tunit})
    with open_movie(tmp_path / "t.tif") as movie:
        assert movie.calibration.frame_interval_s == (pytest.approx(seconds) if seconds else None)
        said = ["ignored the ImageJ frame interval 250 frame: not a time unit"] if seconds is None else []
        assert list(movie.calibration.warnings) == said


# --- 8. reader notes reach summary.json; those that explain a missing value are warnings ----


def test_reader_notes_reach_summary_json(tmp_path):
    np.save(tmp_path / "a.npy", fringes())
    with open_movie(tmp_path / "a.npy") as movie:
        cal = calibrate(movie, pixel_size_nm=0.05, frame_interval_s=None, d_spacing_nm=D003_NM)
    assert cal.notes == ("no calibration in .npy files",)
    empty = pd.DataFrame({"kind": pd.Series(dtype=str)})
    res = AnalysisResult(empty, empty, empty, empty, empty, empty, cal, np.zeros(1), (1, 128, 128),
                         str(tmp_path / "a.npy"), "", {})
    assert summary_dict(res)["input"]["notes"] == ["no calibration in .npy files"]


def test_dm_frames_out_of_time_order_are_a_warning_naming_the_frame(tmp_path):
    src = real("rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3")
    raw = src.read_bytes()
    filetime = 1.3115143597000824e17  # its DataBar "Acquisition Time (OS)" [100 ns]
    for i, t in enumerate([0, 1, 2, 1.5, 4]):
        frame = raw.replace(struct.pack("<d", filetime), struct.pack("<d", filetime + t * 1e7))
        (tmp_path / f"f{i}.dm3").write_bytes(frame)
    with open_movie(tmp_path) as movie:
        assert movie.calibration.frame_interval_s is None
        assert ("the frames' acquisition times do not increase: frame 3 (f3.dm3) is 0.5 s before "
                "frame 2 (frames out of order?); no frame interval") in movie.calibration.warnings


# --- 9, 10. animated PNGs, MRC file handles ------------------------------------------------


def test_an_animated_png_is_read_frame_by_frame(tmp_path):
    frames = [Image.fromarray(np.full((16, 20), 50 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:], duration=200)
    with open_movie(tmp_path / "anim.png") as movie:
        assert movie.shape == (3, 16, 20)
        assert [float(f.mean()) for f in movie] == [0.0, 50.0, 100.0]


def test_a_frame_that_is_no_image_names_the_file(tmp_path):
    movie = Movie(tmp_path / "odd.png", (1, 4, 4), Calibration(), {}, lambda i: np.zeros((2, 5, 4, 4)))
    with pytest.raises(ValueError, match=r"odd\.png: frame 0: a frame must be 2-D"):
        movie[0]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc/self/fd")
def test_closing_an_mrc_movie_releases_its_file():
    path = real("rosettasciio/mrc/Custom_movie.mrc")

    def open_files() -> int:
        return sum(1 for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") ==
                   str(path.resolve()))

    before = open_files()
    movie = open_movie(path)
    movie[0]
    movie.close()  # the movie itself is still referenced
    assert open_files() == before


# --- 13. frames of differing bit depth or colour mode ---------------------------------------


def test_a_folder_mixing_bit_depths_or_colour_modes_warns_naming_the_files(tmp_path):
    png(tmp_path / "modes" / "a1.png", 100)
    png(tmp_path / "modes" / "a2.png", 100, mode="RGB")
    png(tmp_path / "modes" / "a3.png", 100, mode="I;16")
    with open_movie(tmp_path / "modes") as movie:
        assert movie.metadata["warnings"] == [
            "the frames differ in bit depth or colour mode: a1.png is L, but a2.png RGB, a3.png I;16"]
    (tmp_path / "depth").mkdir()
    tifffile.imwrite(tmp_path / "depth" / "b1.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "depth" / "b2.tif", np.zeros((8, 8), np.float32))
    with open_movie(tmp_path / "depth") as movie:
        assert movie.metadata["warnings"] == [
            "the frames differ in bit depth or colour mode: b1.tif is uint16, but b2.tif float32"]
    png(tmp_path / "same" / "c1.png")
    png(tmp_path / "same" / "c2.png")
    with open_movie(tmp_path / "same") as movie:
        assert "warnings" not in movie.metadata


# --- user test of stop 36: damaged files, missing parts, what a stack's axis is ------------


def _mrc(path: Path, data: np.ndarray) -> None:
    """A minimal MRC file (mode 2, float32, little-endian) of a (z, y, x) array."""
    nz, ny, nx = data.shape
    head = bytearray(1024)
    struct.pack_into("<4i", head, 0, nx, ny, nz, 2)
    struct.pack_into("<3i", head, 64, 1, 2, 3)  # MAPC/MAPR/MAPS
    head[208:214] = b"MAP DD"  # map id, little-endian machine stamp
    path.write_bytes(bytes(head) + data.astype("<f4").tobytes())


def _cut(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """A copy of ``src`` cut to ``fraction`` of its bytes (an interrupted copy)."""
    raw = src.read_bytes()
    dst.write_bytes(raw[: int(len(raw) * fraction)])
    return dst


def test_a_video_with_no_decodable_frame_is_a_one_line_error(tmp_path):
    png(tmp_path / "still.png", 100, shape=(64, 64))
    (tmp_path / "still.png").rename(tmp_path / "still.mp4")  # PyAV opens it as 0 frames
    with pytest.raises(ValueError, match=r"still\.mp4: no video frame can be read"):
        open_movie(tmp_path / "still.mp4")


def test_a_truncated_npy_is_named_truncated_not_non_numeric(tmp_path):
    np.save(tmp_path / "full.npy", np.zeros((4, 64, 64), np.float32))
    cut = _cut(tmp_path / "full.npy", tmp_path / "t.npy", 0.3)
    with pytest.raises(ValueError, match=r"t\.npy: truncated: its header says float32 \(4, 64, 64\) "
                                         r"\(65664 bytes in all\) but the file holds 19699 bytes") as err:
        open_movie(cut)
    assert "plain numeric" not in str(err.value)


def test_a_truncated_mrc_is_refused_before_a_frame_is_read(tmp_path):
    _mrc(tmp_path / "full.mrc", np.ones((3, 16, 16), np.float32))
    with open_movie(tmp_path / "full.mrc") as movie:  # the whole file reads
        assert movie.shape == (3, 16, 16) and movie[2].mean() == 1.0
    with pytest.raises(ValueError, match=r"cut\.mrc: truncated: .*3 x 16 x 16 values.*incomplete"):
        open_movie(_cut(tmp_path / "full.mrc", tmp_path / "cut.mrc", 0.9))


@pytest.mark.parametrize("rel", ["temul/example_Se_implanted_MoS2.dm3",
                                 "ncempy/dmTest_3D_int16_64,65,66.dm4",
                                 "ncempy/16_STOimage_1.ser"])
@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_a_truncated_dm_or_ser_file_says_truncated(tmp_path, rel, fraction):
    src = real(rel)
    with pytest.raises(ValueError, match=r"truncated: its header says .* \(an incomplete write or copy\?\)"):
        open_movie(_cut(src, tmp_path / src.name, fraction))


def test_a_damaged_file_keeps_the_library_words_and_says_it_may_be_cut(tmp_path):
    frames = np.stack([np.full((48, 64, 3), v, np.uint8) for v in (20, 120, 220)])
    iio.imwrite(tmp_path / "clip.mp4", frames, plugin="pyav", codec="libx264", fps=2)
    cut = _cut(tmp_path / "clip.mp4", tmp_path / "cut.mp4", 0.5)  # its index (moov) is lost
    with pytest.raises(ValueError, match=r"cut\.mp4: cannot be read as MP4: .+ \(a truncated or "
                                         r"damaged file\? an incomplete copy\?\)"):
        open_movie(cut)
    (tmp_path / "noise.ser").write_bytes(np.random.default_rng(3).bytes(4000))  # no SER header
    with pytest.raises(ValueError, match=r"cannot be read as SER: unpack .*\(a truncated or damaged"):
        open_movie(tmp_path / "noise.ser")
    (tmp_path / "short.ser").write_bytes(b"II" + bytes(range(7)))  # cut within its header
    with pytest.raises(ValueError, match=r"short\.ser: truncated: its 9 bytes end within its header"):
        open_movie(tmp_path / "short.ser")


def test_an_emi_without_its_ser_names_the_missing_data_file(tmp_path):
    emi = real("ncempy/16_STOimage.emi")
    (tmp_path / emi.name).write_bytes(emi.read_bytes())
    with pytest.raises(ValueError, match=r"16_STOimage\.emi: its data file 16_STOimage_1\.ser is "
                                         r"not beside it: copy the \.ser file\(s\) with the \.emi"):
        open_movie(tmp_path / emi.name)


def test_a_folder_of_mixed_frame_sizes_names_the_folder_and_what_to_do(tmp_path):
    for name, shape in (("f1.png", (16, 20)), ("f2.png", (16, 20)), ("f3.png", (32, 20)),
                        ("f4.png", (8, 8))):
        png(tmp_path / "mixed" / name, shape=shape)
    with pytest.raises(ValueError, match=rf"folder {tmp_path / 'mixed'}: frames differ in shape: "
                                         r"f1\.png is \(16, 20\) px but f3\.png is \(32, 20\) px "
                                         r"\(and 1 more file\(s\).*move the files of other sizes out"):
        open_movie(tmp_path / "mixed")


def test_signal_naming_a_1d_signal_says_it_is_no_image():
    path = real("rosettasciio/digitalmicrograph/2D/multi_signal.dm3")  # HAADF + a 1-D "Plot"
    with pytest.raises(ValueError, match=r"'Plot' is a 1-D signal \(a spectrum or profile\), not an "
                                         r"image; the file's only image is 'HAADF'"):
        open_movie(path, signal="Plot")
    with open_movie(path, signal="haadf") as movie:
        assert movie.metadata["signal"] == "HAADF"


def test_a_reciprocal_space_calibration_is_named_a_diffraction_pattern_or_fft(tmp_path):
    path = tmp_path / "fft.tif"
    tifffile.imwrite(path, fringes(), imagej=True, resolution=(5.0, 5.0), metadata={"unit": "1/nm"})
    with open_movie(path) as movie:
        assert movie.calibration.pixel_size_nm is None
        assert movie.metadata["notes"][0].startswith(
            "ImageJ x: no usable pixel size: 0.2 1/nm is a reciprocal length: the image is a "
            "diffraction pattern or FFT")
        # with --pixel-size the note would go unseen: the warning stays
        cal = calibrate(movie, pixel_size_nm=0.05, frame_interval_s=None, d_spacing_nm=D003_NM)
    assert any("calibrated in reciprocal units" in w for w in cal.warnings)
    # A diffraction pattern shows no fringes to estimate by: the error does not ask for a
    # pixel size (which would analyse the pattern as a lattice), it asks for an image.
    noise = tmp_path / "dp.tif"
    tifffile.imwrite(noise, np.random.default_rng(0).random((128, 128)).astype(np.float32), imagej=True,
                     resolution=(5.0, 5.0), metadata={"unit": "1/nm"})
    with open_movie(noise) as movie, pytest.raises(ValueError, match="pass a real-space image$"):
        calibrate(movie, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=D003_NM)


def test_an_imagej_z_stack_is_analysed_with_a_warning_that_its_axis_is_not_time(tmp_path):
    data = np.stack([fringes()] * 3)
    tifffile.imwrite(tmp_path / "z.tif", data, imagej=True, resolution=(20.0, 20.0),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 0.5})
    with open_movie(tmp_path / "z.tif") as movie:
        assert movie.shape == (3, 128, 128)
        cal = calibrate(movie, pixel_size_nm=None, frame_interval_s=None, d_spacing_nm=D003_NM)
    said = [w for w in cal.warnings if w.startswith("the stack's third axis is z, not time")]
    assert said and "ImageJ 'slices' without 'frames'" in said[0]
    # no advice to make it a time series
    assert "no frame interval: velocities in per-frame units" in cal.warnings
    tifffile.imwrite(tmp_path / "t.tif", data, imagej=True, metadata={"axes": "TYX"})
    with open_movie(tmp_path / "t.tif") as movie:  # a time series says nothing of the kind
        assert not any("third axis" in w for w in movie.calibration.warnings)


def test_a_dm_stack_along_z_in_micrometres_warns_that_its_axis_is_not_time():
    with open_movie(real("ncempy/dmTest_3D_int16_64,65,66.dm4")) as movie:  # z 4 µm
        assert movie.shape[0] == 66
        assert any(w.startswith("the stack's third axis is z, not time (axis 'z' in um")
                   for w in movie.calibration.warnings)


def test_uncalibrated_tiff_and_png_say_so_in_their_notes(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", fringes())
    png(tmp_path / "plain.png", 100)
    with open_movie(tmp_path / "plain.tif") as tif, open_movie(tmp_path / "plain.png") as image:
        assert tif.calibration.notes == (
            "no calibration in the TIFF's tags (OME, ImageJ, vendor or resolution)",)
        assert image.calibration.notes == ("no calibration in PNG files",)
    tifffile.imwrite(tmp_path / "ij.tif", fringes(), imagej=True, resolution=(20.0, 20.0),
                     metadata={"unit": "nm"})
    with open_movie(tmp_path / "ij.tif") as tif:  # calibrated: nothing to say
        assert tif.calibration.notes == ()


def test_opening_an_mrc_leaves_no_resource_warning(tmp_path, recwarn):
    import gc
    import warnings

    _mrc(tmp_path / "m.mrc", np.zeros((2, 16, 16), np.float32))
    warnings.simplefilter("always", ResourceWarning)
    with open_movie(tmp_path / "m.mrc") as movie:
        movie[0]
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning)]


def test_a_multi_image_ser_cut_before_its_last_image_says_where_that_image_starts(tmp_path):
    # It said "its bytes end within its header", though the header and offset table were whole.
    src = real("rosettasciio/tia/old/64x64x5_TEM_preview_1.ser")
    with pytest.raises(ValueError, match=r"truncated: its header says 5 image\(s\), the last starting "
                                         r"at byte \d+ \(\d+ bytes in all\)"):
        open_movie(_cut(src, tmp_path / src.name, 0.5))


def test_an_mrc_message_counts_its_extended_header(tmp_path):
    src = real("rosettasciio/mrc/HAADFscan.mrc")
    with pytest.raises(ValueError, match=r"values of mode 6 after a 909312-byte extended header"):
        open_movie(_cut(src, tmp_path / src.name, 0.5))


def _write_mrc(path: Path, data: np.ndarray) -> None:
    """A minimal MRC2014 file: float32 (mode 2) stack, cell 1 Å per pixel."""
    data = np.asarray(data, np.float32)
    nz, ny, nx = data.shape
    head = bytearray(1024)
    struct.pack_into("<4i", head, 0, nx, ny, nz, 2)
    struct.pack_into("<3i", head, 28, nx, ny, nz)
    struct.pack_into("<6f", head, 40, nx, ny, nz, 90, 90, 90)
    struct.pack_into("<3i", head, 64, 1, 2, 3)
    struct.pack_into("<3f", head, 76, data.min(), data.max(), data.mean())
    head[208:214] = b"MAP DD"
    path.write_bytes(bytes(head) + data.tobytes())


_DE_INFO = """Camera Model = DE-16
Frames Per Second = 40
Autosave Movie Sum Count = 1
Specimen Pixel Size X (nanometers) = 0.05
Specimen Pixel Size Y (nanometers) = 0.05
Scan - Enable = Disable
Instrument Project TEMorSTEM Mode = 0
"""


@pytest.mark.parametrize("name, info", [
    ("20250101_00002_movie.mrc", "20250101_00002_info.txt"),  # DE's own names: rosettasciio pairs them
    ("run3_movie.mrc", "run3_info.txt"),  # renamed: paired here
    ("run4.mrc", "run4_info.txt"),
])
def test_a_direct_electron_movie_takes_its_calibration_from_the_info_file(tmp_path, name, info):
    _write_mrc(tmp_path / name, np.random.default_rng(0).normal(size=(4, 16, 16)))
    (tmp_path / info).write_text(_DE_INFO)
    with open_movie(tmp_path / name) as movie:
        assert movie.shape == (4, 16, 16)
        assert movie.calibration.pixel_size_nm == pytest.approx(0.05)
        assert movie.calibration.frame_interval_s == pytest.approx(0.025)  # 40 frames/s


def test_a_direct_electron_scan_s_info_file_is_set_aside_with_a_note(tmp_path):
    # A 4D-STEM scan's metadata describes no movie: the MRC is read on its own, and says so.
    _write_mrc(tmp_path / "scan_movie.mrc", np.zeros((3, 16, 16)))
    scan = _DE_INFO.replace("Scan - Enable = Disable", "Scan - Enable = Enable\nScan - Type = Random")
    (tmp_path / "scan_info.txt").write_text(scan)
    with open_movie(tmp_path / "scan_movie.mrc") as movie:
        assert movie.shape == (3, 16, 16) and movie.calibration.frame_interval_s is None
        assert any(n.startswith("scan_info.txt not used:") for n in movie.calibration.notes)
