"""The analysis figures: what they show and where their legends sit (built on small
hand-made results, no analysis run)."""

import numpy as np
import pandas as pd
import pytest

from dislotrack.infer import figures
from dislotrack.infer.calibration import Calibration
from dislotrack.infer.pipeline import AnalysisResult


def result(n_tracks: int, *, rocksalt: float = 0.0, n_frames: int = 12) -> AnalysisResult:
    """Tracks that each move 0.1 nm per frame in glide, starting a frame apart."""
    rows = [{"particle": p, "frame": f, "x": 10.0 + 5 * p, "y": 20.0 + f, "hx": 0.0, "hy": 1.0,
             "glide_nm": 0.1 * (f - p), "climb_nm": 0.0}
            for p in range(n_tracks) for f in range(p, n_frames)]
    tracks = pd.DataFrame(rows)
    summary = pd.DataFrame({"particle": range(n_tracks), "birth": "nucleated", "death": "survived"})
    counts = pd.DataFrame({"frame": range(n_frames), "n_dislocations": 2, "n_dipoles": 1,
                           "rocksalt_fraction": rocksalt})
    empty = pd.DataFrame()
    return AnalysisResult(empty, tracks, summary, empty, counts, empty,
                          Calibration.from_file(pixel_size_nm=0.1, frame_interval_s=1.0),
                          np.full(n_frames, rocksalt), (n_frames, 64, 64), "x.tif", "",
                          {}, first_frame=np.zeros((64, 64)))


@pytest.mark.parametrize("fraction, top", [(0.0, 0.05), (0.3, 0.33)])
def test_counts_have_whole_ticks_and_a_fraction_axis_from_zero(fraction, top):
    fig = figures.counts_figure(result(2, rocksalt=fraction))
    ax, ax2 = fig.axes
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_yticks())
    assert ax2.get_ylim() == pytest.approx((0.0, top))
    (legend,) = fig.legends  # one legend for both axes, above them
    assert [t.get_text() for t in legend.get_texts()] == ["dislocations", "dipoles",
                                                          "rock-salt fraction"]


def test_displacement_names_few_tracks_and_counts_many():
    few = figures.displacement_figure(result(3))
    assert [t.get_text() for t in few.legends[0].get_texts()] == ["#0", "#1", "#2", "mean ± SD"]
    many = figures.displacement_figure(result(figures.MAX_NAMED_TRACKS + 2))
    assert [t.get_text() for t in many.legends[0].get_texts()] == ["mean ± SD", "12 tracks"]
    for fig in (few, many):  # the legend is the figure's, beside the axes, not over the data
        assert all(ax.get_legend() is None for ax in fig.axes)


def test_trajectory_end_markers_are_explained_below_the_image():
    fig = figures.trajectories_figure(result(2))
    (ax,) = fig.axes
    assert ax.get_legend() is None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["nucleated"]
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.y1 <= ax.get_window_extent().y0 + 1  # below the image


def test_every_trajectory_end_marker_fits_in_the_figure():
    res = result(6)
    res.track_summary["birth"] = ["nucleated", "entered", "from_rocksalt"] * 2
    res.track_summary["death"] = ["annihilated", "left", "into_rocksalt"] * 2
    fig = figures.trajectories_figure(res)
    fig.canvas.draw()
    (legend,) = fig.legends
    assert len(legend.get_texts()) == len(figures.END_MARKERS)
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0


def test_overlay_time_stamp_sits_on_a_dark_box_and_grows_with_the_frame():
    def stamp_rows(size: int) -> int:
        frame = np.full((size, size), 0.5)  # mid-grey: the box, not the lattice, makes it dark
        (rgb,) = figures.overlay_frames(result(1, n_frames=1), [frame], None)
        corner = rgb[: size // 5, : size // 2].astype(int)
        yellow = (corner[..., 0] > 200) & (corner[..., 1] > 200) & (corner[..., 2] < 80)
        dark = corner.max(axis=-1) < 30
        assert yellow.any() and dark.sum() > yellow.sum()
        return int(yellow.any(axis=1).sum())

    assert stamp_rows(640) >= 2 * stamp_rows(160)


def test_counts_of_a_single_image_without_cores_have_whole_axes():
    res = result(0, n_frames=1)
    res.counts["n_dislocations"] = 0
    res.counts["n_dipoles"] = 0
    fig = figures.counts_figure(res)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert list(ax.get_xticks()) == [0.0] and ax.get_ylim() == (0.0, 1.0)
    assert all(float(t).is_integer() for t in ax.get_yticks())


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


@pytest.mark.parametrize("n_frames, why", [(1, "one frame: no motion to show"),
                                           (5, "no track spans two frames:\nno motion to show")])
def test_displacement_without_motion_says_so_instead_of_empty_axes(n_frames, why):
    res = result(1, n_frames=n_frames)
    if n_frames > 1:  # every track a single detection
        res.tracks = pd.DataFrame([{"particle": p, "frame": p, "x": 10.0, "y": 20.0, "hx": 0.0,
                                    "hy": 1.0, "glide_nm": 0.0, "climb_nm": 0.0}
                                   for p in range(n_frames)])
    fig = figures.displacement_figure(res)
    assert _texts(fig) == [why, why]
    assert not fig.legends
    assert all(not ax.lines and not ax.collections for ax in fig.axes)


def test_counts_of_a_single_image_mark_every_value():
    fig = figures.counts_figure(result(1, rocksalt=0.08, n_frames=1))
    fig.canvas.draw()
    lines = [line for ax in fig.axes for line in ax.lines]
    assert [line.get_label() for line in lines] == ["dislocations", "dipoles", "rock-salt fraction"]
    for line in lines:
        assert line.get_marker() not in (None, "", "None", " ")
        (x,), (y,) = line.get_data()
        lo, hi = line.axes.get_ylim()
        assert lo <= y <= hi and line.axes.get_xlim()[0] < x < line.axes.get_xlim()[1]
