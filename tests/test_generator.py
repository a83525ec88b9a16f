"""The synthetic generator: pixel alignment, labels, determinism, dose."""

import json
from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest
from skimage.feature import peak_local_max

from dislotrack.data_gen.conventions import glide_climb
from dislotrack.data_gen.imaging import (
    GAUSSIAN_COUNTS_ABOVE,
    Detector,
    Grid,
    Optics,
    PhaseGrating,
    Probe,
    aberration_phase,
    detect,
    poisson_counts,
    scherzer_defocus,
    splat,
    stem_image,
    transfer_function,
)
from dislotrack.data_gen.movie import (
    TrackSpec,
    closest_approach,
    draw_scenario,
    make_movie,
)
from dislotrack.data_gen.sample import GeneratorConfig, make_sample
from dislotrack.data_gen.specimen import draw_specimen


def _centroid(img, x, y, r=3):
    yy, xx = np.mgrid[y - r:y + r + 1, x - r:x + r + 1]
    w = img[y - r:y + r + 1, x - r:x + r + 1]
    return (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()


def _gaussian_vertex(img, x, y):
    """Sub-pixel peak of a sampled Gaussian (exact for a Gaussian) from 3 points per axis."""
    def v(a, b, c):
        la, lb, lc = np.log([a, b, c])
        return (la - lc) / (2 * (la - 2 * lb + lc))
    return (x + v(img[y, x - 1], img[y, x], img[y, x + 1]),
            y + v(img[y - 1, x], img[y, x], img[y + 1, x]))


@pytest.mark.parametrize("mode", ["hrtem", "stem"])
@pytest.mark.parametrize("pos_px", [(20.0, 17.0), (13.25, 22.6)])
def test_column_lands_on_predicted_pixel(mode, pos_px):
    grid = Grid(40, 0.1)
    xy = np.array([pos_px]) * grid.pixel_size
    pot = splat(xy, np.array([1.0]), grid)
    if mode == "stem":
        img = stem_image(pot, grid, Probe(sigma_nm=0.06, tail_fraction=0.0))
        signal = img
    else:
        o = Optics(defocus_nm=scherzer_defocus(1.0, 200), cs_mm=1.0, phase=0.2,
                   absorption=0.0, aperture_inv_nm=9.0)
        img = PhaseGrating(pot, grid, o, ref_peak=pot.max()).image(o)
        signal = np.abs(img - 1.0)
    ix, iy = int(round(pos_px[0])), int(round(pos_px[1]))
    assert np.unravel_index(np.argmax(signal), signal.shape) == (iy, ix)
    if pos_px == (ix, iy):
        # On a pixel centre the (round, unastigmatic) image is mirror-symmetric about it.
        win = signal[iy - 8:iy + 9, ix - 8:ix + 9]
        assert np.allclose(win, win[::-1, ::-1], atol=1e-4 * win.max())
    if mode == "stem":  # the incoherent image's centroid is the column position
        cx, cy = _centroid(signal, ix, iy)
        assert abs(cx - pos_px[0]) < 0.08 and abs(cy - pos_px[1]) < 0.08


@pytest.mark.parametrize("mode", ["hrtem", "stem"])
def test_heatmap_peaks_and_h_field_sit_on_the_cores(mode):
    cfg = GeneratorConfig(size=96, mode=mode, perfect_fraction=0.0, density=4.0, dipole_fraction=0.0,
                          realism=0.0)  # no vacuum edge: every drawn core is labelled
    s = make_sample(np.random.default_rng(3), cfg)
    t = s.targets()
    inner = s.cores[(s.cores.x > 3) & (s.cores.x < 92) & (s.cores.y > 3) & (s.cores.y < 92)]
    assert len(inner) >= 2
    peaks = peak_local_max(t["heatmap"], min_distance=2, threshold_abs=0.5)
    for _, c in inner.iterrows():
        d = np.hypot(peaks[:, 1] - c.x, peaks[:, 0] - c.y)
        k = int(np.argmin(d))
        py, px = peaks[k]
        cx, cy = _gaussian_vertex(t["heatmap"], px, py)
        assert abs(cx - c.x) < 0.02 and abs(cy - c.y) < 0.02
        hx, hy = t["hvec"][:, int(round(c.y)), int(round(c.x))]
        assert np.hypot(hx - c.hx, hy - c.hy) < 1e-6
        assert t["hmask"][int(round(c.y)), int(round(c.x))] == 1
    assert abs(np.hypot(inner.hx, inner.hy) - 1).max() < 1e-9


def test_same_seed_gives_bit_identical_sample_and_seeds_differ():
    cfg = GeneratorConfig(size=64)
    a = make_sample(np.random.default_rng(42), cfg)
    b = make_sample(np.random.default_rng(42), cfg)
    c = make_sample(np.random.default_rng(43), cfg)
    assert np.array_equal(a.image, b.image) and a.cores.equals(b.cores)
    assert np.array_equal(a.rs_mask, b.rs_mask)
    assert not np.array_equal(a.image, c.image)
    za = (a.image - a.image.mean()) / a.image.std()
    zc = (c.image - c.image.mean()) / c.image.std()
    assert abs((za * zc).mean()) < 0.3


def test_spawned_streams_are_independent():
    seeds = np.random.SeedSequence(7).spawn(2)
    imgs = [make_sample(np.random.default_rng(s), GeneratorConfig(size=64)).image for s in seeds]
    z = [(im - im.mean()) / im.std() for im in imgs]
    assert abs((z[0] * z[1]).mean()) < 0.3  # not merely different: uncorrelated


@pytest.mark.parametrize("dose", [20.0, 500.0, 5000.0])
def test_noise_matches_dose(dose):
    rng = np.random.default_rng(int(dose))
    det = Detector(dose=dose, mtf_sigma_px=0.0, gain=2.5, offset=100.0, read_noise=0.0)
    pixel = 0.1  # nm -> 1 A^2 per pixel, so dose e/A^2 = electrons per pixel
    img = detect(np.ones((256, 256)), det, pixel, rng)
    counts = (img - det.offset) / det.gain
    assert img.dtype == np.float32
    assert abs(counts.mean() / dose - 1) < 0.02
    assert abs(counts.var() / dose - 1) < 0.05


def test_counts_on_both_sides_of_the_gaussian_switch():
    # One image mixing means below (exact Poisson) and above the Gaussian threshold.
    means = np.repeat([3.0, GAUSSIAN_COUNTS_ABOVE * 0.9, GAUSSIAN_COUNTS_ABOVE * 1.1, 4000.0], 20000)
    counts = poisson_counts(means, np.random.default_rng(3)).reshape(4, -1)
    assert np.all(counts == np.rint(counts)) and counts.min() >= 0
    for c, m in zip(counts, means[::20000], strict=True):
        assert abs(c.mean() / m - 1) < 0.01
        assert abs(c.var() / m - 1) < 0.05


def test_movie_truth_follows_the_motion():
    cfg = GeneratorConfig(size=64, mode="stem", density=3.0)
    m = make_movie(np.random.default_rng(9), cfg, n_frames=6, frame_interval=0.5)
    assert m.frames.shape == (6, 64, 64) and m.frames.dtype == np.float32
    assert m.rs_masks.shape == m.frames.shape
    assert set(m.cores.frame) <= set(range(6))
    assert list(m.drift.columns) == ["frame", "dx", "dy"] and m.drift.dx.iloc[0] == 0
    assert len(m.truth) >= 1
    # A core's labelled position moves by (its own motion + the specimen drift): with the
    # drift removed, its glide and climb grow at its true velocities, exactly: the truth
    # is fitted on where the image shows the core (its lattice site is also moved by the
    # other cores' fields, which change as they move: 1 % off in the median, 25 % at worst).
    # That the labels carry the drawn speeds is checked by test_demo (truth -0.18 / 0.38).
    ps = m.meta["pixel_size"]
    labelled = m.cores.merge(m.drift, on="frame")
    assert labelled.particle.nunique() >= 2
    for p, g in labelled.groupby("particle"):
        assert g.frame.is_monotonic_increasing
        xy = np.c_[g.x - g.dx, g.y - g.dy] * ps
        glide, climb = glide_climb(xy - xy[0], g[["hx", "hy"]].to_numpy())
        t = (g.frame - g.frame.iloc[0]).to_numpy() * 0.5
        true = m.truth.set_index("particle").loc[p]
        if len(g) < 2:
            continue
        assert np.polyfit(t, glide, 1)[0] == pytest.approx(true.glide_velocity_nm_s, abs=1e-9)
        assert np.polyfit(t, climb, 1)[0] == pytest.approx(true.climb_velocity_nm_s, abs=1e-9)
    assert m.clean is None


def _gap(a: TrackSpec, b: TrackSpec) -> float:
    """Closest distance [nm] of two tracks in their shared frames, frame by frame (not by
    `closest_approach`, which the tests check)."""
    shared = range(max(a.first_frame, b.first_frame), min(a.last_frame, b.last_frame) + 1)
    return min((float(np.hypot(*(a.path[f - a.first_frame] - b.path[f - b.first_frame])))
                for f in shared), default=np.inf)


def test_movie_cores_keep_apart_but_a_dipole_nucleates_close():
    # Dense scenarios: no two cores in a frame closer than MIN_CORE_APPROACH_NM, except a
    # dipole's own pair, which nucleates and annihilates 0.6 nm apart.
    cfg = GeneratorConfig(size=128, density=4.0, dipole_fraction=1.5)
    spec = draw_specimen(np.random.default_rng(0), fov_nm=12.8)
    closest_pair, n = np.inf, 0
    for seed in range(10):
        scn = draw_scenario(np.random.default_rng(seed), cfg, spec, 20, 12.8)
        n += len(scn.tracks)
        for i, a in enumerate(scn.tracks):
            for b in scn.tracks[i + 1:]:
                if a.partner == b.particle:
                    closest_pair = min(closest_pair, _gap(a, b))
                else:
                    assert _gap(a, b) >= 1.0  # MIN_CORE_APPROACH_NM
    # A core is redrawn until it fits (120 tracks over the 10 seeds; 85 with a single try).
    assert n >= 100 and closest_pair == pytest.approx(0.6)
    b_vec = np.array([0.47, 0.0])
    a = TrackSpec(0, b_vec, 0, np.c_[np.arange(5.0), np.zeros(5)])
    assert closest_approach([a], [TrackSpec(1, b_vec, 0, a.path + [0, 0.3])]) == pytest.approx(0.3)
    # One shared frame counts (frame 4, same place), and so does a crossing mid-path.
    assert closest_approach([a], [TrackSpec(2, b_vec, 4, np.c_[4 - np.arange(5.0), np.zeros(5)])]) == 0.0
    crossing = TrackSpec(3, b_vec, 0, np.c_[4 - np.arange(5.0), np.full(5, 0.2)])
    assert closest_approach([a], [crossing]) == pytest.approx(0.2)


def test_cores_that_cannot_be_placed_apart_are_left_out():
    cfg = GeneratorConfig(size=64, density=200.0, dipole_fraction=0.0)  # far more than fit
    spec = draw_specimen(np.random.default_rng(0), fov_nm=6.4)
    for seed in range(3):
        tracks = draw_scenario(np.random.default_rng(seed), cfg, spec, 6, 6.4).tracks
        asked = 0.6 * 200 * 6.4**2 / 100  # singles per movie, on average (draw_scenario)
        assert 5 < len(tracks) < 0.5 * asked  # some placed, most left out
        assert all(_gap(a, b) >= 1.0 for i, a in enumerate(tracks) for b in tracks[i + 1:])


def test_movie_keeps_the_noise_free_frames_on_request():
    cfg = GeneratorConfig(size=64, mode="hrtem", density=3.0, dose=(100, 100))
    m = make_movie(np.random.default_rng(9), cfg, n_frames=4, keep_clean=True)
    assert m.clean.shape == m.frames.shape
    for clean, noisy in zip(m.clean, m.frames, strict=True):
        assert not np.allclose(clean, noisy)  # each frame is drawn from its expected image
        assert np.corrcoef(clean.ravel(), noisy.ravel())[0, 1] > 0.3


def test_transfer_function_is_the_lens_inside_the_aperture_and_zero_outside():
    # The lens is evaluated only within the aperture (|k|-sorted); check it against chi.
    grid = Grid(32, 0.1)
    o = Optics(defocus_nm=40.0, cs_mm=1.2, astig_nm=3.0, astig_angle=0.4, aperture_inv_nm=6.0)
    t = transfer_function(grid, o)
    kx, ky = grid.frequencies()
    kx, ky = np.broadcast_arrays(kx, ky)
    k = np.hypot(kx, ky)
    inside = k <= np.float32(o.aperture_inv_nm)
    assert 0 < inside.sum() < k.size
    assert np.all(t[~inside] == 0)
    assert t[0, 0] == pytest.approx(1.0)
    chi = aberration_phase(k**2, kx**2 - ky**2, 2 * kx * ky, o)
    # Envelopes only damp: |t| <= 1, and the phase is -chi (Kirkland's sign).
    assert np.all(np.abs(t[inside]) <= 1 + 1e-6)
    strong = inside & (np.abs(t) > 0.1)
    np.testing.assert_allclose(np.angle(t[strong] * np.exp(1j * chi[strong])), 0, atol=1e-4)


def test_generate_variants_share_a_structure_and_redraw_the_microscope(tmp_path):
    from dislotrack.data_gen.annotations import read_annotation
    from dislotrack.data_gen.export import generate_dataset

    paths = generate_dataset(out=tmp_path, n=3, size=64, mode="stem", seed=4, variants=2,
                             progress=False)
    anns = [read_annotation(p) for p in paths]
    assert [a.source["structure"] for a in anns] == [0, 0, 1]
    # Same structure: same cores up to scan-line jitter, same dose; a new probe and image.
    a, b = anns[0], anns[1]
    assert len(a.cores) == len(b.cores) > 0
    np.testing.assert_allclose(a.cores[["x", "y"]].to_numpy(float),
                               b.cores[["x", "y"]].to_numpy(float), atol=1.5)
    assert a.source["detector"]["dose"] == b.source["detector"]["dose"]
    assert a.source["imaging"] != b.source["imaging"]
    assert not np.array_equal(a.image, b.image)
    # variants=1 keeps the one-stream-per-item layout of earlier releases.
    single = generate_dataset(out=tmp_path / "one", n=2, size=64, mode="stem", seed=4, progress=False)
    first = read_annotation(single[0])
    np.testing.assert_array_equal(first.image, a.image)


def _generate(out, *options: str) -> int:
    from dislotrack.infer.cli import main

    return main(["generate", "--out", str(out), "--size", "32", "--mode", "stem", *options])


def test_generate_shows_frame_progress_unless_told_to_be_silent(tmp_path, capsys):
    from dislotrack.data_gen.export import generate_dataset

    # One short movie: below any size where a bar used to be shown.
    assert _generate(tmp_path / "a", "--n", "1", "--movie", "3") == 0
    err = capsys.readouterr().err
    assert "generating movies" in err and "3/3" in err and "frame" in err and "movie 1/1" in err
    generate_dataset(out=tmp_path / "b", n=1, size=32, mode="stem", movie_frames=2, progress=False)
    generate_dataset(out=tmp_path / "c", n=1, size=32, mode="stem", progress=False)
    assert capsys.readouterr() == ("", "")


def test_make_movie_reports_each_frame_as_it_is_rendered():
    from dislotrack.data_gen.movie import make_movie
    from dislotrack.data_gen.sample import GeneratorConfig

    seen: list[int] = []
    m = make_movie(np.random.default_rng(0), GeneratorConfig(size=32, mode="stem"), n_frames=3,
                   on_frame=seen.append)
    assert seen == [0, 1, 2] and len(m.frames) == 3


def test_generate_refuses_to_mix_runs_and_leaves_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "g"
    first = ["--n", "2", "--movie", "2", "--seed", "1"]
    assert _generate(out, *first) == 0
    (out / "notes.txt").write_text("mine")
    (out / "scan.tif").write_bytes(b"mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    # Fewer movies, or images, would leave the first run's movies beside the new items.
    for second, stale in ((["--n", "1", "--movie", "2", "--seed", "9"], "1 generated item that this run "
                           "would not overwrite (movie_00001)"), (["--n", "1"], "2 generated items")):
        assert _generate(out, *second) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dislotrack generate: error: --out ")
        assert stale in err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # The same command again overwrites its own items; the user's files stay.
    assert _generate(out, *first) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same seed: same bytes
    # A file of the user's under a name generate writes is never overwritten.
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "image_00000_cores.csv").write_text("mine")
    assert _generate(tmp_path / "u", "--n", "1") == 2
    assert "did not write (image_00000_cores.csv)" in capsys.readouterr().err
    assert (tmp_path / "u" / "image_00000_cores.csv").read_text() == "mine"


def test_generate_removes_a_half_written_item_so_the_same_command_reruns(tmp_path, monkeypatch):
    from dislotrack.data_gen import export

    def interrupted(folder, stem, ann):  # Ctrl-C after the image, before the sidecar
        (folder / f"{stem}.tif").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_annotation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.generate_dataset(out=tmp_path, n=1, size=32, mode="stem", progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert len(export.generate_dataset(out=tmp_path, n=1, size=32, mode="stem", progress=False)) == 1


def test_generate_refuses_a_file_as_folder_and_skips_json_that_is_no_annotation(tmp_path):
    from dislotrack.data_gen.export import generate_dataset

    (tmp_path / "file").write_text("mine")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        generate_dataset(out=tmp_path / "file", n=1, size=32, mode="stem", progress=False)
    out = tmp_path / "g"
    out.mkdir()
    (out / "image_00007.json").write_text("[]")  # JSON named like an item, but not one of ours
    assert len(generate_dataset(out=out, n=1, size=32, mode="stem", progress=False)) == 1
    assert (out / "image_00007.json").read_text() == "[]"


@pytest.mark.parametrize("dose", [(0.0, 0.0), (-10.0, 100.0), (100.0, 10.0), (float("nan"), 10.0)])
def test_an_impossible_dose_range_is_refused_by_name(dose):
    with pytest.raises(ValueError, match="dose"):
        GeneratorConfig(size=64, dose=dose)
    with pytest.raises(ValueError, match="density"):
        GeneratorConfig(size=64, density=-1.0)


@pytest.mark.parametrize(("kw", "message"), [({"n_frames": 1}, "n_frames"), ({"n_frames": 0}, "n_frames"),
                                             ({"frame_interval": 0.0}, "frame_interval"),
                                             ({"frame_interval": -1.0}, "frame_interval")])
def test_a_movie_needs_two_frames_and_a_positive_interval(kw, message):
    with pytest.raises(ValueError, match=message):
        make_movie(np.random.default_rng(0), GeneratorConfig(size=32), **kw)


def test_generate_takes_a_dose_and_frame_interval_and_refuses_what_it_cannot_write(tmp_path, capsys):
    from dislotrack.data_gen.annotations import read_annotation
    from dislotrack.infer.cli import main

    out = tmp_path / "g"
    assert main(["generate", "--out", str(out), "--n", "1", "--size", "32", "--movie", "2",
                 "--dose", "300", "--frame-interval", "0.25", "--pixel-size", "0.08",
                 "--material", "LiCoO2"]) == 0
    ann = read_annotation(out / "movie_00000.json")  # what it writes, its reader takes
    assert ann.frame_interval_s == 0.25 and ann.pixel_size_nm == 0.08
    # Values may carry their units, as a user copies them from a microscope's software.
    assert main(["generate", "--out", str(tmp_path / "u"), "--n", "1", "--size", "32", "--movie", "2",
                 "--frame-interval", "4 fps", "--pixel-size", "0.8 Å/px"]) == 0
    ann = read_annotation(tmp_path / "u" / "movie_00000.json")
    assert ann.frame_interval_s == 0.25 and ann.pixel_size_nm == pytest.approx(0.08, rel=1e-12)
    assert json.loads((out / "movie_00000.json").read_text())["source"]["material"] == "LiCoO2"
    assert json.loads((out / "movie_00000.json").read_text())["source"]["config"]["dose"] == [300.0, 300.0]
    capsys.readouterr()
    for args, message in ((["--movie", "2", "--frame-interval", "0"], "--frame-interval"),
                          (["--frame-interval", "2"], "applies to movies"),
                          (["--frame-interval", "1"], "applies to movies"),  # the default's value too
                          (["--dose", "100,10"], "dose"), (["--dose", "x"], "--dose"),
                          (["--seed", "-1"], "--seed"), (["--size", "4096"], "--size"),
                          (["--material", "NaCoO2"], "unknown material"),
                          (["--pixel-size", "5"], "--pixel-size 5.0 nm/px is outside"),
                          (["--pixel-size", "1 px"], "--pixel-size: 1.0 px is in pixels"),
                          (["--size", "8"], "--size must be >= 16 px"),
                          (["--basal-fraction", "2"], "--basal-fraction must be at most 1")):
        argparse_error = message == "--dose" or message.startswith("--pixel-size:")
        with pytest.raises(SystemExit) if argparse_error else nullcontext():
            code = main(["generate", "--out", str(tmp_path / "bad"), "--n", "1", *args])
            assert code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_generate_sets_how_many_dislocations_and_of_which_kinds(tmp_path, capsys):
    from dislotrack.infer.cli import build_parser, main

    out = tmp_path / "busy"
    assert main(["generate", "--out", str(out), "--n", "2", "--size", "64", "--density", "6",
                 "--dipole-fraction", "1", "--basal-fraction", "0", "--perfect-fraction", "0",
                 "--rocksalt-probability", "0"]) == 0
    config = json.loads((out / "image_00000.json").read_text())["source"]["config"]
    assert (config["density"], config["dipole_fraction"], config["basal_fraction"],
            config["perfect_fraction"], config["rocksalt_probability"]) == (6.0, 1.0, 0.0, 0.0, 0.0)
    cores = pd.concat([pd.read_csv(out / f"image_0000{i}_cores.csv") for i in (0, 1)])
    assert len(cores) and (cores["kind"] == "dipole").mean() > 0.5  # partners may lie outside
    # Movies: 2 F dipoles on average (F may exceed 1), whatever the density.
    assert main(["generate", "--out", str(tmp_path / "m"), "--n", "1", "--size", "64", "--movie", "2",
                 "--density", "0", "--dipole-fraction", "4"]) == 0
    movie = pd.read_csv(tmp_path / "m" / "movie_00000_tracks.csv")
    assert (movie.partner >= 0).sum() >= 2  # a dipole's two cores, each naming the other
    capsys.readouterr()
    for args, said in ((["--dipole-fraction", "1.5"], "--dipole-fraction is a share"),
                       (["--rocksalt-probability", "1.5"], "--rocksalt-probability must be at most 1"),
                       (["--density", "inf"], "--density must be a finite number"),
                       (["--movie", "3", "--perfect-fraction", "0.5"], "--perfect-fraction applies")):
        assert main(["generate", "--out", str(tmp_path / "bad"), "--n", "1", *args]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # The help states GeneratorConfig's defaults.
    (gen,) = [a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "generate"]
    helps = {a.dest: a.help for a in gen[1]._actions}
    for name in ("density", "dipole_fraction", "basal_fraction", "perfect_fraction", "rocksalt_probability"):
        assert f"(default {getattr(GeneratorConfig(), name):g}" in helps[name]


def test_a_sample_is_written_as_an_annotation_as_it_is(tmp_path):
    from dislotrack.data_gen.annotations import Annotation, read_annotation, write_annotation
    from dislotrack.data_gen.export import generate_dataset

    s = make_sample(np.random.default_rng(5), GeneratorConfig(size=64, perfect_fraction=0.0, density=3.0))
    assert len(s.cores) and "frame" not in s.cores  # a single image's table has no frame column
    side = write_annotation(tmp_path, "one", Annotation(s.image, s.cores, s.rs_mask, 0.1, None, {}))
    back = read_annotation(side).cores
    assert (back["frame"] == 0).all() and np.allclose(back[["x", "y"]], s.cores[["x", "y"]])
    generate_dataset(out=tmp_path / "g", n=1, size=32, progress=False)
    source = json.loads((tmp_path / "g" / "image_00000.json").read_text())["source"]
    assert source["version"] not in ("", None)  # which dislotrack made the files


def test_a_movie_sidecar_records_only_the_config_movies_use(tmp_path):
    # perfect_fraction draws perfect single images; a movie never uses it, so its sidecar
    # leaves it out (it recorded 0.1) while an image's keeps it.
    from dislotrack.data_gen.export import generate_dataset

    generate_dataset(out=tmp_path / "m", n=1, size=32, movie_frames=2, progress=False)
    generate_dataset(out=tmp_path / "i", n=1, size=32, progress=False)
    movie = json.loads((tmp_path / "m" / "movie_00000.json").read_text())["source"]["config"]
    image = json.loads((tmp_path / "i" / "image_00000.json").read_text())["source"]["config"]
    assert "perfect_fraction" not in movie and image["perfect_fraction"] == 0.1
    assert set(image) - set(movie) == {"perfect_fraction"}


def test_make_movie_takes_a_seed_refuses_a_dict_and_prints_briefly():
    # From a notebook: an int seed and a dict config failed deep inside (AttributeError),
    # and the sample printed every array.
    from dislotrack.data_gen.movie import make_movie

    cfg = GeneratorConfig(size=32)
    a = make_movie(3, cfg, n_frames=2)
    b = make_movie(np.random.default_rng(3), cfg, n_frames=2)
    np.testing.assert_array_equal(a.frames, b.frames)  # a seed is the generator it seeds
    with pytest.raises(TypeError, match=r"cfg must be a GeneratorConfig .* got dict"):
        make_movie(3, {"size": 32}, n_frames=2)
    text = repr(a)
    assert text.startswith("MovieSample(frames=(2, 32, 32), ") and len(text) < 200
