"""Linking of hand-made core detections into tracks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dislotrack.infer.linking import DEFAULT_MAX_STEP_NM, link_cores, search_range_px

PIXEL_NM = 0.1


def _core(frames, x0, y0, vx, vy, h, *, rng=None, jitter=0.0):
    """Detections of one core moving at (vx, vy) [px/frame] with half-plane direction h."""
    frames = np.asarray(list(frames))
    noise = rng.normal(scale=jitter, size=(len(frames), 2)) if rng is not None else 0.0
    xy = np.c_[x0 + vx * (frames - frames[0]), y0 + vy * (frames - frames[0])] + noise
    return pd.DataFrame(
        {"frame": frames, "x": xy[:, 0], "y": xy[:, 1], "score": 0.9, "hx": h[0], "hy": h[1]}
    )


def _tracks_of(linked: pd.DataFrame) -> dict[int, pd.DataFrame]:
    return {p: g for p, g in linked.groupby("particle")}


@pytest.mark.parametrize(
    ("interval", "speed", "step", "expected"),
    [
        (1.0, 2.0, None, 20.0),  # 2 nm/s * 1 s / 0.1 nm/px
        (0.5, 3.0, None, 15.0),
        (0.1, 0.1, None, 7.5),  # 0.01 nm, raised to the 0.75 nm floor (the detections' scatter)
        (0.04, 2.0, None, 7.5),  # 25 frames/s: 0.08 nm, raised likewise
        (None, 2.0, None, DEFAULT_MAX_STEP_NM / PIXEL_NM),
        (None, 1.2, None, 12.0),  # unknown interval: the speed at an assumed 1 s per frame
        (1.0, 2.0, 1.5, 15.0),  # explicit step wins
    ],
)
def test_search_range_from_physics(interval, speed, step, expected):
    reach = search_range_px(
        pixel_size_nm=PIXEL_NM, frame_interval_s=interval, max_speed_nm_s=speed, max_step_nm=step
    )
    assert reach == pytest.approx(expected)


def test_search_range_rejects_bad_units():
    with pytest.raises(ValueError, match="-0.1"):
        search_range_px(pixel_size_nm=-0.1)
    with pytest.raises(ValueError, match="frame_interval_s"):
        search_range_px(pixel_size_nm=0.1, frame_interval_s=0.0)
    with pytest.raises(ValueError, match=r"^max_speed_nm_s \[nm/s\] must be positive, got -1$"):
        search_range_px(pixel_size_nm=0.1, frame_interval_s=None, max_speed_nm_s=-1)


def test_crossing_cores_of_opposite_h_stay_apart_and_a_missed_frame_is_bridged():
    rng = np.random.default_rng(11)
    # Two cores pass within 0.3 px of each other around frame 5; core A is missed in frame 5.
    a = _core(range(11), 40.0, 50.0, 1.0, 0.0, (0.0, 1.0), rng=rng, jitter=0.1)
    b = _core(range(11), 50.0, 50.3, -1.0, 0.0, (0.0, -1.0), rng=rng, jitter=0.1)
    detections = pd.concat([a[a["frame"] != 5], b], ignore_index=True)
    linked = link_cores(detections, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0)
    tracks = _tracks_of(linked)
    assert len(tracks) == 2
    sizes = sorted(len(t) for t in tracks.values())
    assert sizes == [10, 11]  # A bridged over frame 5, B complete
    for track in tracks.values():
        assert track["hy"].nunique() == 1  # never mixes the two signs of h


def test_annihilated_core_is_not_spliced_onto_a_newborn_of_opposite_h():
    old = _core(range(0, 8), 30.0, 30.0, 0.5, 0.0, (1.0, 0.0))
    newborn = _core(range(9, 16), 34.3, 30.2, 0.5, 0.0, (-1.0, 0.0))  # 0.3 px from extrapolation
    linked = link_cores(pd.concat([old, newborn]), pixel_size_nm=PIXEL_NM, frame_interval_s=1.0)
    assert linked["particle"].nunique() == 2
    assert linked.groupby("particle")["hx"].nunique().eq(1).all()


def test_same_h_core_reappearing_after_a_gap_is_linked():
    # The control for the test above: with the same h, memory bridges the 1-frame gap.
    old = _core(range(0, 8), 30.0, 30.0, 0.5, 0.0, (1.0, 0.0))
    later = _core(range(9, 16), 34.3, 30.2, 0.5, 0.0, (1.0, 0.0))
    linked = link_cores(pd.concat([old, later]), pixel_size_nm=PIXEL_NM, frame_interval_s=1.0)
    assert linked["particle"].nunique() == 1


def test_h_turning_more_than_the_limit_breaks_the_track():
    first = _core(range(0, 6), 20.0, 20.0, 0.0, 0.0, (1.0, 0.0))
    turned = _core(range(6, 12), 20.0, 20.0, 0.0, 0.0, (np.cos(1.0), np.sin(1.0)))  # 57 deg
    detections = pd.concat([first, turned])
    assert link_cores(detections, pixel_size_nm=PIXEL_NM)["particle"].nunique() == 2
    wide = link_cores(detections, pixel_size_nm=PIXEL_NM, max_h_change_deg=70.0)
    assert wide["particle"].nunique() == 1


def test_core_faster_than_the_search_range_is_not_linked():
    fast = _core(range(6), 10.0, 10.0, 10.0, 0.0, (0.0, 1.0))  # 1 nm per 1 s frame
    slow = link_cores(fast, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, max_speed_nm_s=0.8)
    assert slow.empty  # every piece is a single-frame stub
    ok = link_cores(fast, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, max_speed_nm_s=1.2)
    assert ok["particle"].nunique() == 1
    # Without a frame interval the same limits apply per assumed 1 s frame.
    assert link_cores(fast, pixel_size_nm=PIXEL_NM, frame_interval_s=None, max_speed_nm_s=0.8).empty
    ok = link_cores(fast, pixel_size_nm=PIXEL_NM, frame_interval_s=None, max_speed_nm_s=1.2)
    assert ok["particle"].nunique() == 1


def test_a_fast_camera_still_links_the_scattered_detections_of_a_slow_core():
    # 25 frames/s: 2 nm/s allows 0.08 nm per frame, under the detections' 0.2 nm scatter.
    rng = np.random.default_rng(3)
    core = _core(range(40), 50.0, 50.0, 0.0, 0.004, (0.0, 1.0), rng=rng, jitter=1.5)
    linked = link_cores(core, pixel_size_nm=PIXEL_NM, frame_interval_s=0.04)
    assert linked["particle"].nunique() == 1 and len(linked) == 40


def test_drift_corrected_columns_are_linked():
    # A still core on a specimen drifting 10 px (1 nm) per frame: raw positions jump 10 px.
    core = _core(range(8), 30.0, 30.0, 10.0, 0.0, (0.0, 1.0))
    core["x_corr"] = core["x"] - 10.0 * core["frame"]
    core["y_corr"] = core["y"]
    linked = link_cores(core, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, max_speed_nm_s=0.2)
    assert linked["particle"].nunique() == 1
    raw = link_cores(
        core.drop(columns=["x_corr", "y_corr"]),
        pixel_size_nm=PIXEL_NM,
        frame_interval_s=1.0,
        max_speed_nm_s=0.2,
    )
    assert raw.empty


def test_short_tracks_are_dropped_and_ids_are_consecutive():
    long_a = _core(range(2, 10), 10.0, 10.0, 0.2, 0.0, (0.0, 1.0))
    stub = _core(range(0, 2), 80.0, 80.0, 0.0, 0.0, (0.0, 1.0))
    long_b = _core(range(0, 5), 50.0, 10.0, 0.2, 0.0, (0.0, -1.0))
    linked = link_cores(pd.concat([long_a, stub, long_b]), pixel_size_nm=PIXEL_NM, min_length=3)
    assert sorted(linked["particle"].unique()) == [0, 1]
    assert linked.loc[linked["particle"] == 0, "x"].iloc[0] == 50.0  # first to appear is 0
    assert (linked["x"] != 80.0).all()
    assert list(linked.columns) == ["frame", "x", "y", "score", "hx", "hy", "particle"]
    assert linked.index.tolist() == list(range(len(linked)))


def test_rejects_missing_h_and_handles_no_detections():
    bad = _core(range(3), 0.0, 0.0, 0.0, 0.0, (np.nan, 1.0))
    with pytest.raises(ValueError, match="finite"):
        link_cores(bad, pixel_size_nm=PIXEL_NM)
    empty = link_cores(bad.iloc[:0], pixel_size_nm=PIXEL_NM)
    assert empty.empty and "particle" in empty.columns


def test_gap_closing_joins_a_core_missed_for_longer_than_memory():
    # 0.3 nm/frame, unseen for frames 10-15: trackpy alone splits it (memory 2).
    seen = [*range(0, 10), *range(16, 30)]
    core = _core(seen, 20.0, 50.0, 3.0, 0.0, (0.0, 1.0))
    kw = dict(pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, max_speed_nm_s=0.5, memory=2)
    assert link_cores(core, max_gap=0, **kw)["particle"].nunique() == 2
    joined = link_cores(core, max_gap=12, **kw)
    assert joined["particle"].nunique() == 1 and len(joined) == len(seen)


def test_gap_closing_keeps_apart_what_is_not_a_continuation():
    kw = dict(pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, max_speed_nm_s=0.5, memory=2, max_gap=12)
    before = _core(range(0, 10), 20.0, 50.0, 3.0, 0.0, (0.0, 1.0))
    flipped = _core(range(16, 30), 68.0, 50.0, 3.0, 0.0, (0.0, -1.0))  # on the path, opposite h
    assert link_cores(pd.concat([before, flipped]), **kw)["particle"].nunique() == 2
    off_path = _core(range(16, 30), 68.0, 80.0, 3.0, 0.0, (0.0, 1.0))  # 3 nm off the path
    assert link_cores(pd.concat([before, off_path]), **kw)["particle"].nunique() == 2


def test_weak_detections_extend_track_ends_only_where_the_core_would_be():
    from dislotrack.infer.linking import extend_tracks

    core = _core(range(0, 20), 50.0, 50.0, 1.0, 0.0, (0.0, 1.0)).assign(particle=0)
    strong = core[core["frame"].between(5, 14)]
    weak = pd.concat([
        core[core["frame"].isin([3, 4, 15])],  # on the path: joins
        core[core["frame"] == 1],  # on the path after one frame without a peak: joins
        core[core["frame"] == 18],  # after two frames without a valid peak: stopped before
        _core([16], 86.0, 50.0, 0.0, 0.0, (0.0, 1.0)),  # 2 nm off the path
        _core([16], 66.0, 50.0, 0.0, 0.0, (0.0, -1.0)),  # on the path, opposite h
    ]).drop(columns="particle").assign(score=0.3)
    out = extend_tracks(strong, weak, pixel_size_nm=PIXEL_NM)
    assert out["frame"].tolist() == [1, 3, 4, *range(5, 15), 15]
    assert (out["particle"] == 0).all()
    assert out.loc[out["frame"] == 15, "x"].item() == pytest.approx(65.0)
    assert out.loc[out["frame"] == 1, "x"].item() == pytest.approx(51.0)
    # Without stepping over frames, the first frame without a peak ends the extension.
    strict = extend_tracks(strong, weak, pixel_size_nm=PIXEL_NM, max_skip=0)
    assert strict["frame"].tolist() == [3, 4, *range(5, 15), 15]
    assert len(extend_tracks(strong, weak, pixel_size_nm=PIXEL_NM, max_frames=0)) == 10


def test_weak_peaks_without_the_tracks_flag_columns_extend_them_unflagged():
    from dislotrack.infer.linking import extend_tracks

    # Detections flagged in rock salt (cleanup.FLAGS) but weak peaks without the column,
    # e.g. hand-made tables: the peaks join, flagged False (not found there); other
    # columns the weak peaks lack are unknown (NaN).
    core = _core(range(0, 12), 50.0, 50.0, 1.0, 0.0, (0.0, 1.0)).assign(particle=0)
    strong = core[core["frame"] < 10].assign(in_rocksalt=True, note="hand")
    weak = core[core["frame"] >= 10].drop(columns="particle").assign(score=0.3)
    out = extend_tracks(strong, weak, pixel_size_nm=PIXEL_NM)
    assert out["frame"].tolist() == list(range(12))
    assert out["in_rocksalt"].dtype == bool
    assert out["in_rocksalt"].tolist() == [True] * 10 + [False] * 2
    assert out["note"].isna().tolist() == [False] * 10 + [True] * 2


def test_crossing_cores_swapped_by_the_linker_are_repaired():
    from dislotrack.infer.linking import repair_crossings

    # Two like-h cores cross at frame 10 (x = 60): one moves right, one left.
    right = _core(range(20), 50.0, 50.0, 1.0, 0.3, (0.0, 1.0))
    left = _core(range(20), 70.0, 56.0, -1.0, -0.3, (0.0, 1.0))
    # The linker swapped them from frame 11 on.
    swapped = pd.concat([
        pd.concat([right[right.frame <= 10], left[left.frame > 10]]).assign(particle=0),
        pd.concat([left[left.frame <= 10], right[right.frame > 10]]).assign(particle=1),
    ], ignore_index=True)
    fixed = repair_crossings(swapped, pixel_size_nm=PIXEL_NM)
    for _, g in fixed.groupby("particle"):
        g = g.sort_values("frame")
        vx = np.diff(g["x"].to_numpy())
        assert np.allclose(vx, vx[0])  # each track moves one way throughout
    # Correctly linked (straight) crossing tracks are left alone.
    assert repair_crossings(pd.concat([right.assign(particle=0), left.assign(particle=1)]),
                            pixel_size_nm=PIXEL_NM)["particle"].tolist() == [0] * 20 + [1] * 20
    # Opposite h: never swapped, however kinked.
    opposite = swapped.copy()
    opposite.loc[opposite.particle == 1, "hy"] = -1.0
    assert repair_crossings(opposite, pixel_size_nm=PIXEL_NM)["particle"].equals(opposite["particle"])


def test_a_contested_weak_peak_goes_to_the_track_that_predicts_it_best():
    from dislotrack.infer.linking import extend_tracks

    # Track 0 ends at frame 9 heading for x = 60 (y = 50); track 1 ends at frame 9 heading
    # for x = 60 as well but 0.4 nm off in y. One weak peak at frame 10 on track 1's path.
    a = _core(range(0, 10), 50.0, 50.0, 1.0, 0.0, (0.0, 1.0)).assign(particle=0)
    b = _core(range(0, 10), 50.0, 54.0, 1.0, 0.0, (0.0, 1.0)).assign(particle=1)
    weak = _core([10], 60.0, 53.5, 0.0, 0.0, (0.0, 1.0)).drop(columns="particle", errors="ignore")
    out = extend_tracks(pd.concat([a, b], ignore_index=True), weak.assign(score=0.3),
                        pixel_size_nm=PIXEL_NM)
    joined = out[out["frame"] == 10]
    assert len(joined) == 1 and joined["particle"].item() == 1


@pytest.mark.parametrize("missed", [(), (10,)])
def test_cores_passing_each_other_keep_their_identities_with_velocity_prediction(missed):
    # Two like-h cores pass at 3 px/frame on paths 1-2 px apart near frame 10; one of
    # them may be missed there. Searching where each was last seen swaps them
    # (the swapped assignment moves each core less); extrapolating each track's own
    # velocity does not.
    a = _core(range(20), 10.0, 30.0, 3.0, 1.0, (0.0, 1.0))
    b = _core(range(20), 10.0, 51.0, 3.0, -1.0, (0.0, 1.0))
    b = b[~b.frame.isin(missed)]
    det = pd.concat([a.assign(truth=0), b.assign(truth=1)], ignore_index=True)

    def switches(linked: pd.DataFrame) -> int:
        return sum(int(g.sort_values("frame")["particle"].diff().fillna(0).ne(0).sum())
                   for _, g in linked.groupby("truth"))

    kw = dict(pixel_size_nm=PIXEL_NM, min_length=3, max_gap=0, repair=False)
    assert switches(link_cores(det, predict=False, **kw)) > 0  # the case is a real one
    linked = link_cores(det, **kw)
    assert switches(linked) == 0
    assert linked["particle"].nunique() == 2


def test_tables_without_the_needed_columns_are_refused_by_name():
    core = _core(range(3), 0.0, 0.0, 1.0, 0.0, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"detections lacks columns x, hx \(it has: frame, y, score, hy\)"):
        link_cores(core.drop(columns=["x", "hx"]), pixel_size_nm=PIXEL_NM)
    with pytest.raises(ValueError, match=r"lacks column score"):
        link_cores(core.drop(columns="score"), pixel_size_nm=PIXEL_NM, min_mean_score=0.5)
    with pytest.raises(TypeError, match="detections must be a pandas DataFrame, got dict"):
        link_cores(core.to_dict("list"), pixel_size_nm=PIXEL_NM)


@pytest.mark.parametrize("predict", [True, False])
def test_crowded_frames_are_linked_not_refused(predict, caplog):
    # 60 like-h cores within 4 x 4 nm, each within reach of dozens of others: a subnetwork
    # beyond trackpy's exact solver, which used to raise SubnetOversizeException.
    rng = np.random.default_rng(3)
    start = rng.uniform(0, 40, (60, 2))
    det = pd.concat([pd.DataFrame({"frame": f, "x": start[:, 0] + 0.2 * f, "y": start[:, 1],
                                   "hx": 0.0, "hy": -1.0}) for f in range(4)], ignore_index=True)
    with caplog.at_level("WARNING", logger="dislotrack"):
        out = link_cores(det, pixel_size_nm=0.1, frame_interval_s=1.0, max_speed_nm_s=2.0,
                         min_length=1, predict=predict)
    assert out.particle.nunique() == 60 and (out.groupby("particle").size() == 4).all()
    # Each track is one core: frame by frame at its start + 0.2 px per frame in x.
    core = out.groupby("particle").apply(lambda t: np.ptp(t.y.to_numpy()) + np.ptp(t.x - 0.2 * t.frame))
    assert (core < 1e-9).all()
    assert any("too crowded to link within 2 nm" in r.getMessage() for r in caplog.records)


def test_a_core_whose_h_scatters_as_the_network_s_does_stays_one_track():
    # The network's h scatters by 4 deg (median), 12 deg at the 99th percentile: 10 deg SD
    # (an outlier of 45 deg now and then) must not split a core into two tracks that take
    # turns claiming its detections (a false nucleation and annihilation).
    for seed in range(6):
        rng = np.random.default_rng(seed)
        core = _core(range(60), 50.0, 100.0, 0.3, 0.0, (0.0, -1.0), rng=rng, jitter=0.5)
        angle = np.arctan2(core["hy"], core["hx"]) + np.deg2rad(rng.normal(0, 10, len(core)))
        core["hx"], core["hy"] = np.cos(angle), np.sin(angle)
        linked = link_cores(core, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, memory=5)
        assert linked["particle"].nunique() == 1 and len(linked) == 60, seed


def test_a_fast_core_missed_just_after_it_appears_keeps_its_first_detections():
    # 1.4 nm/s at 0.1 nm/px: 14 px per frame; detected in frames 5, 6, then 8 on. The
    # two-detection head has no fitted velocity: averaging the tail's with zero put the
    # predicted reappearance 1.4 nm short, and the track began two frames late.
    core = _core(range(5, 40), 20.0, 100.0, 14.0, 0.0, (0.0, -1.0))
    core = core[core["frame"] != 7]
    for memory in (0, 5):
        linked = link_cores(core, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, memory=memory)
        assert linked["particle"].nunique() == 1 and linked["frame"].min() == 5, memory


def test_a_run_of_flipped_h_inside_a_track_stays_in_it():
    # The detector's h flipped for frames 20-26 of one moving core: not a second core of
    # the other sign born and annihilated on the first one's path, in its gap.
    rng = np.random.default_rng(4)
    core = _core(range(60), 50.0, 100.0, 0.5, 0.0, (0.0, -1.0), rng=rng, jitter=0.5)
    core.loc[core["frame"].between(20, 26), "hy"] = 1.0
    linked = link_cores(core, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, memory=5, min_length=5)
    assert linked["particle"].nunique() == 1 and len(linked) == 60
    # A core of the other sign 1.5 nm aside in those frames is a core of its own.
    other = core[core["frame"].between(20, 26)].assign(y=115.0)
    both = pd.concat([core[~core["frame"].between(20, 26)], other], ignore_index=True)
    linked = link_cores(both, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, memory=5, min_length=5)
    assert linked["particle"].nunique() == 2


def test_flipped_runs_never_give_a_track_two_detections_in_one_frame():
    # Two flipped runs in the same frames, 0.5 nm either side of the path: one rejoins
    # the track, the other cannot (the track holds those frames now).
    from dislotrack.infer.linking import absorb_flipped_runs

    def track(p, frames, y, hy):
        frames = np.asarray(list(frames))
        return pd.DataFrame({"particle": p, "frame": frames, "x": 100.0, "y": y, "hx": 0.0, "hy": hy})

    long = track(0, [f for f in range(60) if not 20 <= f <= 26], 100.0, -1.0)
    runs = [track(1, range(20, 27), 95.0, 1.0), track(2, range(20, 27), 105.0, 1.0)]
    out = absorb_flipped_runs(pd.concat([long, *runs], ignore_index=True), pixel_size_nm=PIXEL_NM)
    assert out["particle"].nunique() == 2
    assert not out.duplicated(["particle", "frame"]).any()
    # A run longer than max_frames is a track of its own.
    out = absorb_flipped_runs(pd.concat([long, runs[0]], ignore_index=True), pixel_size_nm=PIXEL_NM,
                              max_frames=6)
    assert out["particle"].nunique() == 2


@pytest.mark.parametrize("readings", [(-60, -120), (-90, -90, -135), (-90, -90, -90, -140)])
def test_a_core_whose_h_reads_alternately_either_side_of_its_own_stays_one_track(readings):
    # Every reading within 45 deg of the core's h (0, -1), which the h metric calls right,
    # but consecutive ones up to 60 deg apart: two interleaved tracks took turns at one
    # core (counted twice in every frame), each link refused, each track kept by memory.
    core = _core(range(30), 50.0, 100.0, 0.3, 0.0, (0.0, -1.0))
    angle = np.deg2rad(np.resize(readings, len(core)))
    core["hx"], core["hy"] = np.cos(angle), np.sin(angle)
    linked = link_cores(core, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, memory=5, min_length=6)
    assert linked["particle"].nunique() == 1 and len(linked) == 30


def test_a_core_whose_h_scatters_by_20_degrees_stays_one_track():
    for seed in range(8):
        rng = np.random.default_rng(seed)
        core = _core(range(40), 50.0, 100.0, 0.3, 0.0, (0.0, -1.0), rng=rng, jitter=0.5)
        angle = np.arctan2(core["hy"], core["hx"]) + np.deg2rad(rng.normal(0, 20, len(core)))
        core["hx"], core["hy"] = np.cos(angle), np.sin(angle)
        linked = link_cores(core, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, memory=5)
        # One track, holding every reading well inside the h metric's 45 deg (the gate compares
        # a reading with the track's mean h, a few degrees off the truth).
        right = int((np.deg2rad(40) > np.abs(angle - np.arctan2(-1.0, 0.0))).sum())
        assert linked["particle"].nunique() == 1 and len(linked) >= right, seed



@pytest.mark.parametrize(("apart_px", "h_b", "n_tracks"), [
    (3.0, (0.0, -1.0), 1),  # on one path, one h: one core
    (15.0, (0.0, -1.0), 2),  # 1.5 nm aside: off the path
    (3.0, (0.0, 1.0), 2),  # the other sign
])
def test_interleaved_tracks_join_only_on_one_path_with_one_h(apart_px, h_b, n_tracks):
    from dislotrack.infer.linking import merge_interleaved

    a = _core(range(0, 30, 2), 50.0, 100.0, 0.3, 0.0, (0.0, -1.0)).assign(particle=0)
    b = _core(range(1, 30, 2), 50.3, 100.0 + apart_px, 0.3, 0.0, h_b).assign(particle=1)
    out = merge_interleaved(pd.concat([a, b], ignore_index=True), pixel_size_nm=PIXEL_NM)
    assert out["particle"].nunique() == n_tracks
    # Tracks that share a frame are two cores, however close.
    both = pd.concat([a, b.assign(frame=b["frame"] - 1)], ignore_index=True)
    assert merge_interleaved(both, pixel_size_nm=PIXEL_NM)["particle"].nunique() == 2
    # One track seen only inside the other's gap: judged by the other side alone.
    gap = a[a["frame"].isin([0, 2, 20, 22])]
    inside = b[b["frame"].between(5, 15)].assign(y=100.0 + (3.0 if n_tracks == 1 else apart_px))
    out = merge_interleaved(pd.concat([gap, inside], ignore_index=True), pixel_size_nm=PIXEL_NM)
    assert out["particle"].nunique() == n_tracks


@pytest.mark.parametrize("flipped", [(27, 29), (28, 29), (0, 2), (0, 1)])
def test_flipped_h_at_a_track_s_end_stays_in_it(flipped):
    # The detector's h flipped in a core's last (first) frames: not a core of the other sign
    # that appeared on its path as it vanished (a false nucleation and annihilation there).
    rng = np.random.default_rng(5)
    core = _core(range(30), 50.0, 100.0, 0.3, 0.0, (0.0, -1.0), rng=rng, jitter=0.3)
    core.loc[core["frame"].isin(flipped), "hy"] = 1.0
    linked = link_cores(core, pixel_size_nm=PIXEL_NM, frame_interval_s=1.0, memory=5, min_length=2)
    assert linked["particle"].nunique() == 1 and len(linked) == 30
