"""Stage jumps found from the cores' common shift (infer/jumps.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dislotrack.infer.jumps import AGREE_NM, common_shift, stage_jumps, with_jumps


def _cores(rng: np.random.Generator, n_cores: int = 10, n_frames: int = 10,
           jump: tuple[int, tuple[float, float]] | None = None) -> pd.DataFrame:
    """Cores creeping 0.3 px per frame with 1 px of scatter; a jump moves all from a frame on."""
    start = rng.uniform(20, 180, (n_cores, 2))
    rows = []
    for f in range(n_frames):
        xy = start + 0.3 * f + rng.normal(0, 1.0, start.shape)
        if jump is not None and f >= jump[0]:
            xy = xy + jump[1]
        rows += [(f, x, y) for x, y in xy]
    return pd.DataFrame(rows, columns=["frame", "x", "y"])


def _no_drift(n_frames: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"frame": range(n_frames), "dx": 0.0, "dy": 0.0})


KW = dict(pixel_size_nm=0.1, reach_px=20.0, image_shape=(200, 200))
#: A jump is the median of ~10 cores' shifts, each scattered by 1.4 px (two detections of
#: 1 px): its standard error is about 0.55 px, and this is under 3 of them.
TOL_PX = 1.5


def test_a_jump_of_the_whole_field_is_found_and_removed_with_the_drift():
    rng = np.random.default_rng(0)
    det = _cores(rng, jump=(5, (30.0, -12.0)))
    drift = _no_drift().assign(dx=lambda d: 0.5 * d.frame)  # registered drift, seen in the cores
    det["x"] += 0.5 * det.frame
    jumps = stage_jumps(det, drift, **KW)
    assert jumps.frame.tolist() == [5] and jumps.n_cores.tolist() == [10]
    np.testing.assert_allclose(jumps[["dx", "dy"]].to_numpy()[0], (30.3, -11.7), atol=TOL_PX)
    fixed = with_jumps(drift, jumps).set_index("frame")
    x = det.x.to_numpy() - fixed.loc[det.frame, "dx"].to_numpy()
    y = det.y.to_numpy() - fixed.loc[det.frame, "dy"].to_numpy()
    steps = np.hypot(*np.diff(np.c_[x, y].reshape(10, 10, 2), axis=0).transpose(2, 0, 1))
    assert steps.max() < 6  # the corrected cores creep on across frame 5


@pytest.mark.parametrize("case", ["no jump", "within reach", "two cores", "a minority"])
def test_what_is_not_a_stage_jump(case):
    rng = np.random.default_rng(1)
    if case == "no jump":
        det = _cores(rng)
    elif case == "within reach":  # 8 px: within half of the 20 px a core may move per frame
        det = _cores(rng, jump=(5, (6.0, -5.0)))
    elif case == "two cores":  # too few to tell a jump from two cores gliding alike
        det = _cores(rng, n_cores=2, jump=(5, (30.0, -12.0)))
    else:  # 2 of 10 cores leap together; the other 8 stay: the field did not move
        det = _cores(rng)
        leap = (det.frame >= 5) & (det.groupby("frame").cumcount() < 2)
        det.loc[leap, "x"] += 40.0
    assert stage_jumps(det, _no_drift(), **KW).empty


def test_two_jumps_are_each_measured_against_the_first():
    rng = np.random.default_rng(2)
    det = _cores(rng, n_frames=12, jump=(4, (25.0, 10.0)))
    det.loc[det.frame >= 8, "x"] -= 40.0
    det.loc[det.frame >= 8, "y"] += 22.0
    jumps = stage_jumps(det, _no_drift(12), **KW)
    assert jumps.frame.tolist() == [4, 8]
    # Each jump plus the cores' own step of 0.3 px per frame.
    np.testing.assert_allclose(jumps[["dx", "dy"]].to_numpy(), [[25.3, 10.3], [-39.7, 22.3]], atol=TOL_PX)


def test_analyze_follows_a_stage_jump_in_a_movie(tmp_path):
    """The demo's movie with the stage knocked 2.3 nm sideways halfway: the same tracks
    and events as without the knock, and a warning that says where and how far."""
    from dislotrack.infer.demo import make_demo_movie
    from dislotrack.infer.pipeline import analyze

    big = make_demo_movie(tmp_path, n_frames=24, size=288)[1].frames
    frames = big[:, :256, :256]
    knocked = frames.copy()
    knocked[12:] = big[12:, 14:270, 23:279]  # the field of view moves: content -23 px x, -14 px y
    kw = dict(pixel_size_nm=0.08, frame_interval_s=1.0, progress=False)
    plain = analyze(frames, **kw)
    res = analyze(knocked, **kw)
    said = [w for w in res.warnings if "the whole field jumped" in w]
    assert len(said) == 1 and "frame 12: (" in said[0], res.warnings
    assert len(res.track_summary) == len(plain.track_summary)
    assert res.events.kind.tolist() == plain.events.kind.tolist()
    # The drift step there (registered + jump) is the knock plus the movie's own drift step.
    d, d0 = (r.drift.set_index("frame") for r in (res, plain))
    step = (d.loc[12] - d.loc[11]) - (d0.loc[12] - d0.loc[11])
    assert step.dx == pytest.approx(-23, abs=1.5) and step.dy == pytest.approx(-14, abs=1.5)
    assert not [w for w in plain.warnings if "the whole field jumped" in w]


def test_a_jump_within_the_linking_reach_but_beyond_half_of_it_is_found():
    # 15 px: linking could bridge it, but all cores moving 1.5 nm together in one frame
    # is the stage (a user test's 19 px jump under a 20 px reach broke every track).
    det = _cores(np.random.default_rng(4), jump=(5, (12.0, -9.0)))
    jumps = stage_jumps(det, _no_drift(), **KW)
    assert jumps.frame.tolist() == [5]
    np.testing.assert_allclose(jumps[["dx", "dy"]].to_numpy()[0], (12.3, -8.7), atol=TOL_PX)


def test_cores_moving_together_frame_after_frame_are_not_a_jump():
    # 8 of 10 cores (a wall gliding at 1.2 nm/s, under the 2 nm/s limit) move 12 px in
    # every frame: the same shift again and again is motion, which drift must not absorb.
    rng = np.random.default_rng(5)
    det = _cores(rng)
    wall = det.groupby("frame").cumcount() < 8
    det.loc[wall, "x"] += 12.0 * det.loc[wall, "frame"]
    assert stage_jumps(det, _no_drift(), **KW).empty


def test_a_jump_across_frames_without_cores_is_found_at_the_next_frame_with_them():
    rng = np.random.default_rng(6)
    det = _cores(rng, jump=(5, (30.0, -12.0)))
    det = det[det.frame != 5]  # the beam blanked while the stage moved
    jumps = stage_jumps(det, _no_drift(), **KW)
    assert jumps.frame.tolist() == [6]
    np.testing.assert_allclose(jumps[["dx", "dy"]].to_numpy()[0], (30.6, -11.4), atol=TOL_PX)


def test_a_shift_within_the_detections_scatter_is_no_jump_however_small_the_reach():
    # Cores that all shift 0.45 nm between two frames (the scatter of detections is up to
    # 0.6 nm): with a user's low speed limit (reach 0.75 nm) this had counted as a jump.
    before = np.array([[10.0, 10.0], [40.0, 12.0], [25.0, 60.0], [70.0, 70.0], [50.0, 40.0],
                       [80.0, 20.0]])
    scatter = np.array([[1.25, 0.0], [-1.25, 0.0]] * 3)  # half beyond 0.6 nm: not "stayed"
    kw = dict(agree_px=AGREE_NM / 0.1, max_shift_px=100)
    assert common_shift(before, before + (5.75, 0.0) + scatter, reach_px=7.5, **kw) is None
    shift, n = common_shift(before, before + (9.0, 0.0) + scatter, reach_px=7.5, **kw)  # a jump
    assert n == 6 and np.allclose(shift, (9.0, 0.0), atol=1.3)


def test_a_periodic_row_of_cores_whose_end_cores_flicker_is_no_jump():
    # A grain boundary (or a misfit array): cores every 50 px along a row. Frame to frame
    # the detector finds a different run of them (one end core lost, the next found): a
    # shift of one period maps most cores of one frame onto the next, but the row itself
    # repeats at that shift; the stage did not move.
    rng = np.random.default_rng(2)
    row = np.c_[20.0 + 50.0 * np.arange(7), np.full(7, 100.0)]
    rows = []
    for f in range(10):
        seen = row[0:4] if f % 3 == 0 else row[1:5] if f % 3 == 1 else row[2:6]
        xy = seen + rng.normal(0, 0.5, seen.shape)
        rows += [(f, x, y) for x, y in xy]
    det = pd.DataFrame(rows, columns=["frame", "x", "y"])
    assert stage_jumps(det, _no_drift(), pixel_size_nm=0.1, reach_px=20.0, image_shape=(200, 400)).empty
    # A real jump of scattered cores is still found.
    assert len(stage_jumps(_cores(rng, jump=(5, (30.0, -12.0))), _no_drift(), **KW)) == 1


def test_a_jump_of_one_row_period_is_found_where_scattered_cores_confirm_it():
    # A periodic row (50 px) plus four scattered cores, and the stage jumps by exactly one
    # period: the row cannot tell, but the scattered cores, which do not repeat, can.
    row = np.c_[40.0 + 50.0 * np.arange(6), np.full(6, 100.0)]
    scattered = np.array([[60.0, 250.0], [200.0, 300.0], [300.0, 180.0], [120.0, 330.0]])
    before = np.vstack([row, scattered])
    after = before + (50.0, 0.0) + np.random.default_rng(0).normal(0, 0.3, before.shape)
    found = common_shift(before, after, reach_px=20.0, agree_px=6.0, max_shift_px=200.0)
    assert found is not None and found[0] == pytest.approx([50.0, 0.0], abs=0.5)
