"""Birth/death, dipoles, events and counts on hand-made tracks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dislotrack.infer.drift import apply_drift
from dislotrack.infer.events import (
    COUNT_COLUMNS,
    EVENT_COLUMNS,
    DipoleCriteria,
    birth_death,
    count_dislocations,
    find_events,
    near_rocksalt,
    summarise_tracks,
)
from dislotrack.infer.linking import link_cores
from dislotrack.infer.motion import track_motion

PIXEL_NM = 0.1
SHAPE = (200, 300)  # rows, cols [px]
N_FRAMES = 20
UP, DOWN = (0.0, -1.0), (0.0, 1.0)


def _track(particle, frames, x0, y0, h, vx=0.0, vy=0.0):
    """Tracked detections of one core moving at (vx, vy) [px/frame]."""
    frames = np.asarray(list(frames), dtype=int)
    step = frames - (frames[0] if len(frames) else 0)
    return pd.DataFrame(
        {
            "frame": frames,
            "x": x0 + vx * step,
            "y": y0 + vy * step,
            "score": 0.9,
            "hx": h[0],
            "hy": h[1],
            "particle": particle,
        }
    )


def _summary(tracks, **kwargs):
    return summarise_tracks(
        tracks,
        pixel_size_nm=PIXEL_NM,
        frame_interval_s=0.5,
        n_frames=N_FRAMES,
        image_shape=SHAPE,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("frames", "x0", "vx", "birth", "death"),
    [
        (range(0, N_FRAMES), 150.0, 0.0, "present", "survived"),
        (range(4, 12), 5.0, 4.0, "entered", "annihilated"),  # starts 0.55 nm from the left edge
        (range(4, 12), 260.0, 5.0, "nucleated", "left"),  # ends at x = 295, 0.45 nm from the edge
        (range(4, 12), 150.0, 0.0, "nucleated", "annihilated"),
        (range(0, 12), 5.0, 0.0, "present", "left"),  # present wins over the edge
        (range(4, N_FRAMES), 295.0, 0.0, "entered", "survived"),
    ],
)
def test_birth_and_death(frames, x0, vx, birth, death):
    fates = birth_death(
        _track(0, frames, x0, 100.0, DOWN, vx=vx),
        pixel_size_nm=PIXEL_NM,
        n_frames=N_FRAMES,
        image_shape=SHAPE,
        border_nm=2.0,
    )
    assert fates.loc[0, ["birth", "death"]].tolist() == [birth, death]


def test_a_track_unseen_in_its_first_frames_at_its_own_miss_rate_was_present():
    # Seen every other frame from frame 3: missing frames 0-2 is likely (0.47**3 = 0.10).
    patchy = birth_death(_track(0, range(3, N_FRAMES, 2), 150.0, 100.0, DOWN), pixel_size_nm=PIXEL_NM,
                         n_frames=N_FRAMES, image_shape=SHAPE)
    assert patchy.loc[0, ["birth", "death"]].tolist() == ["present", "survived"]
    # Seen in every frame from frame 3: it was not there before.
    steady = birth_death(_track(0, range(3, N_FRAMES - 3), 150.0, 100.0, DOWN), pixel_size_nm=PIXEL_NM,
                         n_frames=N_FRAMES, image_shape=SHAPE)
    assert steady.loc[0, ["birth", "death"]].tolist() == ["nucleated", "annihilated"]


def test_near_rocksalt_is_within_the_margin_of_the_mask():
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:40] = 1
    x = np.array([35.0, 25.0, 24.0, 35.0, 5.0])
    y = np.array([15.0, 15.0, 15.0, 25.0, 5.0])
    # inside; 5 px left of the domain; 6 px left; 6 px below; far
    assert near_rocksalt(x, y, mask, 5.0).tolist() == [True, True, False, False, False]
    assert not near_rocksalt(x, y, np.zeros_like(mask), 5.0).any()


def test_near_rocksalt_measures_from_the_point_not_its_nearest_pixel():
    mask = np.zeros((40, 60), np.uint8)
    mask[15, 30] = 1  # one rock-salt pixel
    # 4.9 / 5.45 / 5.5 px left of it, and 4.95 px on a diagonal: rounding the point to a
    # pixel (25, 25 or 24; 26, 18) would put these on the wrong side of a 5 px margin.
    x = np.array([25.1, 24.55, 24.5, 26.5])
    y = np.array([15.0, 15.0, 15.0, 11.5])
    dist = np.hypot(x - 30, y - 15)
    assert near_rocksalt(x, y, mask, 5.0).tolist() == (dist <= 5.0).tolist() == [True, False, False, True]
    assert near_rocksalt(x, y, mask, 5.5).tolist() == [True, True, True, True]


def test_a_track_that_begins_or_ends_at_rock_salt_was_hidden_not_born_or_annihilated():
    core = _track(0, range(4, 12), 150.0, 100.0, DOWN)
    plain = birth_death(core, pixel_size_nm=PIXEL_NM, n_frames=N_FRAMES, image_shape=SHAPE)
    assert plain.loc[0, ["birth", "death"]].tolist() == ["nucleated", "annihilated"]
    # Only the first / last detection's flag matters.
    flags = np.zeros(len(core), bool)
    flags[0] = True
    fates = birth_death(core.assign(in_rocksalt=flags), pixel_size_nm=PIXEL_NM, n_frames=N_FRAMES,
                        image_shape=SHAPE)
    assert fates.loc[0, ["birth", "death"]].tolist() == ["from_rocksalt", "annihilated"]
    fates = birth_death(core.assign(in_rocksalt=flags[::-1]), pixel_size_nm=PIXEL_NM,
                        n_frames=N_FRAMES, image_shape=SHAPE)
    assert fates.loc[0, ["birth", "death"]].tolist() == ["nucleated", "into_rocksalt"]
    # Present from the first frame and the frame edge take precedence.
    edge = _track(0, range(4, N_FRAMES), 5.0, 100.0, DOWN).assign(in_rocksalt=True)
    fates = birth_death(edge, pixel_size_nm=PIXEL_NM, n_frames=N_FRAMES, image_shape=SHAPE)
    assert fates.loc[0, ["birth", "death"]].tolist() == ["entered", "survived"]
    # No event for a core that appears out of rock salt.
    tracks = core.assign(in_rocksalt=True)
    events = find_events(tracks, _summary(tracks), pixel_size_nm=PIXEL_NM, frame_interval_s=0.5)
    assert events.empty


def test_a_dipole_that_appears_and_vanishes_together_at_rock_salt_nucleated_and_annihilated():
    # Two opposite cores appear side by side (1 nm) in frames 5 and 6 and vanish together
    # in frame 14, at rock salt: the dipole's own nucleation and annihilation.
    pair = pd.concat([_track(0, range(5, 15), 100.0, 100.0, DOWN, vx=-0.5),
                      _track(1, range(6, 15), 110.0, 100.0, UP, vx=0.5)]).assign(in_rocksalt=True)
    summary = _summary(pair)
    assert summary[["birth", "death"]].values.tolist() == [["nucleated", "annihilated"]] * 2
    events = find_events(pair, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5)
    assert events[["frame", "kind", "particles"]].values.tolist() == [
        [5, "dipole_nucleation", "0 1"], [14, "dipole_annihilation", "0 1"]]
    # Apart in time (4 frames) they stay hidden cores, each on its own.
    apart = pd.concat([_track(0, range(5, 15), 100.0, 100.0, DOWN),
                       _track(1, range(9, 19), 110.0, 100.0, UP)]).assign(in_rocksalt=True)
    summary = _summary(apart)
    assert summary[["birth", "death"]].values.tolist() == [["from_rocksalt", "into_rocksalt"]] * 2
    assert find_events(apart, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5).empty


def test_a_dipole_that_appears_together_with_one_core_at_the_frame_edge_nucleated_there():
    # Core 0 appears 1.5 nm from the left edge (within the 2 nm band), core 1 beside it
    # 1 nm further in, a frame later; they vanish together there.
    pair = pd.concat([_track(0, range(5, 15), 15.0, 100.0, DOWN, vx=0.0),
                      _track(1, range(6, 15), 25.0, 100.0, UP, vx=0.0)])
    summary = _summary(pair)
    assert summary["kind"].tolist() == ["dipole", "dipole"]
    assert summary[["birth", "death"]].values.tolist() == [["nucleated", "annihilated"]] * 2
    events = find_events(pair, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5)
    assert events[["frame", "kind"]].values.tolist() == [[5, "dipole_nucleation"],
                                                         [14, "dipole_annihilation"]]
    # One at the edge, the other at rock salt: still the pair's own nucleation.
    mixed = pair.assign(in_rocksalt=pair.particle == 1)
    assert _summary(mixed)[["birth", "death"]].values.tolist() == [["nucleated", "annihilated"]] * 2
    # Both in the band: a pair may glide in and out together, so they entered and left.
    both = pd.concat([_track(0, range(5, 15), 5.0, 100.0, DOWN), _track(1, range(6, 15), 15.0, 100.0, UP)])
    summary = _summary(both)
    assert summary[["birth", "death"]].values.tolist() == [["entered", "left"]] * 2
    assert find_events(both, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5).empty


def test_pair_annihilating_together_is_a_dipole():
    # Present from the start 6 nm apart, they meet and vanish together in frame 10.
    tracks = pd.concat(
        [
            _track(0, range(0, 11), 100.0, 100.0, DOWN, vx=2.9),
            _track(1, range(0, 11), 160.0, 100.0, UP, vx=-2.9),
        ]
    )
    summary = _summary(tracks)
    assert summary["kind"].tolist() == ["dipole", "dipole"]
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5)
    assert events[["frame", "kind", "particles"]].values.tolist() == [[10, "dipole_annihilation", "0 1"]]


def test_without_image_shape_edges_are_not_judged():
    fates = birth_death(_track(0, range(4, 12), 5.0, 100.0, DOWN), pixel_size_nm=PIXEL_NM,
                        n_frames=N_FRAMES)
    assert fates.loc[0, ["birth", "death"]].tolist() == ["nucleated", "annihilated"]


def test_dipole_nucleating_together_is_paired_and_gives_dipole_events():
    tracks = pd.concat(
        [
            _track(0, range(5, 15), 100.0, 100.0, DOWN, vx=-0.5),
            _track(1, range(6, 15), 110.0, 100.0, UP, vx=0.5),  # 1 nm away, one frame later
            _track(2, range(5, 15), 200.0, 100.0, UP),  # opposite h but 10 nm away
            _track(3, range(5, 15), 112.0, 110.0, DOWN),  # close, but same h as track 0
        ]
    )
    summary = _summary(tracks)
    assert list(summary.columns) == [
        "particle", "first_frame", "last_frame", "n_frames",
        "glide_velocity_nm_s", "climb_velocity_nm_s",
        "glide_velocity_se_nm_s", "climb_velocity_se_nm_s",
        "kind", "partner", "birth", "death",
    ]  # fmt: skip
    assert summary["kind"].tolist() == ["dipole", "dipole", "single", "single"]
    assert summary["partner"].tolist()[:2] == [1, 0]
    assert summary["partner"].isna().tolist() == [False, False, True, True]
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5)
    assert list(events.columns) == EVENT_COLUMNS
    dipole = events[events["particles"] == "0 1"].set_index("kind")
    # Core 1, first seen in frame 6 at 110, was at 109.5 in frame 5: midpoint (104.75, 100).
    assert dipole.loc["dipole_nucleation", ["frame", "t_s", "x", "y"]].tolist() == [
        5, 2.5, 104.75, 100.0,
    ]  # fmt: skip
    assert dipole.loc["dipole_annihilation", "frame"] == 14
    singles = events[~events["kind"].str.startswith("dipole")]
    assert sorted(singles["particles"]) == ["2", "2", "3", "3"]
    assert (events["frame"].diff().dropna() >= 0).all()


def test_dipole_by_proximity_present_from_the_start():
    tracks = pd.concat(
        [
            _track(0, range(0, 12), 100.0, 100.0, (1.0, 0.0)),
            _track(1, range(0, 12), 100.0, 115.0, (-0.9, 0.1)),  # 1.5 nm away, h ~ opposite
        ]
    )
    summary = _summary(tracks)
    assert summary["kind"].tolist() == ["dipole", "dipole"]
    assert summary["birth"].tolist() == ["present", "present"]
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5)
    assert events["kind"].tolist() == ["dipole_annihilation"]
    assert events.loc[0, "particles"] == "0 1"


@pytest.mark.parametrize("late, paired", [(15, False), (8, True)])
def test_a_core_nucleating_beside_one_long_there_is_no_dipole(late, paired):
    # Track 0 is there from the start; track 1 nucleates 1.5 nm away at frame `late`
    # (N_FRAMES = 20) and both stay. 15 frames later: it began alone, a single nucleation
    # beside a core (DESIGN.md: a dipole nucleates as a pair). 8 frames: within what a
    # partner's missed detections explain (max_lag_frames 12), a dipole by proximity.
    tracks = pd.concat([_track(0, range(0, N_FRAMES), 100.0, 100.0, (1.0, 0.0)),
                        _track(1, range(late, N_FRAMES), 100.0, 115.0, (-1.0, 0.0))])
    summary = _summary(tracks)
    assert summary["birth"].tolist() == ["present", "nucleated"]
    assert summary["kind"].tolist() == (["dipole", "dipole"] if paired else ["single", "single"])
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5)
    assert events["kind"].tolist() == ["nucleation"]
    # The same with the ends: one annihilates long before the other vanishes.
    flipped = tracks.assign(frame=N_FRAMES - 1 - tracks.frame)
    assert _summary(flipped)["kind"].tolist() == summary["kind"].tolist()


def test_a_single_image_pairs_dipoles_by_their_geometry():
    image = pd.concat([_track(0, [0], 100.0, 100.0, (1.0, 0.0)),
                       _track(1, [0], 100.0, 111.0, (-1.0, 0.0)),  # 1.1 nm, opposite h
                       _track(2, [0], 200.0, 100.0, (1.0, 0.0)),
                       _track(3, [0], 240.0, 100.0, (-1.0, 0.0))])  # 4 nm: too far
    summary = summarise_tracks(image, pixel_size_nm=PIXEL_NM, frame_interval_s=None, n_frames=1,
                               image_shape=SHAPE)
    assert summary["kind"].tolist() == ["dipole", "dipole", "single", "single"]
    assert summary["partner"].tolist()[:2] == [1, 0]
    counts = count_dislocations(summary, n_frames=1, frame_interval_s=None)
    assert counts["n_dipoles"].tolist() == [1]
    # In a movie, tracks that share one frame only are not paired on it.
    brief = pd.concat([_track(0, range(0, 6), 100.0, 100.0, (1.0, 0.0)),
                       _track(1, range(5, 12), 100.0, 111.0, (-1.0, 0.0))])
    assert (_summary(brief)["kind"] == "single").all()


def test_separated_pair_is_no_dipole_and_each_track_gets_one_partner():
    apart = pd.concat(
        [
            _track(0, range(0, 12), 100.0, 100.0, DOWN),
            _track(1, range(0, 12), 100.0, 100.0, UP, vx=8.0),  # > 3 nm apart after 4 frames
        ]
    )
    assert (_summary(apart)["kind"] == "single").all()
    crowded = pd.concat(
        [
            _track(0, range(3, 12), 100.0, 100.0, DOWN),
            _track(1, range(3, 12), 115.0, 100.0, UP),  # 1.5 nm
            _track(2, range(3, 12), 100.0, 108.0, UP),  # 0.8 nm: the closer partner
        ]
    )
    summary = _summary(crowded)
    assert summary["partner"].tolist() == [2, pd.NA, 0]
    wide = _summary(crowded, dipoles=DipoleCriteria(distance_nm=0.5))
    assert (wide["kind"] == "single").all()


def test_counts_per_frame():
    tracks = pd.concat(
        [
            _track(0, range(0, N_FRAMES), 250.0, 50.0, DOWN),
            _track(1, [5, 6, 8, 9], 100.0, 100.0, DOWN),  # missed in frame 7, still counted
            _track(2, range(5, 10), 110.0, 100.0, UP),
        ]
    )
    summary = _summary(tracks)
    fraction = np.linspace(0.0, 0.19, N_FRAMES)
    counts = count_dislocations(
        summary, n_frames=N_FRAMES, frame_interval_s=0.5, rocksalt_fraction=fraction
    )
    assert list(counts.columns) == COUNT_COLUMNS
    assert counts["n_dislocations"].tolist() == [1] * 5 + [3] * 5 + [1] * 10
    assert counts["n_dipoles"].tolist() == [0] * 5 + [1] * 5 + [0] * 10
    assert counts["t_s"].iloc[4] == 2.0
    np.testing.assert_array_equal(counts["rocksalt_fraction"], fraction)
    plain = count_dislocations(summary, n_frames=N_FRAMES)
    assert plain["rocksalt_fraction"].isna().all() and plain["t_s"].isna().all()
    with pytest.raises(ValueError, match=r"\(20,\)"):
        count_dislocations(summary, n_frames=N_FRAMES, rocksalt_fraction=fraction[:5])


def test_counts_follow_the_fates_of_tracks_missed_at_the_movie_ends():
    patchy = [f for f in range(1, N_FRAMES - 1) if f not in (5, 9, 13)]  # misses 1 in 6
    tracks = pd.concat([_track(0, patchy, 250.0, 50.0, DOWN),
                        _track(1, range(8, 12), 100.0, 100.0, DOWN)])
    summary = _summary(tracks)
    assert summary.set_index("particle").loc[0, ["birth", "death"]].tolist() == ["present", "survived"]
    counts = count_dislocations(summary, n_frames=N_FRAMES)
    assert counts["n_dislocations"].tolist() == [1] * 8 + [2] * 4 + [1] * 8  # not 0 at the ends


def test_no_tracks_gives_empty_tables_and_zero_counts():
    tracks = _track(0, [], 0.0, 0.0, DOWN)
    summary = _summary(tracks)
    assert summary.empty and list(summary.columns)[:2] == ["particle", "first_frame"]
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM)
    assert events.empty and list(events.columns) == EVENT_COLUMNS
    assert events["frame"].dtype == int
    counts = count_dislocations(summary, n_frames=3)
    assert counts["n_dislocations"].tolist() == [0, 0, 0]


def test_detections_to_events_end_to_end():
    # The specimen drifts +1 px/frame in x (1 frame/s). Relative to the specimen, core 0
    # (h down, b_hat = +x) moves +1 px/frame: glide +0.1 nm/s. A dipole nucleates in
    # frame 6 (cores 0.8 nm apart) and its cores move apart at 1 px/frame each; the
    # core with h up (b_hat = -x) moving +x glides at -0.1 nm/s, its partner too.
    rng = np.random.default_rng(31)
    frames = np.arange(N_FRAMES)
    drift = pd.DataFrame({"frame": frames, "dx": frames.astype(float), "dy": 0.0})
    truth = pd.concat(
        [
            _track(0, frames, 60.0, 60.0, DOWN, vx=1.0 + 1.0),
            _track(1, frames[6:], 150.0, 120.0, DOWN, vx=-1.0 + 1.0),
            _track(2, frames[6:], 158.0, 120.0, UP, vx=1.0 + 1.0),
        ]
    )
    detections = truth.drop(columns="particle").sample(frac=1.0, random_state=1)
    detections[["x", "y"]] += rng.normal(scale=0.2, size=(len(detections), 2))
    detections = detections[~((detections["frame"] == 10) & (detections["hy"] < 0))]  # missed

    corrected = apply_drift(detections, drift)
    linked = link_cores(corrected, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0)
    tracks = track_motion(linked, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0)
    summary = summarise_tracks(
        tracks, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, n_frames=N_FRAMES, image_shape=SHAPE
    )
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0)

    assert summary["n_frames"].tolist() == [N_FRAMES, N_FRAMES - 6, N_FRAMES - 7]
    np.testing.assert_allclose(summary["glide_velocity_nm_s"], [0.1, -0.1, -0.1], atol=0.01)
    np.testing.assert_allclose(summary["climb_velocity_nm_s"], 0.0, atol=0.01)
    assert summary["kind"].tolist() == ["single", "dipole", "dipole"]
    assert summary[["birth", "death"]].to_numpy().tolist() == [
        ["present", "survived"], ["nucleated", "survived"], ["nucleated", "survived"],
    ]  # fmt: skip
    assert events["kind"].tolist() == ["dipole_nucleation"]
    assert events.loc[0, "frame"] == 6 and events.loc[0, "particles"] == "1 2"
    assert events.loc[0, ["x", "y"]].tolist() == pytest.approx([154.0, 120.0], abs=0.5)


def _blob(frames, x, y):
    """Unlinked detections (no particle) at one place: an unresolved close dipole."""
    frames = np.asarray(list(frames), dtype=int)
    return pd.DataFrame({"frame": frames, "x": x, "y": y, "score": 0.3, "hx": 1.0, "hy": 0.0})


def test_unresolved_dipole_blob_moves_dipole_events_to_where_it_was_seen():
    # A dipole resolved in frames 5-14; a single blob at its midpoint in frames 3-4
    # (before) and 15 (after), and an unrelated blob 2 nm away in frame 2.
    tracks = pd.concat([_track(0, range(5, 15), 100.0, 100.0, DOWN),
                        _track(1, range(5, 15), 110.0, 100.0, UP)])
    summary = _summary(tracks)
    blobs = pd.concat([_blob([3, 4, 15], 105.0, 101.0), _blob([2], 125.0, 100.0)])
    plain = find_events(tracks, summary, pixel_size_nm=PIXEL_NM).set_index("kind")
    moved = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, unlinked=blobs).set_index("kind")
    assert plain.loc["dipole_nucleation", "frame"] == 5
    assert plain.loc["dipole_annihilation", "frame"] == 14
    assert moved.loc["dipole_nucleation", "frame"] == 3  # not 2: that blob is 2 nm away
    assert moved.loc["dipole_annihilation", "frame"] == 15
    # Where the blob was seen in the frame the event moved to (raw pixels of that frame).
    assert moved.loc["dipole_nucleation", ["x", "y"]].tolist() == [105.0, 101.0]
    assert plain.loc["dipole_nucleation", ["x", "y"]].tolist() == [105.0, 100.0]
    capped = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, unlinked=blobs, max_blob_frames=1)
    assert capped.set_index("kind").loc["dipole_nucleation", "frame"] == 4


def test_a_dipole_event_moved_through_a_drifting_blob_takes_the_blob_s_raw_position():
    # The specimen drifts +3 px per frame in x: raw x = corrected x + 3 * frame.
    drifted = lambda t: t.assign(x_corr=t.x, y_corr=t.y, x=t.x + 3.0 * t.frame)  # noqa: E731
    tracks = drifted(pd.concat([_track(0, range(5, 15), 100.0, 100.0, DOWN),
                                _track(1, range(5, 15), 110.0, 100.0, UP)], ignore_index=True))
    blobs = drifted(_blob([3, 4], 105.0, 100.0))
    ev = find_events(tracks, _summary(tracks), pixel_size_nm=PIXEL_NM, unlinked=blobs).set_index("kind")
    assert ev.loc["dipole_nucleation", "frame"] == 3
    assert ev.loc["dipole_nucleation", ["x", "y"]].tolist() == [105.0 + 9.0, 100.0]  # not 105 + 15


def test_a_dipole_whose_cores_appear_a_frame_apart_lies_at_their_midpoint_in_the_event_frame():
    # The specimen drifts +3 px per frame in x; core 1 is first seen a frame after core 0
    # and last seen a frame after it.
    drifted = lambda t: t.assign(x_corr=t.x, y_corr=t.y, x=t.x + 3.0 * t.frame)  # noqa: E731
    tracks = drifted(pd.concat([_track(0, range(5, 14), 100.0, 100.0, DOWN),
                                _track(1, range(6, 15), 110.0, 104.0, UP)], ignore_index=True))
    ev = find_events(tracks, _summary(tracks), pixel_size_nm=PIXEL_NM).set_index("kind")
    assert ev.loc["dipole_nucleation", ["frame", "x", "y"]].tolist() == [5, 105.0 + 15.0, 102.0]
    annihilation = ev.loc["dipole_annihilation", ["frame", "x", "y"]].tolist()
    assert annihilation == pytest.approx([14, 105.0 + 42.0, 102.0])


def test_a_blob_reaching_the_first_or_last_frame_is_no_dipole_event():
    # The blob sits at the pair's midpoint from frame 0 (and to the last frame): the pair
    # was already (still) there, unresolved; no nucleation or annihilation was seen.
    from dislotrack.infer.events import drop_unseen_edge_events

    tracks = pd.concat([_track(0, range(3, 17), 100.0, 100.0, DOWN),
                        _track(1, range(3, 17), 110.0, 100.0, UP)])
    summary = _summary(tracks)
    assert set(summary.birth) == {"nucleated"} and set(summary.death) == {"annihilated"}
    blobs = _blob([0, 1, 2, 17, 18, 19], 105.0, 100.0)
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, unlinked=blobs)
    assert events.frame.tolist() == [0, N_FRAMES - 1]  # moved to the movie's edges
    kept, fates = drop_unseen_edge_events(events, summary, n_frames=N_FRAMES)
    assert kept.empty and set(fates.birth) == {"present"} and set(fates.death) == {"survived"}
    # One frame short of either edge: seen, kept as they were.
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, unlinked=_blob([1, 2, 17], 105.0, 100.0))
    kept, fates = drop_unseen_edge_events(events, summary, n_frames=N_FRAMES)
    assert kept.frame.tolist() == [1, 17] and fates.equals(summary)


def test_blobs_do_not_move_single_events():
    tracks = _track(0, range(5, 15), 100.0, 100.0, DOWN)
    summary = _summary(tracks)
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, unlinked=_blob([3, 4], 100.0, 100.0))
    assert events.set_index("kind").loc["nucleation", "frame"] == 5


def test_an_unseen_nucleation_changes_only_the_births():
    # The blob sits at frames 0-2: the nucleation is dropped and the cores were present;
    # the annihilation, seen, stays and so do the deaths.
    from dislotrack.infer.events import drop_unseen_edge_events

    tracks = pd.concat([_track(0, range(3, 17), 100.0, 100.0, DOWN),
                        _track(1, range(3, 17), 110.0, 100.0, UP)])
    summary = _summary(tracks)
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, unlinked=_blob([0, 1, 2], 105.0, 100.0))
    kept, fates = drop_unseen_edge_events(events, summary, n_frames=N_FRAMES)
    assert kept.kind.tolist() == ["dipole_annihilation"]
    assert set(fates.birth) == {"present"} and set(fates.death) == {"annihilated"}


def test_a_dipole_appearing_in_frame_1_nucleated_there_though_one_core_is_patchy():
    # Core 1 is missed in 2 of its 19 frames: alone, missing frame 0 too is likely enough
    # (0.11) to call it present. Its partner, seen in every frame, nucleated in frame 1:
    # a dipole nucleates as a pair, so both did (and annihilated in frame N - 2). With
    # both patchy, both missed in one frame is likely (side by side, they are missed
    # together): present.
    for first, last, kind, fate in ((1, N_FRAMES, "dipole_nucleation", "birth"),
                                    (0, N_FRAMES - 1, "dipole_annihilation", "death")):
        steady = _track(0, range(first, last), 148.0, 100.0, UP, vx=-0.5 * (first == 1))
        patchy = _track(1, [f for f in range(first, last) if f not in (8, 14)], 152.0, 100.0, DOWN)
        tracks = pd.concat([steady, patchy], ignore_index=True)
        summary = _summary(tracks)
        assert summary["kind"].tolist() == ["dipole", "dipole"]
        assert summary[fate].tolist() == ["nucleated" if fate == "birth" else "annihilated"] * 2
        events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM)
        assert events["kind"].tolist() == [kind] and events.loc[0, "particles"] == "0 1"
        assert events.loc[0, "frame"] == (1 if fate == "birth" else N_FRAMES - 2)
        steady = steady[~steady["frame"].isin([8, 14])]
        summary = _summary(pd.concat([steady, patchy], ignore_index=True))
        assert summary[fate].tolist() == ["present" if fate == "birth" else "survived"] * 2


def test_a_dipole_whose_blob_was_linked_into_one_core_nucleated_once_where_the_blob_was():
    # Frames 3-8: the unresolved pair, one blob at (150, 100), linked into core 0's track
    # (its h); from frame 9 the two cores glide apart. Partners appear 6 frames apart.
    blob = _track(0, range(3, 9), 150.0, 100.0, UP)
    left = _track(0, range(9, N_FRAMES), 146.0, 100.0, UP, vx=-1.0)
    right = _track(1, range(9, N_FRAMES), 154.0, 100.0, DOWN, vx=1.0)
    tracks = pd.concat([blob, left, right], ignore_index=True)
    summary = _summary(tracks)
    assert summary["kind"].tolist() == ["dipole", "dipole"]
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM)
    nucleation = events[events["kind"].str.endswith("nucleation")]
    assert nucleation["kind"].tolist() == ["dipole_nucleation"]
    assert nucleation.iloc[0]["frame"] == 3
    # Core 1 moved back to frame 3 at its own velocity (148, 100): midpoint (149, 100),
    # 0.1 nm from the blob (the first positions' midpoint, (152, 100), is 0.2 nm off).
    assert nucleation.iloc[0][["x", "y"]].tolist() == pytest.approx([149.0, 100.0])


def test_a_dipole_whose_second_core_appears_later_lies_where_both_were_in_the_event_frame():
    # Cores glide apart at 3 px per frame each; core 1 is first seen two frames late.
    tracks = pd.concat([_track(0, range(5, 15), 100.0, 100.0, DOWN, vx=-3.0),
                        _track(1, range(7, 15), 116.0, 100.0, UP, vx=3.0)], ignore_index=True)
    events = find_events(tracks, _summary(tracks), pixel_size_nm=PIXEL_NM).set_index("kind")
    # Core 1 in frame 5 was at 110: the midpoint (105, 100), not (108, 100).
    assert events.loc["dipole_nucleation", ["frame", "x", "y"]].tolist() == pytest.approx([5, 105.0, 100.0])


def test_a_dipole_whose_partner_is_seen_late_still_moves_back_through_its_blob():
    # Core 1 is first seen 3 frames after core 0; the pair's blob sits at (100, 100) in
    # frames 3-4, where core 1 moved back at its velocity puts the midpoint.
    tracks = pd.concat([_track(0, range(5, 18), 100.0, 100.0, DOWN, vx=-4.0),
                        _track(1, range(8, 18), 112.0, 100.0, UP, vx=4.0)], ignore_index=True)
    blobs = _blob([3, 4], 100.0, 100.0)
    criteria = DipoleCriteria(max_frame_gap=5)  # as track_detections sets it (memory 5)
    events = find_events(tracks, _summary(tracks, dipoles=criteria), pixel_size_nm=PIXEL_NM,
                         dipoles=criteria, unlinked=blobs)
    assert events.iloc[0][["frame", "kind", "x"]].tolist() == [3, "dipole_nucleation", 100.0]


def test_a_dipole_with_one_core_seen_in_frame_0_was_there_from_the_start():
    # Core 0 is seen from frame 0, its opposite partner beside it from frame 1: the
    # dipole was there, the partner missed in frame 0 (no nucleation of either).
    tracks = pd.concat([_track(0, range(0, 15), 100.0, 100.0, DOWN),
                        _track(1, range(1, 15), 110.0, 100.0, UP)], ignore_index=True)
    summary = _summary(tracks)
    assert summary["birth"].tolist() == ["present", "present"]
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM)
    assert "nucleation" not in events["kind"].str.replace("dipole_", "").tolist()


def test_a_dipole_counts_from_its_nucleation_event_where_that_precedes_its_tracks():
    # The pair was an unresolved blob in frames 6-7 (the event moved back there) and its
    # second core is first seen at 9: counts.csv agrees with events.csv from frame 6.
    summary = pd.DataFrame({"particle": [0, 1], "first_frame": [8, 9], "last_frame": [15, 14],
                            "birth": "nucleated", "death": "annihilated", "kind": "dipole",
                            "partner": pd.array([1, 0], dtype="Int64")})
    events = pd.DataFrame({"frame": [6, 16], "kind": ["dipole_nucleation", "dipole_annihilation"],
                           "particles": ["0 1", "0 1"]})
    counts = count_dislocations(summary, n_frames=20, events=events)
    assert counts["n_dipoles"].tolist() == [0] * 6 + [1] * 11 + [0] * 3
    assert counts["n_dislocations"].tolist() == [0] * 6 + [2] * 11 + [0] * 3
    assert summary["first_frame"].tolist() == [8, 9]  # the summary itself is kept
    plain = count_dislocations(summary, n_frames=20)
    assert plain["n_dipoles"].tolist() == [0] * 9 + [1] * 6 + [0] * 5


def test_a_pair_born_together_outranks_a_closer_core_that_was_there_all_along():
    # A and B nucleate together 1 nm apart at frame 8; C, there from frame 0 with B's h,
    # sits 0.5 nm from A. Ranked by closeness alone, C took A, and the dipole nucleation
    # became two single nucleations (review stop 38).
    a = _track(0, range(8, N_FRAMES), 100.0, 100.0, UP)
    b = _track(1, range(8, N_FRAMES), 110.0, 100.0, DOWN)
    c = _track(2, range(0, N_FRAMES), 100.0, 95.0, DOWN)
    tracks = pd.concat([a, b, c])
    summary = _summary(tracks)
    assert summary["kind"].tolist() == ["dipole", "dipole", "single"]
    assert summary["partner"].tolist()[:2] == [1, 0]
    events = find_events(tracks, summary, pixel_size_nm=PIXEL_NM, frame_interval_s=0.5)
    assert events["kind"].tolist() == ["dipole_nucleation"] and events.loc[0, "frame"] == 8
    assert events.loc[0, "x"] == pytest.approx(105.0)
