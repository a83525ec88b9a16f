"""``--strain`` outputs: moiré-ripple warning, in-memory input, summary and TIFF records,
the reference region and what strain.png draws (user test stop 36, figure review W5)."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from matplotlib.colors import to_rgba

from dislotrack.data_gen.dislocations import Dislocation
from dislotrack.data_gen.imaging import Detector, Grid, Probe
from dislotrack.data_gen.sample import render_frame, snapped
from dislotrack.data_gen.specimen import SpecimenParams, rotation_matrix
from dislotrack.infer.gpa import find_reflections, strain_maps
from dislotrack.infer.run import infer_one
from dislotrack.infer.strain import COMPONENTS, StrainWriter, strain_figure

PS = 0.1  # [nm/px]
NO_CORES = pd.DataFrame({"x": [], "y": []})


def stem_frame(rotation_deg: float, *, size: int = 256, dose: float = 1e7, cores=(),
               seed: int = 0) -> np.ndarray:
    """A clean LiNiO2 [100] STEM frame (noiseless at the default dose), rotated in plane by
    ``rotation_deg``, with misfit edge dislocations at ``cores`` ((x, y) [nm], sign)."""
    rng = np.random.default_rng(seed)
    grid = Grid(size, PS)
    spec = SpecimenParams(material="LiNiO2", zone="[100]", rotation=np.radians(rotation_deg))
    b = rotation_matrix(spec.rotation) @ spec.crystal.burgers["misfit"]
    disl = [snapped(spec, Dislocation(x, y, sign * b)) for x, y, sign in cores]
    probe = Probe(sigma_nm=0.05, tail_sigma_nm=0.3, tail_fraction=0.0, jitter_px=0.0,
                  collection=0.2, background=0.05)
    det = Detector(dose=dose, mtf_sigma_px=0.0, gain=1.0, offset=0.0, read_noise=0.0)
    sample = render_frame(spec, disl, grid=grid, mode="stem", imaging=probe, detector=det,
                          rng=rng, illumination=1.0)[0]
    return np.asarray(sample.image, dtype=np.float32)


def write_strain(tmp_path, frame: np.ndarray, **kwargs) -> StrainWriter:
    writer = StrainWriter(tmp_path, shape=(1, *frame.shape), pixel_size_nm=PS,
                          frame_interval_s=None, d_spacing_nm=0.473, **kwargs)
    writer(0, frame, NO_CORES)
    writer.close()
    return writer


# Finding 1: an aliased reflection in the mask makes stripes that look like strain.
@pytest.mark.parametrize(("rotation_deg", "stripes"), [(36.0, True), (0.0, False)])
def test_moire_ripple_from_an_aliased_reflection_is_warned(tmp_path, caplog, rotation_deg, stripes):
    frame = stem_frame(rotation_deg)
    with caplog.at_level(logging.WARNING, logger="dislotrack"):
        writer = write_strain(tmp_path, frame)
    said = [r.getMessage() for r in caplog.records if "moiré ripple" in r.getMessage()]
    assert bool(said) == stripes
    if stripes:  # at 36 deg: 2 g1 + g2 aliases to 0.25/nm from g2: 4.1 nm stripes of ~0.007
        (msg,) = said
        assert "period 4.1 nm" in msg and "aliases to within the GPA mask around g2" in msg
        assert re.search(r"reflection -?2·g1 [+-]1·g2, beyond the Nyquist", msg)
        assert "coarser strain_resolution_nm (about 3 nm)" in msg
        exx = tifffile.imread(tmp_path / "strain_exx.tif")
        assert np.nanmax(np.abs(exx)) > 5e-3  # the stripes the warning is about
        ripple = writer.settings()["moire_ripples"][0]
        assert ripple["period_nm"] == pytest.approx(4.1, abs=0.1)
        assert 4e-3 < ripple["amplitude"] < 1e-2


def test_the_suggested_resolution_removes_the_ripple(tmp_path, caplog):
    frame = stem_frame(36.0)
    with caplog.at_level(logging.WARNING, logger="dislotrack"):
        write_strain(tmp_path, frame, resolution_nm=3.0)  # as the warning at 1 nm suggests
    assert not any("moiré ripple" in r.getMessage() for r in caplog.records)
    exx = tifffile.imread(tmp_path / "strain_exx.tif")
    assert np.sqrt(np.nanmean(exx[40:-40, 40:-40] ** 2)) < 1.5e-3


# Finding 3: an array given to infer_one.
def test_infer_one_takes_an_array_with_a_name(tmp_path):
    frame = stem_frame(0.0, size=160, dose=3000)
    res = infer_one(frame, tmp_path, name="crop", pixel_size_nm=PS, strain=True, movie=False,
                    detector="gpa", progress=False)
    d = tmp_path / "crop"
    assert res.shape == (1, 160, 160)
    assert (d / "strain_exx.tif").is_file() and (d / "figures" / "strain.png").is_file()
    assert json.loads((d / "summary.json").read_text())["input"]["path"] == "<array>"
    with pytest.raises(TypeError, match=r"needs name=.*analyze\(array\) and write_tables"):
        infer_one(frame, tmp_path, pixel_size_nm=PS)
    with pytest.raises(TypeError, match="file path or a numpy array, not a list"):
        infer_one([frame, frame], tmp_path, name="x", pixel_size_nm=PS)


# Finding 4: the low-level route.
def test_strain_maps_border_is_the_filters_wrap_around_unless_masked():
    frame = stem_frame(0.0, size=128)
    g = find_reflections(frame, pixel_size_nm=PS, layered=True)
    raw = strain_maps(frame, g[0], g[1], pixel_size_nm=PS, resolution_nm=1.0)
    masked = strain_maps(frame, g[0], g[1], pixel_size_nm=PS, resolution_nm=1.0, mask_border=True)
    edge, inner = np.s_[:10], np.s_[20:-20, 20:-20]  # 1 nm at 0.1 nm/px; > 2 nm in
    # The wrap-around, as documented: 0.16 at the edge of a perfect lattice, 2e-4 inside.
    assert np.nanmax(np.abs(raw["exx"][edge])) > 50 * np.nanmax(np.abs(raw["exx"][inner]))
    assert np.isnan(masked["eyy"][edge]).all() and not masked["valid"][:, :10].any()
    assert np.allclose(masked["exx"][inner], raw["exx"][inner], equal_nan=True)
    assert "wraps the opposite edge in" in strain_maps.__doc__


def test_strain_figure_takes_strain_maps_result_and_refuses_too_few_maps():
    frame = stem_frame(0.0, size=96)
    g = find_reflections(frame, pixel_size_nm=PS, layered=True)
    maps = strain_maps(frame, g[0], g[1], pixel_size_nm=PS, resolution_nm=1.0)
    fig = strain_figure(frame, maps, NO_CORES)  # ux, uy, phases, g, ...: ignored
    assert [ax.get_title() for ax in fig.axes] == ["image (circles: cores)", "εxx", "εyy", "εxy",
                                                   "ω (rad)"]
    with pytest.raises(ValueError, match="maps must hold exx, eyy, exy, omega.*missing: omega"):
        strain_figure(frame, {k: maps[k] for k in ("exx", "eyy", "exy")}, NO_CORES)


# Finding 5: what was made, and from what.
def test_summary_and_tiffs_say_how_the_strain_maps_were_made(tmp_path):
    frame = stem_frame(0.0, size=160, dose=3000)
    infer_one(frame, tmp_path, name="s", pixel_size_nm=PS, strain=True, strain_resolution_nm=2.0,
              movie=False, detector="gpa", progress=False)
    d = tmp_path / "s"
    strain = json.loads((d / "summary.json").read_text())["strain"]
    assert strain["written"] and strain["resolution_nm"] == 2.0 and strain["border_px"] == 20
    assert strain["spacings_nm"][0] == pytest.approx(0.473, rel=0.02)
    assert np.allclose(1 / np.hypot(*np.array(strain["g_per_nm"]).T), strain["spacings_nm"])
    assert strain["reference"] == "mean lattice of frame 0's interior"
    assert "y = row pointing down" in strain["axes"]
    assert "tensor (not engineering) shear" in strain["components"]["strain_exy"]
    assert "> 0 counter-clockwise as displayed" in strain["components"]["rotation_rad"]
    for key, name in COMPONENTS.items():
        with tifffile.TiffFile(d / f"{name}.tif") as t:
            info = t.imagej_metadata["Info"]
        assert info.startswith(key) and "GPA at 2 nm resolution" in info


# Finding 11: a reference region (a wall of like-sign cores across the frame).
def test_strain_reference_region_sets_the_bulk_to_zero_rotation(tmp_path):
    cores = [(x, 12.8, 1.0) for x in (4.3, 12.8, 21.3)]
    frame = stem_frame(0.0, cores=cores)
    bottom = np.s_[180:235, 30:226]  # perfect crystal, > 5 nm below the wall (one frame: 2-D)
    omega = {}
    for ref in (None, "20:236,170:240"):
        name = "default" if ref is None else "bottom"
        infer_one(frame, tmp_path, name=name, pixel_size_nm=PS, strain=True, strain_reference=ref,
                  movie=False, detector="gpa", progress=False)
        omega[name] = np.nanmedian(tifffile.imread(tmp_path / name / "rotation_rad.tif")[bottom])
    assert abs(omega["default"]) > 5e-3  # the frame's mean lattice splits the wall's tilt
    assert abs(omega["bottom"]) < 2e-3
    summary = json.loads((tmp_path / "bottom" / "summary.json").read_text())
    assert summary["strain"]["reference"] == {"x0": 20, "x1": 236, "y0": 170, "y1": 240}
    with pytest.raises(ValueError, match="X0:X1,Y0:Y1"):
        infer_one(frame, tmp_path, name="bad", pixel_size_nm=PS, strain=True,
                  strain_reference="20-236,170-240", detector="gpa", progress=False)


# Figure review W5: colour-blind-safe core circles, labelled colour bars.
def test_strain_figure_circles_are_black_on_white_and_bars_are_labelled():
    frame = stem_frame(0.0, size=96)
    maps = {k: np.zeros_like(frame) for k in COMPONENTS}
    fig = strain_figure(frame, maps, pd.DataFrame({"x": [40.0], "y": [50.0]}))
    for ax in fig.axes:
        edges = {to_rgba(line.get_markeredgecolor()) for line in ax.lines}
        assert edges == {to_rgba("black"), to_rgba("white")}  # no green on red-blue maps
        white, black = sorted(ax.lines, key=lambda line: -line.get_markeredgewidth())
        assert to_rgba(white.get_markeredgecolor()) == to_rgba("white")  # the rim, under
    labels = [bar.get_ylabel() for ax in fig.axes[1:] for bar in ax.child_axes]  # inset bars
    assert labels == ["strain", "strain", "strain", "ω (rad)"]


# Finding 12: the noise floor, said (a perfect noisy lattice filled strain.png's colour bar).
@pytest.mark.parametrize(("rotation_deg", "dose"), [(0.0, 1000.0), (20.0, 200.0)])
def test_the_noise_estimate_matches_the_maps_rms_on_a_perfect_noisy_lattice(rotation_deg, dose):
    from dislotrack.infer.gpa import strain_noise

    frame = stem_frame(rotation_deg, dose=dose, seed=3)
    g = find_reflections(frame, pixel_size_nm=PS, layered=True)
    maps = strain_maps(frame, g[0], g[1], pixel_size_nm=PS, resolution_nm=1.0, mask_border=True)
    estimate = strain_noise(frame, maps["g"], pixel_size_nm=PS, resolution_nm=1.0)
    for k in COMPONENTS:
        measured = float(np.nanstd(maps[k][20:-20, 20:-20]))
        assert 0.8 < estimate[k] / measured < 1.3, (k, estimate[k], measured)


def test_the_noise_floor_is_recorded_and_drawn(tmp_path):
    frame = stem_frame(0.0, dose=500.0, seed=4)
    writer = write_strain(tmp_path, frame)
    noise = writer.settings()["noise_rms"]
    assert set(noise) == {"strain_exx", "strain_eyy", "strain_exy", "rotation_rad"}
    assert 1e-3 < noise["strain_exx"] < 2e-2  # a noisy frame's floor, not zero
    writer.figure(tmp_path / "strain.png")
    maps = {k: tifffile.imread(tmp_path / f"{name}.tif") for k, name in COMPONENTS.items()}
    fig = strain_figure(frame, maps, NO_CORES, noise=writer.noise)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[1].startswith("εxx, noise ±")
    # The colour scale spans at least 3 noise rms: noise alone stays pale.
    (image,) = fig.axes[1].images
    assert image.get_clim()[1] >= 3 * max(writer.noise[k] for k in ("exx", "eyy", "exy")) - 1e-12
