"""events.png: crops around each event that follow the specimen, with the tracked cores
drawn as dislocation symbols (hand-made results and frames; no analysis run)."""

from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from dislotrack.data_gen.conventions import b_hat_from_h
from dislotrack.infer import event_figure
from dislotrack.infer.calibration import Calibration
from dislotrack.infer.pipeline import AnalysisResult

N_FRAMES, SIZE, DRIFT_PX = 10, 96, 1.0  # the specimen moves +1 px in x per frame


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def specimen_point(frame: int) -> tuple[float, float]:
    """Where a fixed point of the specimen lies in frame ``frame`` [px]."""
    return 40.0 + DRIFT_PX * frame, 50.0


def frames() -> np.ndarray:
    """Flat frames with one bright pixel on `specimen_point`."""
    stack = np.zeros((N_FRAMES, SIZE, SIZE), np.float32)
    for f in range(N_FRAMES):
        x, y = specimen_point(f)
        stack[f, int(y), int(x)] = 10.0
    return stack


def result(events: pd.DataFrame) -> AnalysisResult:
    """A core that nucleates at the specimen point in frame 4, h along +x, and stays there."""
    tracks = pd.DataFrame([{"particle": 7, "frame": f, "x": specimen_point(f)[0],
                            "y": specimen_point(f)[1], "hx": 1.0, "hy": 0.0}
                           for f in range(4, N_FRAMES)])
    drift = pd.DataFrame({"frame": range(N_FRAMES), "dx": DRIFT_PX * np.arange(N_FRAMES), "dy": 0.0})
    empty = pd.DataFrame()
    return AnalysisResult(empty, tracks, empty, events, empty, drift,
                          Calibration.from_file(pixel_size_nm=0.1, frame_interval_s=0.5),
                          np.zeros(N_FRAMES), (N_FRAMES, SIZE, SIZE), "m.tif", "", {})


def nucleation(frame: int = 4) -> pd.DataFrame:
    x, y = specimen_point(frame)
    return pd.DataFrame({"frame": [frame], "t_s": [frame * 0.5], "kind": ["nucleation"],
                         "x": [x], "y": [y], "particles": ["7"]})


def test_crops_follow_the_specimen_and_show_the_frames_around_the_event():
    fig = event_figure.events_figure(result(nucleation()), frames())
    row = fig.axes
    assert len(row) == len(event_figure.OFFSETS)
    side = event_figure.crop_side_px(0.1, (SIZE, SIZE))
    assert side == round(event_figure.CROP_NM / 0.1)
    for ax, k in zip(row, event_figure.OFFSETS, strict=True):
        assert ax.get_title() == f"t = {(4 + k) * 0.5:.1f} s"
        (image,) = ax.images
        # The specimen point stays at the crop's centre although it drifted 1 px a frame.
        assert np.unravel_index(np.nanargmax(image.get_array()), (side, side)) == (side // 2, side // 2)
    # The event's frame is the one framed in red.
    red = [ax for ax in row if ax.spines["left"].get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert red == [row[event_figure.OFFSETS.index(0)]]


def test_cores_are_drawn_where_they_are_with_the_stem_along_h_and_the_bar_along_b():
    fig = event_figure.events_figure(result(nucleation()), frames())
    side = event_figure.crop_side_px(0.1, (SIZE, SIZE))
    before, at = fig.axes[1], fig.axes[2]  # frames 3 (no core yet) and 4
    assert not before.lines
    (symbol,) = at.lines
    x, y = symbol.get_data()
    centre = side // 2
    arm = 0.08 * side
    b = b_hat_from_h(np.array([1.0, 0.0]))
    # bar: centre -/+ arm along b; stem: from the centre towards +h
    assert (x[0], y[0], x[1], y[1]) == pytest.approx(
        (centre - arm * b[0], centre - arm * b[1], centre + arm * b[0], centre + arm * b[1]))
    assert (x[3], y[3]) == pytest.approx((centre, centre))
    assert x[4] > centre and y[4] == pytest.approx(centre)  # h = +x
    assert [t.get_text() for t in at.texts] == ["7"]


def test_a_frame_the_track_skips_shows_a_dotted_symbol_where_the_core_would_be():
    res = result(nucleation())
    res.tracks = res.tracks[res.tracks.frame != 5].reset_index(drop=True)  # missed in frame 5
    fig = event_figure.events_figure(res, frames())
    at, skipped, after = fig.axes[2], fig.axes[3], fig.axes[4]  # frames 4, 5, 6
    assert [line.get_linestyle() for line in (*at.lines, *skipped.lines, *after.lines)] == ["-", ":", "-"]
    centre = event_figure.crop_side_px(0.1, (SIZE, SIZE)) // 2
    x, y = skipped.lines[0].get_data()
    assert (x[3], y[3]) == pytest.approx((centre, centre))  # on the specimen point, interpolated
    assert "dotted ⊥: where a track's core would be in a frame it was missed" in fig.get_supxlabel()
    plain = event_figure.events_figure(result(nucleation()), frames())  # nothing missed: no key
    assert "dotted" not in (plain.get_supxlabel() or "")


def test_frames_beyond_the_movie_are_blank_and_edges_are_padded():
    late = nucleation(N_FRAMES - 1)
    fig = event_figure.events_figure(result(late), frames())
    last = fig.axes[-1]  # frame N_FRAMES + 1
    assert not last.images
    assert "outside" in last.texts[0].get_text()
    c, x0, y0 = event_figure.crop(np.ones((4, 4)), 0.0, 0.0, 4)
    assert (x0, y0) == (-2, -2)
    assert np.isnan(c[:2]).all() and np.isnan(c[:, :2]).all() and (c[2:, 2:] == 1).all()


def test_many_events_are_thinned_evenly_and_the_title_says_so():
    many = pd.concat([nucleation(4)] * 12, ignore_index=True).assign(frame=np.arange(12) % N_FRAMES)
    fig = event_figure.events_figure(result(many), frames(), max_events=3)
    assert len(fig.axes) == 3 * len(event_figure.OFFSETS)
    assert "3 of 12 events" in fig._suptitle.get_text()
    # Sorted by frame (0, 0, 1, 1, 2, ..., 9), the first, middle and last.
    assert event_figure.chosen_events(many, 3).frame.tolist() == [0, 4, 9]
    with pytest.raises(ValueError, match="at least 1"):
        event_figure.chosen_events(many, 0)


def test_no_events_says_so_and_the_wrong_movie_is_refused():
    fig = event_figure.events_figure(result(nucleation().iloc[:0]), frames())
    assert any(t.get_text() == "no events" for ax in fig.axes for t in ax.texts)
    with pytest.raises(ValueError, match="frames are 5 x 96 x 96, the analysis 10 x 96 x 96"):
        event_figure.events_figure(result(nucleation()), frames()[:5])
    part = result(nucleation())
    part.options.update(frames="2:12", region="10:106,0:96")  # frames of a bigger movie
    with pytest.raises(ValueError, match=r"frames are 10 x 96 x 90, .*: give the frames that were "
                                         r"analysed \(open_movie\(path\)\.window\(2, 12\)\.crop"
                                         r"\(10, 106, 0, 96\): the part analysed\)"):
        event_figure.events_figure(part, frames()[:, :, :90])  # same length, not the same frames


def test_the_crop_is_the_same_length_in_nm_at_any_pixel_size():
    assert event_figure.crop_side_px(0.05, (512, 512)) == 160
    assert event_figure.crop_side_px(1.0, (512, 512)) == event_figure.MIN_CROP_PX
    assert event_figure.crop_side_px(0.01, (100, 60)) == 100  # at most the frame
    assert event_figure.crop_side_px(None, (512, 512)) == 80


class CountingFrames:
    """Frames that count how often each is read."""

    def __init__(self, stack: np.ndarray):
        self.stack, self.reads = stack, []
        self.shape = stack.shape

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, i: int) -> np.ndarray:
        self.reads.append(i)
        return self.stack[i]


def test_each_frame_shown_is_read_once_however_many_events_show_it():
    two = pd.concat([nucleation(4), nucleation(5)], ignore_index=True)
    movie = CountingFrames(frames())
    event_figure.events_figure(result(two), movie)
    assert sorted(movie.reads) == [2, 3, 4, 5, 6, 7]  # frames 4 +- 2 and 5 +- 2, each once


def test_a_skipped_frame_s_place_follows_the_specimen_through_an_uneven_drift():
    tracks = pd.DataFrame({"particle": 1, "frame": [4, 6], "x": [50.0, 60.0], "y": 20.0,
                           "x_corr": [50.0, 50.0], "y_corr": 20.0, "hx": 1.0, "hy": 0.0})
    drift = pd.DataFrame({"frame": [4, 5, 6], "dx": [0.0, 10.0, 10.0], "dy": 0.0})  # a jump at 5
    filled = event_figure.with_gaps(tracks, drift)
    assert filled[["frame", "x", "y", "missed"]].values.tolist() == [
        [4, 50.0, 20.0, False], [5, 60.0, 20.0, True], [6, 60.0, 20.0, False]]
    assert event_figure.with_gaps(tracks).x.tolist() == [50.0, 55.0, 60.0]  # no drift: raw pixels


def test_only_crops_are_kept_of_the_frames_read():
    res = result(nucleation())
    side = event_figure.crop_side_px(0.1, (SIZE, SIZE))
    windows = event_figure.event_windows(res, res.events)
    crops = event_figure.read_crops(frames(), windows, side)
    assert sorted(crops) == [(0, k) for k in event_figure.OFFSETS]
    assert all(c.shape == (side, side) and side < SIZE for c, _, _ in crops.values())


def test_a_core_near_the_crops_top_right_is_numbered_inside_it():
    # Up-right of a core at the crop's top edge, the number overprinted the panel title.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    res = result(nucleation())
    side = event_figure.crop_side_px(0.1, (SIZE, SIZE))
    res.tracks["x"] += side / 2 - 2  # 2 px from the crop's right edge...
    res.tracks["y"] -= side / 2 - 1  # ...and 1 px from its top
    fig = event_figure.events_figure(res, frames())
    FigureCanvasAgg(fig).draw()
    at = fig.axes[2]
    (label,) = at.texts
    box, frame = label.get_window_extent(), at.get_window_extent()
    assert label.get_clip_on()
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_no_events_does_not_point_to_events_csv():
    # m10: "0 events (events.csv lists all)" sent the reader to an empty table.
    fig = event_figure.events_figure(result(nucleation().iloc[:0]), frames())
    assert fig._suptitle.get_text() == "m.tif: 0 events"
    one = event_figure.events_figure(result(nucleation()), frames())
    assert one._suptitle.get_text() == "m.tif: 1 event (events.csv lists all)"


def test_a_dark_track_s_symbol_and_number_get_a_light_rim():
    # A dark colour (track 7's) rimmed in black vanished on dark lattice.
    at = event_figure.events_figure(result(nucleation()), frames()).axes[2]
    (symbol,), (number,) = at.lines, at.texts
    for artist in (symbol, number):
        (effect,) = artist.get_path_effects()
        assert effect._gc["foreground"] == "white"
    from dislotrack.infer.figures import rim_colour, track_colour

    assert rim_colour(track_colour(7)) == "white"  # the one trajectories.png and the overlay give it


def test_untracked_peaks_near_the_event_are_circled_so_a_moved_event_shows_why():
    # An annihilation moved a frame on through an unresolved blob (a weak peak in no
    # track) showed an empty red frame; the blob is drawn there now, a peak far from
    # the event is not, nor is a tracked core twice.
    res = result(nucleation(frame=2))
    x, y = specimen_point(2)
    weak = pd.DataFrame({"frame": [2, 2, 4], "x": [x, x + 30.0, x + 4.0], "y": [y, y, y],
                         "score": 0.2, "hx": 1.0, "hy": 0.0})
    res = replace(res, weak=weak, detections=res.tracks.assign(score=0.9))
    fig = event_figure.events_figure(res, frames())
    side = event_figure.crop_side_px(0.1, (SIZE, SIZE))
    at = fig.axes[event_figure.OFFSETS.index(0)]  # frame 2: the blob, no track
    (ring,) = at.collections
    assert ring.get_offsets().tolist() == [[side // 2, side // 2]]  # the far one is left out
    later = fig.axes[event_figure.OFFSETS.index(2)]  # frame 4: the track, and a peak 2 px off
    (ring,) = later.collections
    assert ring.get_offsets().tolist() == [[side // 2 + 2, side // 2]]
    assert not event_figure.events_figure(result(nucleation(frame=2)), frames()).get_supxlabel()
    assert "untracked peak" in fig.get_supxlabel()  # the figure says what a ring is


def test_the_scale_bar_keeps_clear_of_a_core_in_its_usual_corner():
    res = result(nucleation())
    side = event_figure.crop_side_px(0.1, (SIZE, SIZE))
    corner = pd.DataFrame([{"particle": 8, "frame": f, "x": specimen_point(f)[0] + 0.38 * side,
                            "y": specimen_point(f)[1] + 0.42 * side, "hx": 1.0, "hy": 0.0}
                           for f in range(N_FRAMES)])
    res = replace(res, tracks=pd.concat([res.tracks, corner], ignore_index=True))
    first = event_figure.events_figure(res, frames()).axes[0]
    (bar,) = [line for line in first.lines if line.get_color() == "white"]
    xs, ys = bar.get_data()
    assert max(xs) < side / 2 and min(ys) > side / 2  # lower left, not over core #8
    # Without the core it stays lower right.
    first = event_figure.events_figure(result(nucleation()), frames()).axes[0]
    (bar,) = [line for line in first.lines if line.get_color() == "white"]
    assert min(bar.get_data()[0]) > side / 2


def test_numbers_of_cores_side_by_side_do_not_run_together():
    # Two cores 3 px apart: both numbers up-right of their cores touched and read "73".
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    res = result(nucleation())
    other = res.tracks.assign(particle=3, x=res.tracks["x"] + 3.0, hx=-1.0)
    res = replace(res, tracks=pd.concat([res.tracks, other], ignore_index=True))
    fig = event_figure.events_figure(res, frames())
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        boxes = [t.get_window_extent() for t in ax.texts if t.get_text() in ("7", "3")]
        if len(boxes) == 2:
            a, b = boxes
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0
            break
    else:
        raise AssertionError("no panel shows both numbers")


def test_a_single_image_s_events_figure_takes_the_image_itself():
    # The 2-D image that was analysed was refused ("frames are 96 x 96, the analysis 1 x 96 x 96").
    res = replace(result(nucleation().iloc[:0]), shape=(1, SIZE, SIZE))
    fig = event_figure.events_figure(res, frames()[0])
    assert fig.get_suptitle() == "m.tif: 0 events"
    with pytest.raises(ValueError, match=f"frames are {SIZE} x {SIZE}, the analysis 2 x {SIZE} x {SIZE}"):
        event_figure.events_figure(replace(res, shape=(2, SIZE, SIZE)), frames()[0])  # a movie's: no
