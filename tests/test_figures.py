"""The analysis figures: what they show and where their legends sit (built on small
hand-made results, no analysis run)."""

from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.contour import ContourSet

from dislotrack.infer import figures, motion
from dislotrack.infer.calibration import Calibration
from dislotrack.infer.overlays import overlay_mask
from dislotrack.infer.pipeline import AnalysisResult


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def result(n_tracks: int, *, rocksalt: float = 0.0, n_frames: int = 12) -> AnalysisResult:
    """Tracks that each move 0.1 nm per frame in glide, starting a frame apart."""
    rows = [{"particle": p, "frame": f, "x": 10.0 + 5 * p, "y": 20.0 + f, "hx": 0.0, "hy": 1.0,
             "glide_nm": 0.1 * (f - p), "climb_nm": 0.0}
            for p in range(n_tracks) for f in range(p, n_frames)]
    tracks = pd.DataFrame(rows)
    summary = pd.DataFrame({"particle": range(n_tracks), "first_frame": range(n_tracks),
                            "last_frame": n_frames - 1, "birth": "nucleated", "death": "survived",
                            "glide_velocity_nm_s": 0.1, "climb_velocity_nm_s": 0.0,
                            "glide_velocity_se_nm_s": 0.001, "climb_velocity_se_nm_s": 0.001})
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
    FigureCanvasAgg(fig).draw()
    assert all(float(t).is_integer() for t in ax.get_yticks())
    assert ax2.get_ylim() == pytest.approx((0.0, top))
    (legend,) = fig.legends  # one legend for both axes, above them
    assert [t.get_text() for t in legend.get_texts()] == ["tracked dislocations", "dipoles",
                                                          "rock-salt fraction"]
    assert ax.get_zorder() > ax2.get_zorder()  # the counts are drawn over the fraction


def test_counts_say_when_no_frame_was_judged_for_rock_salt():
    res = result(2, rocksalt=np.nan)  # e.g. frames too coarse to show the lattice
    fig = figures.counts_figure(res)
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == "rock-salt fraction (not judged)"


def test_displacement_names_few_tracks_and_counts_many():
    few = figures.displacement_figure(result(3))
    mean = figures.MEAN_LABELS[1]
    assert [t.get_text() for t in few.legends[0].get_texts()] == ["#0", "#1", "#2", mean]
    n = figures.MAX_NAMED_TRACKS + 2
    many = figures.displacement_figure(result(n, n_frames=n + 2))
    assert [t.get_text() for t in many.legends[0].get_texts()] == [mean, f"{n} tracks (grey: not moving)"]
    for fig in (few, many):  # the legend is the figure's, beside the axes, not over the data
        assert all(ax.get_legend() is None for ax in fig.axes)


def test_displacement_with_many_tracks_greys_the_still_ones_and_labels_the_moving():
    # Past the palette, colours repeat and the legend names no track: the tracks moving
    # in a panel keep their colour and are labelled at their end, the rest are grey.
    n = figures.MAX_NAMED_TRACKS + 2
    res = result(n, n_frames=n + 8)
    still = res.track_summary.particle % 2 == 1
    res.track_summary.loc[still, "glide_velocity_nm_s"] = 0.0
    fig = figures.displacement_figure(res)
    climb, glide = fig.axes
    for ax, moving in ((glide, set(range(0, n, 2))), (climb, set())):
        lines = {int(line.get_gid().split()[1]): line for line in ax.lines
                 if (line.get_gid() or "").startswith("track ")}
        assert set(lines) == set(range(n))
        grey = {p for p, line in lines.items() if line.get_color() == figures.STILL_GREY}
        assert grey == set(range(n)) - moving
        labelled = {t.get_text() for t in ax.texts if t.get_text().startswith("#")}  # not "n = 3"
        assert labelled == {f"#{p}" for p in moving}
        for p in moving:  # at the track's last point, in its colour
            (text,) = [t for t in ax.texts if t.get_text() == f"#{p}"]
            x, y = lines[p].get_data()
            assert text.xy == pytest.approx((x[-1], y[-1]))
            assert text.get_color() == figures.track_colour(p)
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == f"{n} tracks (grey: not moving)"


def test_trajectory_end_markers_are_explained_below_the_image():
    fig = figures.trajectories_figure(result(2))
    (ax,) = fig.axes
    assert ax.get_legend() is None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["start, h tick", "nucleated"]
    FigureCanvasAgg(fig).draw()
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.y1 <= ax.get_window_extent().y0 + 1  # below the image


def test_trajectories_outline_frame_0s_rock_salt_and_name_it():
    # Tracks born from or dying into rock salt were marked, but the rock salt was not
    # drawn (on a STEM frame it barely shows): frame 0's mask is outlined, in the legend.
    res = result(2)
    mask = np.zeros((64, 64), bool)
    mask[30:50, 5:25] = True
    res = replace(res, first_mask=mask)
    fig = figures.trajectories_figure(res)
    (ax,) = fig.axes
    (outline,) = [c for c in ax.collections if isinstance(c, ContourSet)]
    (path,) = outline.get_paths()
    xs, ys = path.vertices.T
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((4.5, 24.5, 29.5, 49.5), abs=0.01)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[-1] == "rock salt (frame 0)"
    no_rs = figures.trajectories_figure(replace(res, first_mask=np.zeros((64, 64), bool)))
    assert not [c for c in no_rs.axes[0].collections if isinstance(c, ContourSet)]
    assert "rock salt (frame 0)" not in [t.get_text() for t in no_rs.legends[0].get_texts()]
    no_tracks = replace(res, tracks=res.tracks.iloc[:0], track_summary=res.track_summary.iloc[:0])
    (legend,) = figures.trajectories_figure(no_tracks).legends  # the outline keeps its key
    assert [t.get_text() for t in legend.get_texts()] == ["rock salt (frame 0)"]


def test_every_trajectory_end_marker_fits_in_the_figure():
    res = result(6)
    res.track_summary["birth"] = ["nucleated", "entered", "from_rocksalt"] * 2
    res.track_summary["death"] = ["annihilated", "left", "into_rocksalt"] * 2
    fig = figures.trajectories_figure(res)
    FigureCanvasAgg(fig).draw()
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 1 + len(figures.END_MARKERS)  # + the start and h tick
    markers = [(h.get_marker(), h.get_markerfacecolor()) for h in legend.legend_handles[1:]]
    assert len(set(markers)) == len(markers)  # each end told apart in the legend
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0


def test_a_track_that_left_beyond_frame_0s_field_shows_its_marker_on_the_edge():
    # Drift-corrected, a core that left through the right edge ends beyond frame 0's
    # field: its "left" marker was clipped away, so the figure did not say it left.
    res = result(1)
    res.track_summary["death"] = "left"
    res.tracks["x"] = np.linspace(30, 75, len(res.tracks))  # the frame is 64 px wide
    fig = figures.trajectories_figure(res)
    (ax,) = fig.axes
    (marker,) = [ln for ln in ax.lines if ln.get_marker() == figures.END_MARKERS["left"]]
    assert marker.get_xdata()[0] == 63.5 and not marker.get_clip_on()


def test_the_overlay_draws_a_skipped_frames_core_dashed_where_it_would_be():
    # A track linked across a missed detection: the core does not blink out of the movie
    # (it read as an annihilation and a new nucleation); a dashed circle marks its place.
    res = result(1)
    res.tracks = res.tracks[res.tracks.frame != 5].reset_index(drop=True)
    frames = [np.full((64, 64), 0.5)] * 7
    rgb = list(figures.overlay_frames(res, frames, None))
    colour = np.array([int(255 * v) for v in figures.track_colour(0)])

    def ring_pixels(img: np.ndarray, f: int) -> int:
        row = res.tracks[res.tracks.frame == f]
        k = figures.upscale_factor((64, 64))
        y0 = int((20.0 + f + 0.5) * k)  # y = 20 + frame (interpolated at frame 5)
        x0 = int((10.0 + 0.5) * k)
        near = img[y0 - 40:y0 + 40, x0 - 40:x0 + 40].astype(int)
        assert f == 5 or len(row)
        return int((np.abs(near - colour).sum(axis=-1) < 30).sum())

    solid, dashed = ring_pixels(rgb[4], 4), ring_pixels(rgb[5], 5)
    assert solid > 0 and 0.3 * solid < dashed < 0.8 * solid


def test_overlay_time_stamp_sits_on_a_dark_box_and_grows_with_the_frame():
    def stamp_rows(size: int) -> int:
        frame = np.full((size, size), 0.5)  # mid-grey: the box, not the lattice, makes it dark
        (rgb,) = figures.overlay_frames(result(1, n_frames=1), [frame], None)
        side = rgb.shape[0]
        corner = rgb[: side // 5, : side // 2].astype(int)
        yellow = (corner[..., 0] > 200) & (corner[..., 1] > 200) & (corner[..., 2] < 80)
        dark = corner.max(axis=-1) < 30
        assert yellow.any() and dark.sum() > yellow.sum()
        return int(yellow.any(axis=1).sum())

    assert stamp_rows(1400) >= 2 * stamp_rows(700)
    assert stamp_rows(160) == stamp_rows(640)  # a small frame is drawn on enlarged


def test_counts_of_a_single_image_without_cores_have_whole_axes():
    res = result(0, n_frames=1)
    res.counts["n_dislocations"] = 0
    res.counts["n_dipoles"] = 0
    fig = figures.counts_figure(res)
    ax = fig.axes[0]
    FigureCanvasAgg(fig).draw()
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
    FigureCanvasAgg(fig).draw()
    lines = [line for ax in fig.axes for line in ax.lines]
    assert [line.get_label() for line in lines] == ["tracked dislocations", "dipoles", "rock-salt fraction"]
    for line in lines:
        assert line.get_marker() not in (None, "", "None", " ")
        (x,), (y,) = line.get_data()
        lo, hi = line.axes.get_ylim()
        assert lo <= y <= hi and line.axes.get_xlim()[0] < x < line.axes.get_xlim()[1]


# --- time stamps, scale bars, colours, labels (the reviewer's figure audit)


@pytest.mark.parametrize("dt", [0.04, 0.033, 1 / 30, 0.005, 0.1, 1.0, 2.5])
def test_overlay_time_stamps_of_consecutive_frames_differ(dt):
    stamps = [figures.time_stamp(i, dt) for i in range(200)]
    assert len(set(stamps)) == len(stamps)
    assert all(s.startswith("t = ") and s.endswith(" s") for s in stamps)


def test_overlay_time_stamps_at_25_fps_and_without_an_interval():
    assert [figures.time_stamp(i, 0.04) for i in range(3)] == ["t = 0.00 s", "t = 0.04 s",
                                                               "t = 0.08 s"]
    assert figures.time_stamp(3, 0.5) == "t = 1.5 s"
    # Exact: 0.25 s per frame reads 0.25, 0.50, 0.75 (not 0.2, 0.5, 0.8 rounded half to even).
    assert [figures.time_stamp(i, 0.25) for i in (1, 2, 3)] == ["t = 0.25 s", "t = 0.50 s", "t = 0.75 s"]
    assert figures.time_stamp(7, None) == "frame 7"


def _estimated(res):
    res.calibration = Calibration(pixel_size_nm=0.1, pixel_size_source="estimated",
                                  frame_interval_s=1.0, frame_interval_source="file")
    return res


def test_scale_bar_labels_say_when_the_pixel_size_is_estimated():
    res = result(1)
    assert figures.scale_label(2.0, res.calibration) == "2 nm"
    assert figures.scale_label(2.0, _estimated(res).calibration) == "2 nm (est.)"
    fig = figures.trajectories_figure(res)
    (bar_text,) = [t for t in fig.axes[0].texts if "nm" in t.get_text()]
    assert bar_text.get_text() == "1 nm (est.)"  # 64 px at 0.1 nm: a fifth is 1.28 nm
    assert bar_text.get_path_effects()  # a dark rim over bright lattice


@pytest.mark.parametrize("shape, ps", [((64, 64), 0.1), ((768, 768), 0.1 / 3), ((660, 660), 0.0137),
                                       ((300, 500), 0.25)])
def test_overlay_scale_bar_is_exactly_its_length_in_pixels(shape, ps):
    x0, y0, x1, y1, bar_nm = figures.scale_bar_box(shape, ps)
    assert x1 - x0 + 1 == round(bar_nm / ps)
    assert 0 <= x0 < x1 < shape[1] and 0 <= y0 < y1 < shape[0]


def test_overlay_scale_bar_pixels_are_white_over_its_whole_length():
    res = result(0, n_frames=1)
    frame = np.zeros((640, 640))  # no enlargement: the frame's own pixel size
    (rgb,) = figures.overlay_frames(res, [frame], None)
    x0, y0, x1, y1, bar_nm = figures.scale_bar_box((640, 640), 0.1)
    white = (rgb[(y0 + y1) // 2] == 255).all(axis=-1)
    assert white.sum() == round(bar_nm / 0.1) == x1 - x0 + 1
    assert "est." not in figures.scale_label(bar_nm, res.calibration)


def test_tracks_have_distinct_non_grey_colours_everywhere():
    assert len(figures.PALETTE) >= 18
    colours = [figures.track_colour(p) for p in range(len(figures.PALETTE))]
    assert len(set(colours)) == len(colours)
    assert all(max(c) - min(c) > 0.1 for c in colours)  # no grey: lost on a lattice image
    res = result(12, n_frames=14)
    traj = figures.trajectories_figure(res)
    line_colours = {tuple(line.get_color()[:3]) for line in traj.axes[0].lines}
    assert figures.track_colour(0) in line_colours and figures.track_colour(10) in line_colours
    disp = figures.displacement_figure(res)
    labels = [t.get_text() for t in disp.legends[0].get_texts()]
    assert "#10" in labels and "#11" in labels  # named, one colour each, not "12 tracks"
    handles = dict(zip(labels, disp.legends[0].legend_handles, strict=True))
    assert handles["#0"].get_color()[:3] != handles["#10"].get_color()[:3]


def test_labels_that_would_overlap_are_nudged_apart():
    anchors = np.array([[10.0, 10.0], [12.0, 10.0], [11.0, 11.0], [50.0, 50.0]])
    sizes = np.array([[6.0, 4.0], [3.0, 4.0], [3.0, 4.0], [3.0, 4.0]])
    corners = figures.place_labels(anchors, sizes, gap=1.0)
    assert corners[0].tolist() == [11.0, 5.0]  # right of and above its point
    assert corners[3].tolist() == [51.0, 45.0]  # alone: where the first went
    boxes = [(*c, *s) for c, s in zip(corners, sizes, strict=True)]
    for i in range(len(boxes)):
        for j in range(i):
            assert not figures._overlap(boxes[i], boxes[j])


def test_labels_leave_other_tracks_markers_visible():
    anchor, size = np.array([[10.0, 10.0]]), np.array([[3.0, 4.0]])
    assert figures.place_labels(anchor, size, gap=1.0).tolist() == [[11.0, 5.0]]  # right above
    # Another track's marker where the label would go: right below instead.
    other = np.array([[12.5, 7.0]])
    corner = figures.place_labels(anchor, size, gap=1.0, markers=other, marker_radius=1.0)
    assert corner.tolist() == [[11.0, 11.0]]
    # Markers at the label's own point (its track's ends) do not push it away.
    own = np.array([[10.0, 10.0], [10.5, 9.5]])
    corner = figures.place_labels(anchor, size, gap=1.0, markers=own, marker_radius=1.0)
    assert corner.tolist() == [[11.0, 5.0]]
    # With markers all round, a label still avoids the other labels first.
    anchors = np.array([[10.0, 10.0], [10.0, 10.0]])
    ring = np.array([[x, y] for x in (6.0, 14.0) for y in (0.0, 7.0, 13.0, 20.0)])
    corners = figures.place_labels(anchors, np.repeat(size, 2, axis=0), gap=1.0, markers=ring,
                                   marker_radius=3.0)
    assert not figures._overlap((*corners[0], 3.0, 4.0), (*corners[1], 3.0, 4.0))


def test_trajectory_track_numbers_do_not_overlap():
    res = result(12, n_frames=14)
    res.tracks["x"] = 30.0 + 0.5 * res.tracks.particle  # starts crowded together
    fig = figures.trajectories_figure(res)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    boxes = [t.get_window_extent() for t in ax.texts if t.get_text().isdigit()]
    assert len(boxes) == 12
    for i in range(len(boxes)):
        for j in range(i):
            assert not boxes[i].overlaps(boxes[j])


def test_small_overlay_frames_are_enlarged_with_numbered_cores():
    assert figures.upscale_factor((256, 256)) == 3 and figures.upscale_factor((320, 400)) == 2
    assert figures.upscale_factor((660, 660)) == 1
    # A long, narrow frame stays encodable (x264: at most 16384 px a side).
    assert figures.upscale_factor((96, 2400)) == 1 and figures.upscale_factor((96, 1000)) == 4
    res = result(2, n_frames=1)
    res.tracks["hx"], res.tracks["hy"] = 1.0, 0.0
    frames = iter([np.zeros((160, 160))])
    (rgb,) = figures.overlay_frames(res, frames, None)
    assert rgb.shape == (640, 640, 3)
    # Track 0's core at (10, 20) is now at (41.5, 81.5); its colour rings it.
    c0 = np.array([int(255 * v) for v in figures.track_colour(0)])
    near = rgb[60:104, 20:64].reshape(-1, 3)
    assert (np.abs(near.astype(int) - c0).sum(axis=1) < 10).sum() > 50


def test_overlay_number_labels_are_drawn_in_track_colour():
    res = result(1, n_frames=1)
    plain = result(1, n_frames=1)
    plain.tracks["particle"] = -1  # not a track: no number
    plain.tracks = plain.tracks.iloc[:0]
    plain.detections = res.tracks.drop(columns="particle")
    (a,) = figures.overlay_frames(res, [np.zeros((640, 640))], None)
    (b,) = figures.overlay_frames(plain, [np.zeros((640, 640))], None)
    c0 = np.array([int(255 * v) for v in figures.track_colour(0)])
    coloured = lambda rgb: int((np.abs(rgb.astype(int) - c0).sum(axis=-1) < 10).sum())  # noqa: E731
    assert coloured(a) > coloured(b) == 0  # unlinked cores are white, unnumbered


def test_rocksalt_is_tinted_lightly_and_outlined():
    mask = np.zeros((10, 10), bool)
    mask[2:8, 3:9] = True
    outline = figures.mask_outline(mask)
    assert outline.sum() == 6 * 6 - 4 * 4 and not outline[4:6, 5:7].any()
    edge = np.zeros((10, 10), bool)
    edge[:, :5] = True  # at the image border: outlined only inside
    assert figures.mask_outline(edge)[:, 4].all() and not figures.mask_outline(edge)[:, 0].any()
    assert figures.ROCKSALT_TINT <= 0.25
    big = np.zeros((640, 640), bool)
    big[200:400, 200:400] = True
    (rgb,) = figures.overlay_frames(result(0, n_frames=1), [np.full((640, 640), 0.5)], [big])
    inside = rgb[300, 300].astype(int)
    assert abs(inside[0] - inside[2]) < 0.25 * 255  # still mostly grey inside
    assert rgb[200, 300].tolist() == [0, 255, 255]  # the outline is cyan


def test_mp4_padding_repeats_edge_pixels():
    frame = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    padded = figures.pad_to_16(frame)
    assert padded.shape == (32, 32, 3)
    assert (padded[:20, :30] == frame).all()
    assert (padded[25, :30] == frame[-1]).all() and (padded[:20, 31] == frame[:, -1]).all()
    assert figures.pad_to_16(padded).shape == (32, 32, 3)


def test_png_figures_are_saved_at_200_dpi(tmp_path):
    figures.counts(result(2), tmp_path / "c.png")
    from PIL import Image

    with Image.open(tmp_path / "c.png") as im:
        assert figures.DPI == 200 and im.size[0] == 6 * 200


def test_counts_points_at_zero_are_not_clipped_and_equal_series_both_show():
    res = result(1)
    res.counts["n_dislocations"] = 0
    res.counts["n_dipoles"] = 0
    fig = figures.counts_figure(res)
    dis, dip = fig.axes[0].lines
    assert not dis.get_clip_on() and not dip.get_clip_on()
    assert dis.get_linestyle() != dip.get_linestyle() and dis.get_markersize() > dip.get_markersize()
    # The file's name, then what is counted (the name alone said neither).
    assert fig.axes[0].get_title() == "x.tif\ntracked dislocations, dipoles, rock-salt fraction per frame"
    assert fig.axes[1].get_ylabel() == "rock-salt area fraction of the frame"


def test_figure_titles_name_the_input_and_the_sign_convention():
    res = result(3)
    res.input_path = "/data/run 7/movie_12.tif"
    assert figures.trajectories_figure(res).axes[0].get_title().startswith("movie_12.tif")
    disp = figures.displacement_figure(res)
    assert disp.get_suptitle().splitlines()[0] == "movie_12.tif"
    climb, glide = (ax.get_title() for ax in disp.axes)
    assert "+: towards h" in climb and "+: along b" in glide


def test_present_mean_runs_while_two_tracks_do_and_bridges_missed_frames():
    rel = pd.DataFrame({"particle": [0] * 5 + [1] * 3 + [2] * 4,
                        "rel": [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3],
                        "d": [0, 1, 2, 3, 4, 0, 2, 4, 0, 3, 6, 9.0]})
    agg = figures.present_mean(rel, "d")
    assert agg.index.tolist() == [0, 1, 2, 3]  # track 1 ends at 2; 0 and 2 go on; 0 alone at 4
    assert agg["mean"].tolist() == [0.0, 2.0, 4.0, 6.0] and agg["count"].tolist() == [3, 3, 3, 2]
    gap = rel.drop(index=9)  # track 2 missed at 1 frame: its span is bridged (3 = 0 + 9 / 3)
    assert figures.present_mean(gap, "d")["mean"].tolist() == agg["mean"].tolist()
    # Bridged by time, also across a time no track was seen at (rel 3 of both).
    sparse = pd.DataFrame({"particle": [0, 0, 0, 1, 1, 1], "rel": [0, 2, 5, 0, 2, 5],
                           "d": [0.0, 2, 5, 0, 2, 5]})
    assert figures.present_mean(sparse, "d")["mean"].tolist() == [0.0, 2.0, 5.0]
    bridged = figures.present_mean(sparse[sparse.index != 1], "d")  # track 0 unseen at rel 2
    assert bridged.loc[2, "mean"] == 2.0 and bridged.loc[2, "std"] == 0.0
    # Three cores all moving the same way; the one furthest along ends first. The mean is
    # of the positions present (what its SD describes; the mean of their steps hugged one
    # track): it steps back where the set changes, so that is a new segment, drawn apart
    # (-4.3 -> -3.7 nm joined in a user's figure read as "the cores turned back").
    ends = pd.DataFrame({"particle": [0] * 6 + [1] * 3 + [2] * 6, "rel": [*range(6), *range(3), *range(6)],
                         "d": [0, -1, -2, -3, -4, -5, 0, -3, -6, 0, -1, -2, -3, -4, -5.0]})
    agg = figures.present_mean(ends, "d")
    assert agg["mean"].tolist() == pytest.approx([0, -5 / 3, -10 / 3, -3, -4, -5])
    assert agg["segment"].tolist() == [0, 0, 0, 1, 1, 1] and agg["count"].tolist() == [3, 3, 3, 2, 2, 2]
    assert (np.diff(agg["mean"][agg["segment"] == 0]) < 0).all()  # within a segment: no step back
    assert (np.diff(agg["mean"][agg["segment"] == 1]) < 0).all()


def test_moving_tracks_use_the_velocity_its_standard_error_and_the_travel():
    summary = pd.DataFrame({"particle": [0, 1, 2, 3, 4], "first_frame": 0,
                            "last_frame": [20, 20, 20, 20, 20],
                            "climb_velocity_nm_s": [-0.3, 0.01, -0.2, 0.5, 0.0025],
                            "climb_velocity_se_nm_s": [0.01, 0.01, 0.05, 0.3, 0.0005]})
    v, unit = motion.moving_tracks(summary, "climb", 0.5)
    # 1: 1 SE; 3: 1.7 SE; 4: 5 SE but 0.025 nm in 10 s
    assert v.index.tolist() == [0, 2] and unit == "nm/s"
    assert motion.moving_tracks(summary, "climb", 0.08)[0].index.tolist() == [0]  # 2: 0.32 nm
    per_frame = summary.rename(columns=lambda c: c.replace("_nm_s", "_nm_per_frame"))
    v, unit = motion.moving_tracks(per_frame, "climb", None)
    assert v.index.tolist() == [0, 2] and unit == "nm/frame"
    assert motion.moving_tracks(summary, "glide", 0.5)[0].empty


def test_displacement_mean_is_over_moving_tracks_present_at_each_time():
    res = result(3)  # glide: all three move 0.1 nm/s; climb: none moves
    fig = figures.displacement_figure(res)
    climb_ax, glide_ax = fig.axes
    assert not climb_ax.containers and "no track moves steadily" in climb_ax.get_title()
    (bars,) = glide_ax.containers
    x, y = (np.asarray(v, float) for v in bars.lines[0].get_data())
    # Tracks span 12, 11, 10 frames: while two are there, broken (NaN) where one ends.
    assert x[np.isfinite(y)].tolist() == list(range(11)) and np.isnan(y[10])
    (dot,) = [ln for ln in glide_ax.lines if ln.get_marker() == "o"]  # the lone time, n = 2
    assert dot.get_xdata().tolist() == [10.0]
    assert [t.get_text() for t in glide_ax.texts] == ["n = 2"]
    assert "mean v = +0.10 ± 0.00 nm/s (n = 3: #0, #1, #2)" in glide_ax.get_title()
    # Each detection is a dot on its track's dashes, so a missed frame shows as a gap.
    assert all(line.get_marker() == "." for line in glide_ax.get_lines() if line.get_linestyle() == "--")


def test_two_means_in_a_panel_differ_and_dipole_partners_are_named():
    # Singles moving both ways: the two groups' means are told apart by legend and line
    # style. A dipole's two cores are named with each other, and not averaged (M2).
    res = result(6)
    res.track_summary["glide_velocity_nm_s"] = [0.1, 0.1, -0.1, -0.1, 0.1, 0.1]
    res.track_summary["kind"] = ["single", "single", "single", "single", "dipole", "dipole"]
    res.track_summary["partner"] = [-1, -1, -1, -1, 5, 4]
    res.tracks.loc[res.tracks.particle.isin([2, 3]), "glide_nm"] *= -1
    fig = figures.displacement_figure(res)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["#0", "#1", "#2", "#3", "#4 (dipole with #5)", "#5 (dipole with #4)",
                      figures.MEAN_LABELS[1], figures.MEAN_LABELS[-1]]
    styles = {c.lines[0].get_linestyle() for c in fig.axes[1].containers}
    assert len(styles) == 2


def test_an_empty_displacement_figure_spans_the_movie():
    res = result(1, n_frames=12)
    res.tracks = res.tracks.iloc[:0]
    fig = figures.displacement_figure(res)
    assert all(any(t.get_text() == "no tracks" for t in ax.texts) for ax in fig.axes)
    assert fig.axes[0].get_xlim() == (0.0, 11.0)  # 12 frames at 1 s, not matplotlib's 0-1


def test_displacement_mean_needs_two_moving_tracks_and_splits_by_sign():
    res = result(3)
    res.track_summary["glide_velocity_nm_s"] = [0.1, -0.1, 0.0]
    fig = figures.displacement_figure(res)
    assert not fig.axes[1].containers  # one track each way: no mean
    assert not set(figures.MEAN_LABELS.values()) & {t.get_text() for t in fig.legends[0].get_texts()}
    assert "#0: v = +0.100 ± 0.001 nm/s (SE)" in fig.axes[1].get_title()
    assert figures.plus_minus(-35.2, 4.1) == "-35 ± 4" and figures.plus_minus(0.273, 0.02) == "+0.27 ± 0.02"


def test_displacement_titles_give_per_frame_units_without_an_interval():
    res = result(3)
    res.calibration = Calibration.from_file(pixel_size_nm=0.1, frame_interval_s=None)
    res.track_summary = res.track_summary.rename(
        columns=lambda c: c.replace("_nm_s", "_nm_per_frame"))
    fig = figures.displacement_figure(res)
    assert "nm/frame (n = 3: #0, #1, #2)" in fig.axes[1].get_title()
    fig = figures.displacement_figure(_per_frame(result(2, n_frames=4)))
    FigureCanvasAgg(fig).draw()
    ticks = fig.axes[0].get_xticks()  # frames 0-3: whole numbers, not 0, 0.5, 1, ...
    assert len(ticks) >= 2 and np.allclose(ticks, np.round(ticks))


def _per_frame(res: AnalysisResult) -> AnalysisResult:
    """``res`` as infer makes it without a frame interval."""
    res.calibration = Calibration.from_file(pixel_size_nm=0.1, frame_interval_s=None)
    res.track_summary = res.track_summary.rename(columns=lambda c: c.replace("_nm_s", "_nm_per_frame"))
    return res



def test_a_single_image_overlay_is_also_a_png_and_a_movie_rerun_removes_it(tiny_model, tmp_path):
    from PIL import Image

    from dislotrack.data_gen.annotations import write_imagej_tiff
    from dislotrack.infer.cli import main

    rng = np.random.default_rng(0)
    image = tmp_path / "m.tif"
    write_imagej_tiff(image, rng.normal(size=(1, 32, 32)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    args = ["infer", str(image), "--out", str(tmp_path / "o"), "--model", str(tiny_model)]
    assert main(args) == 0
    fig = tmp_path / "o" / "m" / "figures"
    with Image.open(fig / "overlay.png") as png:
        assert png.size == (640, 640)  # 32 px enlarged 20 times
    # One frame has no motion or counts over time to show, nor a movie to play.
    assert sorted(p.name for p in fig.iterdir()) == ["overlay.png", "trajectories.png"]
    write_imagej_tiff(image, rng.normal(size=(2, 32, 32)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    assert main(args) == 0
    assert sorted(p.name for p in fig.iterdir()) == ["counts.png", "dipoles.png", "displacement.png",
                                                     "events.png", "overlay.mp4", "trajectories.png"]
    write_imagej_tiff(image, rng.normal(size=(1, 32, 32)).astype(np.float32),
                      pixel_size_nm=0.1, frame_interval_s=1.0)
    assert main(args) == 0  # the movie's figures over time go with its tables
    assert sorted(p.name for p in fig.iterdir()) == ["overlay.png", "trajectories.png"]


def test_stale_outputs_name_the_overlay_png_unless_a_single_image_overlay_rewrites_it(tmp_path):
    from dislotrack.infer.run import stale_outputs

    (tmp_path / "figures").mkdir()
    for name in ("summary.json", "figures/overlay.png", "figures/overlay.mp4"):
        (tmp_path / name).write_text("old")
    png = tmp_path / "figures" / "overlay.png"
    options = {"strain": True, "parquet": True}
    assert png not in stale_outputs(tmp_path, movie=True, single_image=True, **options)
    assert png in stale_outputs(tmp_path, movie=True, single_image=False, **options)
    assert png in stale_outputs(tmp_path, movie=False, single_image=True, **options)
    mp4 = tmp_path / "figures" / "overlay.mp4"
    assert mp4 in stale_outputs(tmp_path, movie=True, single_image=True, **options)
    assert mp4 not in stale_outputs(tmp_path, movie=True, single_image=False, **options)


def test_overlay_scale_bar_label_stays_in_the_frame_when_estimated():
    res = _estimated(result(0, n_frames=1))
    (rgb,) = figures.overlay_frames(res, [np.full((640, 640), 0.5)], None)
    x0, y0, x1, y1, _ = figures.scale_bar_box((640, 640), 0.1)
    band = rgb[y0 - 60:y0 - 2, :].astype(int)
    white = (band.min(axis=-1) > 240).any(axis=0)  # the label's columns
    assert white.any() and np.flatnonzero(white).max() <= x1  # "(est.)" not cut off


def test_mp4_holds_every_frame_at_the_given_rate(tmp_path):
    import imageio.v3 as iio

    from dislotrack.infer.figures import write_mp4

    ramp = np.linspace(0, 255, 50 * 70).reshape(50, 70).astype(np.uint8)
    frames = [np.stack([np.roll(ramp, 3 * i, axis=1)] * 3, axis=-1) for i in range(5)]
    write_mp4(iter(frames), tmp_path / "m.mp4", fps=2.0)
    back = iio.imread(tmp_path / "m.mp4", plugin="pyav")
    assert back.shape == (5, 64, 80, 3)  # padded to multiples of 16
    assert iio.immeta(tmp_path / "m.mp4", plugin="pyav")["fps"] == pytest.approx(2.0)
    # lossy, but each frame is the one written (not its neighbour)
    errors = [[np.abs(back[i, :50, :70, 0].astype(int) - f[..., 0]).mean() for f in frames] for i in range(5)]
    assert [int(np.argmin(e)) for e in errors] == list(range(5))
    assert max(min(e) for e in errors) < 6


def test_overlay_scale_bar_moves_off_a_burned_in_annotation():
    res = result(0, n_frames=1)
    rng = np.random.default_rng(0)
    frame = rng.normal(0.5, 0.05, (640, 640))
    clear = figures.scale_bar_corner(overlay_mask(frame, pixel_size_nm=0.1), 0.1)
    assert clear == "lower right"
    frame[560:630, 380:630] = frame.max() + 1  # the microscope's own bar, lower right
    corner = figures.scale_bar_corner(overlay_mask(frame, pixel_size_nm=0.1), 0.1)
    assert corner == "lower left"
    (rgb,) = figures.overlay_frames(res, [frame], None)
    x0, y0, x1, y1, bar_nm = figures.scale_bar_box((640, 640), 0.1, corner)
    white = (rgb[(y0 + y1) // 2, : 640 // 2] == 255).all(axis=-1)
    assert white.sum() == round(bar_nm / 0.1)  # drawn there, whole
    # trajectories.png keeps its bar off the annotation too (its line, in data coordinates).
    one = result(1, n_frames=1)
    one.first_frame = frame
    bar = [line for line in figures.trajectories_figure(one).axes[0].lines
           if line.get_color() == "white"]
    assert len(bar) == 1 and max(bar[0].get_xdata()) < 320
    frame[560:630, 10:300] = frame.max()  # both lower corners taken
    assert figures.scale_bar_corner(overlay_mask(frame, pixel_size_nm=0.1), 0.1) == "upper right"


@pytest.mark.parametrize("corner", figures.SCALE_BAR_CORNERS)
def test_every_scale_bar_corner_keeps_the_bar_and_label_in_the_frame(corner):
    x0, y0, x1, y1, bar_nm = figures.scale_bar_box((300, 500), 0.25, corner)
    assert x1 - x0 + 1 == round(bar_nm / 0.25)
    assert 0 <= x0 < x1 < 500 and 2 * figures._font_px(300) <= y0 < y1 < 300


def _image_axes_fraction(fig: plt.Figure) -> float:
    """The share of the figure's area that its (only) image covers when drawn."""
    FigureCanvasAgg(fig).draw()  # figures are made outside pyplot: as savefig draws them
    (image,) = fig.axes[0].get_images()
    box = image.get_window_extent()
    return box.width * box.height / (fig.bbox.width * fig.bbox.height)


@pytest.mark.parametrize("shape", [(64, 64), (224, 1312), (1312, 224)])
def test_trajectories_figure_takes_the_frame_shape_without_wide_margins(shape):
    res = result(3)
    res.first_frame = np.zeros(shape)
    fig = figures.trajectories_figure(res)
    w, h = fig.get_size_inches()
    assert max(w, h) <= 11.5
    # A fixed square page left 70 % of it white around a 224 x 1312 frame.
    assert _image_axes_fraction(fig) > (0.6 if shape[0] == shape[1] else 0.35)
    title = fig.axes[0].title.get_window_extent()
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1  # wrapped, not cut, when narrow
    # Frame 0's field, whatever drift carried a track beyond it; numbers inside it.
    assert fig.axes[0].get_xlim() == (-0.5, shape[1] - 0.5)
    numbers = [t for t in fig.axes[0].texts if t.get_text().isdigit()]
    assert len(numbers) == 3 and all(-0.5 <= t.get_position()[0] <= shape[1] - 0.5 for t in numbers)


def test_strain_panels_are_the_image_size_and_line_up_with_it():
    from dislotrack.infer.strain import COMPONENTS, strain_figure

    rng = np.random.default_rng(0)
    for shape, column in (((64, 64), False), ((40, 160), True)):
        frame = rng.random(shape)
        maps = {k: rng.normal(0, 0.01, shape) for k in COMPONENTS}
        maps["exx"][:3] = np.nan  # the border GPA leaves out
        fig = strain_figure(frame, maps, pd.DataFrame({"x": [5.0], "y": [6.0]}), title="t")
        FigureCanvasAgg(fig).draw()
        panels = [ax.get_images()[0].get_window_extent() for ax in fig.axes if ax.get_title()]
        assert len(panels) == 1 + len(COMPONENTS)
        sizes = {(round(b.width), round(b.height)) for b in panels}
        assert len(sizes) == 1  # colour bars do not shrink the maps below the image
        along = [round(b.x0) for b in panels] if column else [round(b.y0) for b in panels]
        assert len(set(along)) == 1  # a row (same top) or, for wide frames, a column
    # The three strains share one colour scale (one map ten times another's), rotation its own.
    maps = {k: rng.normal(0, 0.01, (64, 64)) for k in COMPONENTS}
    maps["eyy"] *= 10
    fig = strain_figure(rng.random((64, 64)), maps, pd.DataFrame({"x": [], "y": []}))
    limits = {ax.get_title(): ax.get_images()[0].get_clim() for ax in fig.axes if ax.get_images()}
    assert limits["εxx"] == limits["εyy"] == limits["εxy"] != limits["ω (rad)"]
    assert not fig.axes[0].texts  # no pixel size given: no scale bar
    # With a pixel size the image has a scale bar, marked as estimated where it is.
    cal = Calibration(pixel_size_nm=0.1, pixel_size_source="estimated")
    fig = strain_figure(rng.random((64, 64)), maps, pd.DataFrame({"x": [], "y": []}), calibration=cal)
    assert [t.get_text() for t in fig.axes[0].texts] == ["1 nm (est.)"]
    # The image panel names its frame and is stretched past a few hot pixels.
    hot = rng.random((64, 64))
    hot[:2, :2] = 50.0
    fig = strain_figure(hot, maps, pd.DataFrame({"x": [], "y": []}), frame_index=3)
    assert fig.axes[0].get_title() == "frame 3 (circles: cores)"
    assert fig.axes[0].get_images()[0].get_clim()[1] < 2
    from dislotrack.infer.strain import _colour_limit

    assert _colour_limit([np.r_[np.zeros(99), 1.0]]) == 1e-3  # mostly zero: not a 0-wide range
    assert limits["εxx"][1] == pytest.approx(np.percentile(np.abs(np.stack(
        [maps["exx"], maps["eyy"], maps["exy"]])), 98))


def _both_ways(n_tracks: int, first_id: int = 0) -> AnalysisResult:
    """`result` whose tracks alternate +0.1 / -0.1 nm/s in glide and climb (two groups),
    numbered from ``first_id``."""
    res = result(n_tracks, n_frames=14)
    for table in (res.tracks, res.track_summary):
        table["particle"] += first_id
    res.track_summary["glide_velocity_nm_s"] = [0.1, -0.1] * (n_tracks // 2)
    res.track_summary["climb_velocity_nm_s"] = [0.1, -0.1] * (n_tracks // 2)
    res.track_summary["climb_velocity_se_nm_s"] = 0.001
    return res


def _titles_apart(res: AnalysisResult) -> plt.Figure:
    """The displacement figure of ``res``, checked for titles that run into each other."""
    fig = figures.displacement_figure(res)
    FigureCanvasAgg(fig).draw()
    climb, glide = (ax.title.get_window_extent() for ax in fig.axes)
    assert climb.x1 <= glide.x0 and fig.bbox.x0 <= climb.x0
    if fig.legends:  # beside the glide panel, clear of its title
        assert glide.x1 <= fig.legends[0].get_window_extent().x0
    return fig


def test_displacement_panel_titles_do_not_run_into_each_other():
    fig = _titles_apart(_both_ways(6))  # two groups of three, each with its own line
    means = [ln for ln in fig.axes[1].get_title().splitlines() if ln.startswith("mean v")]
    assert means[0].startswith("mean v = +") and means[1].startswith("mean v = -")  # + first
    # Busy movies number tracks past 100: titles name them only while the list is short.
    assert "(n = 4)" in _titles_apart(_both_ways(8, first_id=100)).axes[1].get_title()
    assert "(n = 2: #100, #102)" in _titles_apart(_both_ways(4, first_id=100)).axes[1].get_title()


def test_h_ticks_point_into_the_extra_half_plane():
    res = result(1)
    res.tracks[["hx", "hy"]] = (1.0, 0.0)  # h along +x; the track runs along +y
    ax = figures.trajectories_figure(res).axes[0]
    ticks = [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and ln.get_linewidth() == 2]
    assert len(ticks) == 1
    (x0, x1), (y0, y1) = ticks[0].get_xdata(), ticks[0].get_ydata()
    assert x1 > x0 and y1 == y0  # from the start towards +h
    # The overlay: the tick leaves the circle towards +h, nothing mirrors it towards -h.
    from PIL import Image, ImageDraw

    frame = Image.new("RGB", (200, 120))
    rows = pd.DataFrame({"x": [100.0], "y": [60.0], "hx": [1.0], "hy": [0.0], "particle": [-1]})
    figures._draw_cores(ImageDraw.Draw(frame), rows, 1, 120)
    white = np.all(np.asarray(frame) > 240, axis=-1)  # untracked cores are drawn white
    r = max(8, 120 // 64)
    row = white[60]
    assert row[100 + r + 2: 100 + 3 * r - 1].all()  # the tick, outside the circle
    assert not row[100 - 3 * r + 1: 100 - r - 2].any()  # nothing on the -h side


def test_overlay_labels_stay_inside_the_frame_and_dark_ones_get_a_light_rim():
    from PIL import Image, ImageDraw

    frame = Image.new("RGB", (200, 120))
    rows = pd.DataFrame({"x": [5.0, 195.0], "y": [2.0, 118.0], "hx": 0.0, "hy": 1.0,
                         "particle": [0, 1]})
    figures._draw_cores(ImageDraw.Draw(frame), rows, 1, 120)
    drawn = np.asarray(frame)
    white = np.all(drawn > 240, axis=-1)
    assert white.any()  # track 0's dark blue number, rimmed in white (nothing else is white)
    assert figures._luminance((255, 255, 255)) == pytest.approx(1.0)
    # A label at the top edge goes below its point rather than off the frame.
    corner = figures.place_labels(np.array([[5.0, 2.0]]), np.array([[8.0, 10.0]]), gap=3.0,
                                  bounds=(200, 120))
    assert corner.tolist() == [[8.0, 5.0]]  # right below: right above would be cut
    corner = figures.place_labels(np.array([[199.0, 119.0]]), np.array([[8.0, 10.0]]), gap=3.0,
                                  bounds=(200, 120))
    assert corner.tolist() == [[188.0, 106.0]]  # left above: the corner has no other room


def test_overlay_numbers_keep_off_other_cores_circles():
    # The overlay placed a number where it fitted among numbers only: "6" sat on #5's
    # circle. Other cores' circles and ticks are obstacles now.
    from PIL import Image, ImageDraw

    r, lw = max(8, 120 // 64), max(3, 120 // 240)
    a = (60.0, 60.0)
    b = (a[0] + r + lw + 5, a[1] - r - lw - 6)  # on the spot right above A's number would take
    frame = Image.new("RGB", (200, 120))
    rows = pd.DataFrame({"x": [a[0], b[0]], "y": [a[1], b[1]], "hx": 0.0, "hy": 1.0, "particle": [0, 1]})
    figures._draw_cores(ImageDraw.Draw(frame), rows, 1, 120)
    drawn = np.asarray(frame).astype(int)
    colour0 = np.array([round(255 * v) for v in figures.track_colour(0)])
    is0 = np.abs(drawn - colour0).max(axis=-1) <= 60  # the number anti-aliased
    yy, xx = np.mgrid[:120, :200]
    own = (np.hypot(xx - a[0], yy - a[1]) <= r + lw + 1) | ((np.abs(xx - a[0]) <= lw) & (yy >= a[1]))
    label = is0 & ~own
    assert label.sum() >= 5  # the number was drawn (a small glyph at this size)
    assert not (label & (np.hypot(xx - b[0], yy - b[1]) <= r + lw)).any()


def test_tracks_starting_outside_frame_0_get_no_number_in_the_margin():
    res = result(3)
    res.tracks.loc[res.tracks.particle == 0, "x"] -= 100.0  # drifted in from beyond the left edge
    fig = figures.trajectories_figure(res)
    numbers = sorted(t.get_text() for t in fig.axes[0].texts if t.get_text().isdigit())
    assert numbers == ["1", "2"]


def test_climb_panel_says_when_drift_along_the_fringes_was_not_measured():
    from dislotrack.infer.drift import UNSEEN_ALONG_FRINGES

    res = result(3)
    res.drift = pd.DataFrame({"frame": range(12), "dx": 0.0, "dy": 0.0})
    assert "drift along the fringes" not in figures.displacement_figure(res).axes[0].get_title()
    res.drift.attrs[UNSEEN_ALONG_FRINGES] = 9
    climb, glide = figures.displacement_figure(res).axes
    assert " ".join(climb.get_title().split()).endswith(
        "includes drift along the fringes (not measurable in 9 of 11 frames)")  # wrapped to the panel
    assert "drift" not in glide.get_title()


def test_a_dozen_labels_at_one_point_do_not_overlap():
    anchors = np.full((12, 2), 50.0)  # e.g. cores of a crowded cluster, as seen at this scale
    sizes = np.full((12, 2), 4.0)
    corners = figures.place_labels(anchors, sizes, gap=1.0)
    boxes = [(*c, 4.0, 4.0) for c in corners]
    assert not any(figures._overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_figures_are_made_outside_pyplot():
    # A notebook shows a returned figure once (pyplot would show it again), and a loop over
    # movies leaves no open figures behind.
    from dislotrack.infer.figures import counts_figure, displacement_figure, trajectories_figure

    plt.close("all")
    res = result(2)
    figs = [f(res) for f in (trajectories_figure, displacement_figure, counts_figure)]
    assert plt.get_fignums() == [] and all(f.axes for f in figs)


def test_figures_say_no_cores_refuse_bare_tables_and_keep_the_bar_in_the_frame(tmp_path):
    from dislotrack.infer.outputs import write_tables
    from dislotrack.infer.tracking import TrackedTables

    one = result(1, n_frames=1)
    one.tracks = one.tracks.iloc[:0]
    texts = [t.get_text() for t in figures.trajectories_figure(one).axes[0].texts]
    assert "no cores" in texts
    bare = TrackedTables(*(pd.DataFrame() for _ in range(4)))
    for make in (figures.trajectories_figure, figures.displacement_figure, figures.counts_figure):
        with pytest.raises(TypeError, match=f"{make.__name__} takes an AnalysisResult"):
            make(bare)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match=r"out='.*file' is a file; give a folder"):
        write_tables(result(1), tmp_path / "file")
    # Both lower corners taken by burned-in bands: the bar goes to the upper right, inside.
    frame = np.random.default_rng(0).normal(0.5, 0.05, (64, 1024))
    frame[50:64, :] = frame.max() + 1
    two = result(1, n_frames=2)
    two.first_frame, two.shape = frame, (2, 64, 1024)
    fig = figures.trajectories_figure(two)
    (bar,) = [line for line in fig.axes[0].lines if line.get_color() == "white"]
    assert max(bar.get_ydata()) < 50 and min(bar.get_xdata()) > 512  # upper right, off the band
    (label,) = [t for t in fig.axes[0].texts if t.get_text().endswith("nm")]
    assert label.get_position()[1] > 0  # within the frame (y down from 0)


def test_figures_time_frames_on_an_uneven_clock():
    from types import SimpleNamespace

    from dislotrack.infer.calibration import Calibration
    from dislotrack.infer.figures import frame_time, time_stamp

    clock = (0.0, 1.0, 2.0, 6.0, 7.0)  # frames dropped after frame 2
    timed = SimpleNamespace(calibration=Calibration(frame_interval_s=1.0, frame_interval_source="file",
                                                    frame_times_s=clock))
    even = SimpleNamespace(calibration=Calibration(frame_interval_s=1.0, frame_interval_source="file"))
    assert frame_time(timed, [0, 3, 4]).tolist() == [0.0, 6.0, 7.0]
    assert frame_time(even, [0, 3, 4]).tolist() == [0.0, 3.0, 4.0]
    assert time_stamp(3, 1.0, frame_time(timed, [3])[0]) == "t = 6.0 s"
    assert time_stamp(3, 1.0) == "t = 3.0 s" and time_stamp(3, None) == "frame 3"


def test_trajectories_say_when_no_core_could_show_rather_than_none_found(tiny_model):
    # Noise has no (003) fringes: "no cores" would read as searched and clean.
    from dislotrack.infer.figures import trajectories_figure
    from dislotrack.infer.pipeline import analyze

    res = analyze(np.random.default_rng(0).normal(size=(1, 256, 256)).astype(np.float32),
                  pixel_size_nm=0.1, model=tiny_model, progress=False)
    ax = trajectories_figure(res).axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert any("no (003) fringes stand out" in t for t in texts), texts
    assert "doubtful" in ax.get_title()  # whatever it shows: cores cannot show here
    from dislotrack.infer.figures import overlay_stamp

    assert overlay_stamp(res, 0) == "frame 0\ndoubtful: no (003) fringes"


def test_the_mean_displacement_runs_on_the_clock_with_its_tracks():
    # Two cores glide at 0.2 nm/s through a 20 s pause after frame 4: the mean curve
    # must lie on its tracks (it was drawn at frame x median interval: 9 s, not 28 s).
    from dislotrack.infer.calibration import Calibration
    from dislotrack.infer.tracking import track_detections

    clock = np.r_[np.arange(5.0), 24.0 + np.arange(5.0)]
    det = pd.concat([pd.DataFrame({"frame": np.arange(10), "x": 110.0 + 40 * p - 2.0 * clock, "y": y,
                                   "score": 0.9, "hx": 0.0, "hy": -1.0})
                     for p, y in enumerate((30.0, 70.0))], ignore_index=True)
    t = track_detections(det, pixel_size_nm=0.1, frame_interval_s=1.0, n_frames=10, image_shape=(100, 200),
                         min_length=3, max_speed_nm_s=5.0, frame_times_s=clock)
    cal = Calibration(pixel_size_nm=0.1, frame_interval_s=1.0, pixel_size_source="user",
                      frame_interval_source="file", frame_times_s=tuple(clock))
    res = AnalysisResult(det, t.tracks, t.track_summary, t.events, t.counts,
                         pd.DataFrame({"frame": np.arange(10), "dx": 0.0, "dy": 0.0}), cal, np.zeros(10),
                         (10, 100, 200), "x.tif", "", {}, first_frame=np.zeros((100, 200)))
    glide = figures.displacement_figure(res).axes[1]
    (bars,) = glide.containers
    x, y = (np.asarray(v, float) for v in (bars.lines[0].get_xdata(), bars.lines[0].get_ydata()))
    assert x[-1] == pytest.approx(28.0) and y == pytest.approx(0.2 * x, abs=1e-6)


# --- the figure review of stop 35 (notes/review_figures_stop35.md)

#: Colour-blind vision simulated on linear RGB (Machado, Oliveira & Fernandes 2009,
#: severity 1).
_DEUTERANOPIA = np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                          [-0.011820, 0.042940, 0.968881]])
_PROTANOPIA = np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                        [-0.003882, -0.048116, 1.051998]])


def _linear(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, float)
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _lab(linear: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of linear RGB colours (n, 3)."""
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=-1)


def test_track_colours_stay_apart_for_the_colour_blind_and_away_from_rock_salt_cyan():
    # M4, m6: tab20's blue/purple, orange/olive, green/red/brown looked alike with
    # deuteranopia, and tab:cyan tracks sat on the overlay's cyan rock salt.
    palette = np.array(figures.PALETTE)
    cyan = np.array([[0.0, 1.0, 1.0]])  # the overlay's rock salt (figures._CYAN)
    first = figures.DISTINCT_HUES
    for view in (None, _DEUTERANOPIA, _PROTANOPIA):
        def seen(rgb, view=view):
            return _lab(_linear(rgb) if view is None else np.clip(_linear(rgb) @ view.T, 0, 1))
        lab = seen(palette)
        apart = np.linalg.norm(lab[:, None] - lab[None], axis=-1)  # CIE76 colour difference
        np.fill_diagonal(apart, np.inf)
        assert apart[:first, :first].min() > 15  # the first nine: plainly different
        assert apart.min() > 9.5  # all of them: still told apart side by side
        neighbours = [apart[i, (i + 1) % len(palette)] for i in range(len(palette))]
        assert min(neighbours) > 30  # a dipole's cores often have consecutive numbers
        assert np.linalg.norm(lab - seen(cyan), axis=-1).min() > 35  # nothing like rock salt
    assert first >= 8 and len(palette) >= 18
    # Numbers keep a rim they stand out from (WCAG contrast ratio), dark colours a white one.
    for colour in figures.PALETTE:
        lum = figures._luminance(tuple(round(255 * v) for v in colour))
        white, black = 1.05 / (lum + 0.05), (lum + 0.05) / 0.05
        rim = figures.rim_colour(colour)
        assert (white if rim == "white" else black) == max(white, black) >= 4.5


def _moving_apart(v: list[float], frames: list[int], **summary) -> AnalysisResult:
    """`result` with tracks gliding at velocities ``v`` [nm/s] for ``frames`` frames each."""
    res = result(len(v), n_frames=max(frames))
    res.tracks = pd.DataFrame([{"particle": p, "frame": f, "x": 10.0 + 5 * p, "y": 20.0 + f, "hx": 0.0,
                                "hy": 1.0, "glide_nm": v[p] * f, "climb_nm": 0.0}
                               for p in range(len(v)) for f in range(frames[p])])
    res.track_summary = res.track_summary.assign(first_frame=0, last_frame=[n - 1 for n in frames],
                                                 glide_velocity_nm_s=v, **summary)
    return res


def test_the_mean_curve_is_the_mean_of_the_positions_present_broken_where_a_track_ends():
    # M1: three cores gliding -; the fastest ends first. The curve went on by the mean
    # step of the two left, 0.33 nm below their mean, while its SD bar was of positions.
    res = _moving_apart([-0.1, -0.3, -0.1], [12, 6, 12])
    glide = figures.displacement_figure(res).axes[1]
    (bars,) = glide.containers
    x, y = (np.asarray(v, float) for v in bars.lines[0].get_data())
    drawn = np.isfinite(y)
    assert x[drawn].tolist() == list(range(12))
    positions = [(-0.1 - 0.3 - 0.1) / 3 * t if t < 6 else -0.1 * t for t in range(12)]
    assert y[drawn] == pytest.approx(positions)  # the mean of the tracks there
    # Not joined across the jump (-0.83 -> -0.6 nm read as the cores turning back); the
    # curve says how many tracks it averages after it.
    assert np.isnan(y[np.flatnonzero(x == 5)[0] + 1])
    assert [(t.get_text(), t.xy) for t in glide.texts] == [("n = 2", (6.0, pytest.approx(-0.6)))]


def test_group_means_are_over_single_dislocations_and_dipole_cores_are_listed():
    # M2: a dipole core (#2, in its own b frame, its motion reversing) was averaged with
    # single dislocations (#0, #1) moving the same way.
    res = _moving_apart([-0.3, -0.1, -0.05, 0.0], [12, 12, 12, 12],
                        kind=["single", "single", "dipole", "dipole"], partner=[-1, -1, 3, 2])
    fig = figures.displacement_figure(res)
    glide = fig.axes[1]
    title = glide.get_title()
    assert "mean v = -0.20 ± 0.14 nm/s (n = 2: #0, #1)" in title
    assert "dipole cores (not averaged): #2 -0.050 nm/s" in title
    (bars,) = glide.containers
    assert bars.lines[0].get_ydata()[11] == pytest.approx(-0.2 * 11)  # #0 and #1 alone
    assert fig.get_suptitle() == f"x.tif\n{figures.MEANS_OVER}"
    assert "single dislocations" in figures.MEANS_OVER


def test_a_lone_track_s_velocity_comes_with_its_standard_error():
    # W2: "#0: v = +0.38 nm/s" said nothing of how well it is known (SE 0.003).
    res = _moving_apart([0.38, 0.0], [12, 12])
    res.track_summary["glide_velocity_se_nm_s"] = [0.0031, 0.001]
    assert "#0: v = +0.380 ± 0.003 nm/s (SE)" in figures.displacement_figure(res).axes[1].get_title()
    assert figures.plus_minus_se(0.382472, 0.0031) == "+0.382 ± 0.003"
    assert figures.plus_minus_se(-35.2, 4.1) == "-35 ± 4"
    assert figures.plus_minus_se(0.0902, 0.0044) == "+0.090 ± 0.004"


def test_the_matplotlib_scale_bar_is_exactly_its_length():
    # m1: rounded to whole pixels, 1 nm at 0.08 nm/px was drawn 12 px long (0.96 nm).
    from matplotlib.figure import Figure

    cal = Calibration.from_file(pixel_size_nm=0.08, frame_interval_s=None)
    for corner in figures.SCALE_BAR_CORNERS:
        ax = Figure().subplots()
        figures.scale_bar(ax, (100, 100), cal, corner)
        (bar,) = ax.lines
        x0, _, x1, _, bar_nm = figures.scale_bar_box((100, 100), 0.08, corner)
        xs = bar.get_xdata()
        assert bar_nm == 1.0 and xs[1] - xs[0] == pytest.approx(12.5)
        # In the corner the overlay's bar takes: from its outer end, inside the frame.
        assert xs[0] == x0 - 0.5 if corner.endswith("left") else xs[1] == x1 + 0.5
        (label,) = ax.texts
        assert label.get_position()[0] == pytest.approx(np.mean(xs))


def test_long_file_names_are_wrapped_in_the_counts_and_displacement_titles():
    # m3: a 90-character name with a frame window and a region ran off counts.png at both
    # edges, and over displacement.png's legend.
    res = result(3)
    res.input_path = ("/data/2024-05-12_LiNiO2_insitu_delithiation_5V_particle3_area2_"
                      "drift-corrected_movie.tif")
    res.options = {"frames": "5:25", "region": "0:200,0:256"}
    counts = figures.counts_figure(res)
    FigureCanvasAgg(counts).draw()
    title = counts.axes[0].title.get_window_extent()
    assert counts.bbox.x0 <= title.x0 and title.x1 <= counts.bbox.x1
    assert counts.axes[0].get_title().replace("\n", "").startswith(figures.input_name(res))
    disp = figures.displacement_figure(res)
    FigureCanvasAgg(disp).draw()
    suptitle, legend = disp._suptitle.get_window_extent(), disp.legends[0].get_window_extent()
    assert disp.bbox.x0 <= suptitle.x0 and suptitle.x1 <= legend.x0
    assert figures.wrap_title("a_b c", 3) == "a_b\nc"
    assert figures.wrap_title("x.tif\n" + "a" * 7, 5) == "x.tif\naaaaa\naa"  # lines kept, a run cut


def test_edge_fates_read_as_leaving_or_entering_the_field():
    # m7: "left" beside a left-pointing triangle read as a direction.
    res = result(2)
    res.track_summary["birth"] = ["entered", "nucleated"]
    res.track_summary["death"] = ["left", "survived"]
    texts = [t.get_text() for t in figures.trajectories_figure(res).legends[0].get_texts()]
    assert texts == ["start, h tick", "nucleated", "entered the field", "left the field"]


def test_legend_proxies_look_like_what_is_drawn():
    # m9: "start, h tick" was a line through a dot (the figure draws a dot and a tick out
    # of it); the two means' legend lines were too short to show the dash-dot.
    legend = figures.trajectories_figure(result(2)).legends[0]
    tick = legend.legend_handles[0]
    assert tick.get_linestyle() == "None"
    vertices = tick.get_marker().vertices
    assert vertices[:, 0].min() == 0 and vertices[:, 0].max() > 0 and not vertices[:, 1].any()
    fig = figures.displacement_figure(_both_ways(4))
    (dashdot,) = [c.lines[0] for c in fig.axes[1].containers if c.lines[0].get_linestyle() == "-."]
    cycle = sum(dashdot._dash_pattern[1])  # [pt]
    legend = fig.legends[0]
    assert legend.handlelength * legend.prop.get_size_in_points() >= cycle


def test_time_stamps_carry_at_most_three_decimals():
    # W4: at 1/30 s per frame the stamps read t = 12.366667 s.
    assert figures.time_decimals(1 / 30) == 3 and figures.time_stamp(371, 1 / 30) == "t = 12.367 s"
    assert figures.time_decimals(0.0125) == 3 and figures.time_stamp(2, 0.0125) == "t = 0.025 s"
    fast = [figures.time_stamp(i, 0.0004) for i in range(5)]  # 2500 frames a second: still apart
    assert len(set(fast)) == 5 and fast[1] == "t = 0.0004 s"


def test_wrapped_titles_leave_no_line_of_separators_nor_a_leading_space():
    assert figures.wrap_title("abcd_efgh", 4) == "abcd_\nefgh"
    assert figures.wrap_title("a - b", 3) == "a -\nb"


def test_no_mean_drawn_no_word_on_what_means_are_over():
    # A lone moving single and a moving dipole core: no mean is drawn, so the title does
    # not say what means are over (the dipole core is listed in its panel's title).
    res = result(2)
    res.track_summary["kind"] = ["single", "dipole"]
    res.track_summary["partner"] = pd.array([pd.NA, 5], dtype="Int64")
    fig = figures.displacement_figure(res)
    assert "dipole cores (not averaged)" in fig.axes[1].get_title()
    assert figures.MEANS_OVER not in fig._suptitle.get_text()


def test_track_paths_are_rimmed_and_evaluation_frames_stretched():
    # A navy track on a dark frame vanished (review stop 38): paths carry the rim the
    # numbers do. evaluation.png's frame was unstretched beside the others' 1-99 % one.
    fig = figures.trajectories_figure(result(2))
    paths = [ln for ln in fig.axes[0].lines if len(ln.get_xdata()) > 1 and ln.get_linewidth() == 1.5]
    assert paths and all(ln.get_path_effects() for ln in paths)
    rng = np.random.default_rng(0)
    image = 100.0 + rng.normal(size=(1, 32, 32))  # a narrow range far from 0
    out = pd.DataFrame({"frame": [0], "x": [10.0], "y": [10.0], "outcome": ["found"]})
    shown = figures.evaluation_panels(image, out).axes[0].images[0].get_array()
    assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255


def test_trajectories_say_when_the_scale_is_estimated_from_the_fringes():
    from dataclasses import replace

    res = result(2)
    assert "scale estimated" not in figures.trajectories_figure(res).axes[0].get_title()
    res = replace(res, calibration=Calibration(pixel_size_nm=0.1, pixel_size_source="estimated",
                                               frame_interval_s=1.0, frame_interval_source="file"),
                  options={"d_spacing_nm": 0.47})
    title = figures.trajectories_figure(res).axes[0].get_title()
    assert title.endswith("scale estimated: the strongest fringes taken for 0.47 nm (003) ones")


def test_the_overlay_draws_untracked_detections_beside_tracked_cores_in_every_frame():
    # Before, untracked detections showed only in frames without a tracked core: the same
    # kind of peak came and went with the tracks (review stop 38).
    res = result(1, n_frames=1)
    stray = res.tracks.drop(columns="particle").assign(x=200.0, y=300.0)
    res.detections = pd.concat([res.tracks.drop(columns="particle"), stray], ignore_index=True)
    (rgb,) = figures.overlay_frames(res, [np.zeros((640, 640))], None)
    white = np.all(rgb > 240, axis=-1)
    r = max(8, 640 // 64)
    assert white[300 - 2 * r:300 + 2 * r, 200 - 2 * r:200 + 2 * r].any()  # the stray one, white
    tracked = res.tracks.iloc[0]
    c0 = np.array([int(255 * v) for v in figures.track_colour(0)])
    y0, x0 = max(0, int(tracked.y) - 2 * r), max(0, int(tracked.x) - 2 * r)
    near = rgb[y0:int(tracked.y) + 2 * r, x0:int(tracked.x) + 2 * r]
    assert (np.abs(near.astype(int) - c0).sum(axis=-1) < 10).any()  # the tracked one, coloured


def test_displacement_titles_fit_their_panels_and_many_names_go_below():
    # 14 tracks: velocity lists ran into the next panel, a drift note off the page, and a
    # two-column legend beside the panels over the title above (review stop 38).
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    res = result(14)
    fig = figures.displacement_figure(res)
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        assert all(len(line) <= figures.PANEL_TITLE_CHARS for line in ax.get_title().split("\n"))
    (legend,) = fig.legends
    assert legend.get_window_extent().y1 <= min(ax.get_window_extent().y0 for ax in fig.axes)
