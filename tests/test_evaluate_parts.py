"""evaluate scores the results of part of a movie (infer --frames / --region) against the
truth of that part: frames renumbered from the window's first, positions in the region's
pixels, events as infer sees them at the window's ends and the region's edges."""

import json

import numpy as np
import pandas as pd
import pytest

from dislotrack.data_gen.export import generate_dataset
from dislotrack.infer.cli import main
from dislotrack.infer.evaluate import evaluate_folders
from dislotrack.infer.evaluate_parts import Part, find_part, part_events, part_tracks

PX = 0.1  # the generated movie's pixel size [nm/px]
#: A window and region of the generated movie (seed 12, 96 px, 14 frames): its dipole (3, 4)
#: nucleates (frame 5) and annihilates (frame 12) well inside; the other dipole's events lie
#: before the window or right of the region, and particle 0 glides out through x = 64 at
#: frame 10 (it left: no annihilation).
FRAMES, REGION = (2, 14), (8, 64, 0, 88)
PART_NAME = "movie_00000_frames2-14_x8-64_y0-88"


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    truth = tmp_path_factory.mktemp("truth")
    generate_dataset(out=truth, n=1, size=96, mode="stem", movie_frames=14, seed=12, progress=False)
    return truth


def _in_part(cores: pd.DataFrame, frames=FRAMES, region=REGION) -> pd.DataFrame:
    """The truth's cores in the part, as infer numbers them (written out here, not taken
    from the code under test)."""
    (a, b), (x0, x1, y0, y1) = frames, region
    keep = (cores.frame.between(a, b - 1) & (cores.x >= x0 - 0.5) & (cores.x < x1 - 0.5)
            & (cores.y >= y0 - 0.5) & (cores.y < y1 - 0.5))
    return cores[keep].assign(frame=cores.frame - a, x=cores.x - x0, y=cores.y - y0)


def _write_results(folder, cores: pd.DataFrame, events: pd.DataFrame, *, options: dict | None,
                   shape: tuple[int, int, int]) -> None:
    """An infer-like results folder holding ``cores`` as detections and tracks."""
    folder.mkdir(parents=True)
    cores.to_csv(folder / "detections.csv", index=False)
    cores.to_csv(folder / "tracks.csv", index=False)
    summary = cores.groupby("particle").frame.agg(["min", "max", "size"]).reset_index()
    summary.assign(glide_velocity_nm_s=0.0, climb_velocity_nm_s=0.0).to_csv(
        folder / "track_summary.csv", index=False)
    events.to_csv(folder / "events.csv", index=False)
    meta = {"input": {"shape": list(shape)}}
    if options is not None:
        meta["options"] = options
    (folder / "summary.json").write_text(json.dumps(meta))


def _true_events_in_part(truth) -> pd.DataFrame:
    """The dipole (3, 4)'s two events, as infer would report them for the part [px]."""
    ev = pd.read_csv(truth / "movie_00000_events.csv")
    ev = ev[ev.particles == "3 4"]
    return pd.DataFrame({"frame": ev.frame - FRAMES[0], "kind": ev.kind,
                         "x": ev.x_nm / PX - REGION[0], "y": ev.y_nm / PX - REGION[2],
                         "particles": ev.particles})


def test_the_truth_written_as_a_part_scores_perfectly_and_a_shifted_one_does_not(movie, tmp_path):
    cores = pd.read_csv(movie / "movie_00000_cores.csv")
    part = _in_part(cores)
    assert part.frame.min() == 0 and len(part) < len(cores)
    shape = (FRAMES[1] - FRAMES[0], REGION[3] - REGION[2], REGION[1] - REGION[0])
    options = {"frames": "2:14", "region": "8:64,0:88", "border_nm": 2.0}
    pred = tmp_path / "pred"
    assert len(_true_events_in_part(movie)) == 2  # the generated movie is the one described
    _write_results(pred / PART_NAME, part, _true_events_in_part(movie), options=options, shape=shape)
    r = evaluate_folders(pred, movie, figures=False, progress=False)[PART_NAME]
    assert r["part"] == {"frames": "2:14", "region": "8:64,0:88"}
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (len(part), 0, 0, 1.0)
    assert r["rmse_nm"] == 0 and r["h_accuracy"] == 1.0
    # Both events of dipole (3, 4) and nothing else: not the events before the window or
    # right of the region, no annihilation of particle 0 where it leaves the region.
    assert (r["event_tp"], r["event_fp"], r["event_fn"], r["event_f1"]) == (2, 0, 0, 1.0)
    assert r["identity_switches"] == 0

    # The same cores and events in the whole movie's pixels (not the region's), or in its
    # frame numbers (not the window's; the dipole's cores hold still a while, so some match).
    events = _true_events_in_part(movie)
    for name, shift, most_f1 in (("unshifted", {"x": REGION[0]}, 0.0), ("late", {"frame": FRAMES[0]}, 0.8)):
        wrong = [t.assign(**{k: t[k] + v for k, v in shift.items()}) for t in (part, events)]
        folder = tmp_path / name / PART_NAME
        _write_results(folder, *wrong, options=options, shape=shape)
        r = evaluate_folders(folder.parent, movie, figures=False, progress=False)[PART_NAME]
        assert r["f1"] <= most_f1 and r["event_tp"] == 0, name


def test_a_part_is_read_from_summary_json_or_else_from_the_folder_name():
    shape = (14, 96, 96)
    by_options = find_part({"frames": "2:14", "region": "8:64,0:88"}, "renamed", "movie", shape)
    by_name = find_part(None, "movie_frames2-14_x8-64_y0-88", "movie", shape)
    assert by_options == by_name == Part(2, 14, 8, 64, 0, 88, 14, 96, 96)
    assert find_part({"frames": None, "region": None}, "movie", "movie", shape) is None
    assert find_part(None, "movie_frames3-9", "movie", shape).options == {"frames": "3:9", "region": None}
    with pytest.raises(ValueError, match="not a window"):  # another, longer movie's window
        find_part({"frames": "2:40", "region": None}, "movie_frames2-40", "movie", shape)


def test_part_events_mirror_infer_at_the_window_ends_and_the_region_edges():
    # Frames 2..11, columns 20..79 of 20 frames of 100 x 100 px; 2 nm = 20 px at 0.1 nm/px.
    part = Part(2, 12, 20, 80, 0, 100, 20, 100, 100)
    rows = [(2, "nucleation", 50, 50, "0"),       # in the window's first frame: present
            (11, "annihilation", 50, 50, "1"),    # in its last: survived
            (5, "nucleation", 30, 50, "2"),       # 10 px inside the cut left edge: entered
            (5, "nucleation", 50, 5, "3"),        # by the frame's own top edge: as the whole's truth
            (6, "annihilation", 90, 50, "4"),     # right of the region
            (7, "dipole_nucleation", 35, 50, "5 6"),  # one core in the band: still a dipole
            (8, "dipole_annihilation", 34, 60, "7 8")]  # the region cut the pair: a single
    events = pd.DataFrame(rows, columns=["frame", "kind", "x", "y", "particles"])
    events = events.assign(x_nm=events.x * PX, y_nm=events.y * PX).drop(columns=["x", "y"])
    cores = pd.DataFrame([(7, 5, 25.0, 50.0), (7, 6, 45.0, 50.0), (8, 7, 15.0, 60.0), (8, 8, 53.0, 60.0)],
                         columns=["frame", "particle", "x", "y"])
    got = part_events(events, cores, part, pixel_size_nm=PX, border_nm=2.0)
    assert got.particles.tolist() == ["3", "5 6", "7 8"]
    assert got.kind.tolist() == ["nucleation", "dipole_nucleation", "annihilation"]
    assert got.frame.tolist() == [3, 5, 6]  # from the window's first frame
    # Region pixels; the cut pair's event at the core the region holds.
    assert np.allclose(got[["x_nm", "y_nm"]].to_numpy() / PX, [[30, 5], [15, 50], [33, 60]])


def test_a_cut_track_is_scored_by_the_velocity_of_its_piece_in_the_part():
    # h = (0, 1): b_hat = (1, 0), so glide is +x and climb +y [px/frame -> nm/s at 1 s].
    t = np.arange(20)
    v = np.where(t < 8, 0.0, 2.0)  # still, then gliding at 2 px/frame
    x = 10 + np.cumsum(v) - v[0]
    drift = pd.DataFrame({"frame": t, "dx": 0.5 * t, "dy": -0.3 * t})
    cores = pd.DataFrame({"frame": t, "x": x + drift.dx, "y": 40 - 0.5 * t + drift.dy,
                          "hx": 0.0, "hy": 1.0, "particle": 0})
    truth = pd.DataFrame({"particle": [0], "n_frames": [20], "glide_velocity_nm_s": [0.13],
                          "climb_velocity_nm_s": [-0.05]})
    part = Part(8, 20, 0, 100, 0, 100, 20, 100, 100)
    got, n_cut = part_tracks(truth, cores, part, drift=drift, pixel_size_nm=PX, frame_interval_s=1.0,
                         min_frames=10)
    assert n_cut == 1
    assert got.glide_velocity_nm_s[0] == pytest.approx(0.2)
    assert got.climb_velocity_nm_s[0] == pytest.approx(-0.05)
    whole = Part(0, 20, 0, 100, 0, 100, 20, 100, 100)  # holds every label: the truth's own
    got, n_cut = part_tracks(truth, cores, whole, drift=drift, pixel_size_nm=PX, frame_interval_s=1.0,
                         min_frames=10)
    assert n_cut == 0 and got.glide_velocity_nm_s[0] == 0.13
    got, _ = part_tracks(truth, cores, part, drift=None, pixel_size_nm=PX, frame_interval_s=1.0,
                         min_frames=10)
    assert np.isnan(got.glide_velocity_nm_s[0])  # no true drift: not guessed


@pytest.fixture(scope="module")
def found_movie(tmp_path_factory):
    """A movie whose cores the bundled model finds (seed 4, 96 px, 12 frames): particle 0
    near x = 38 throughout, particle 1 nucleating at x = 81 in frame 3."""
    truth = tmp_path_factory.mktemp("found")
    generate_dataset(out=truth, n=1, size=96, mode="stem", movie_frames=12, seed=4, progress=False)
    return truth


def test_infer_of_a_part_is_scored_beside_the_whole_movie_which_is_unchanged(found_movie, tmp_path,
                                                                              capsys):
    pred, name = tmp_path / "pred", "movie_00000_frames2-12_x0-80_y0-96"
    base = ["infer", str(found_movie / "movie_00000.tif"), "--out", str(pred), "--model", "default",
            "--no-movie", "--min-length", "2"]
    assert main(base) == 0
    whole = evaluate_folders(pred, found_movie, progress=False)["movie_00000"]
    assert main([*base, "--frames", "2:12", "--region", "0:80,:"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(pred), "--truth", str(found_movie)]) == 0
    assert name in capsys.readouterr().out  # a row of the table
    report = json.loads((pred / "evaluation.json").read_text())
    assert report["movie_00000"] == whole and set(report) == {"movie_00000", name}
    r = report[name]
    assert r["part"] == {"frames": "2:12", "region": "0:80,0:96"}
    n_true = len(_in_part(pd.read_csv(found_movie / "movie_00000_cores.csv"), (2, 12), (0, 80, 0, 96)))
    assert r["tp"] + r["fn"] == n_true and r["tp"] > 0 and r["f1"] > 0.8
    # The truth's one event (frame 3, x = 81 px) lies right of the region: none to find.
    assert r["event_tp"] + r["event_fn"] == 0 and r["event_f1"] is None
    assert (pred / name / "figures" / "evaluation.png").stat().st_size > 0


def test_velocities_of_a_window_are_scored_against_the_truth_of_its_frames(movie, tmp_path):
    cores = pd.read_csv(movie / "movie_00000_cores.csv")
    part = _in_part(cores, (1, 14), (0, 96, 0, 96))  # particle 0: 13 of its 14 frames
    folder = tmp_path / "pred" / "movie_00000_frames1-14"
    _write_results(folder, part, _true_events_in_part(movie).iloc[:0], options={"frames": "1:14"},
                   shape=(13, 96, 96))
    truth = pd.read_csv(movie / "movie_00000_tracks.csv").set_index("particle")
    pd.read_csv(folder / "track_summary.csv").assign(  # the whole track's true velocities
        glide_velocity_nm_s=lambda s: s.particle.map(truth.glide_velocity_nm_s),
        climb_velocity_nm_s=lambda s: s.particle.map(truth.climb_velocity_nm_s),
    ).to_csv(folder / "track_summary.csv", index=False)
    r = evaluate_folders(folder.parent, movie, figures=False, progress=False)[folder.name]
    assert r["part"] == {"frames": "1:14", "region": None} and r["f1"] == 1.0
    # Scored: particle 0, cut by the part, over its 13 frames there (the others are labelled
    # in fewer than 10 frames: no velocity is scored for them).
    assert r["long_tracks_matched"] == 1 and "1 true track cut by the part" in r["note"]
    # Fitted to its 13 labelled frames, drift removed: close to the whole track's (lattice steps).
    assert r["median_glide_rel_error"] < 0.1


@pytest.mark.parametrize("particles", [None, np.nan, "x"])
def test_part_events_without_particle_ids_are_judged_by_their_place(particles):
    # A hand-made events table: no particles column, blank cells, or text.
    part = Part(0, 20, 20, 80, 0, 100, 20, 100, 100)
    events = pd.DataFrame({"frame": [5, 6], "kind": ["nucleation", "annihilation"],
                           "x_nm": [5.0, 2.5], "y_nm": [5.0, 5.0]})  # 30 px inside the region; 5 px
    if particles is not None:
        events["particles"] = particles
    got = part_events(events, pd.DataFrame(columns=["frame", "particle", "x", "y"]), part,
                      pixel_size_nm=PX, border_nm=2.0)
    assert got.frame.tolist() == [5]  # the other lies in the band of the cut left edge
    assert got.x_nm.tolist() == pytest.approx([5.0 - 20 * PX])
