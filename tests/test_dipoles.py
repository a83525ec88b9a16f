"""dipoles.csv and dipoles.png: a dipole's core spacing along b and along h, frame by frame
(hand-made tracks; no analysis run)."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from dislotrack.data_gen.conventions import b_hat_from_h
from dislotrack.infer import dipole_figure
from dislotrack.infer.calibration import Calibration
from dislotrack.infer.dipoles import DIPOLE_COLUMNS, dipole_separations
from dislotrack.infer.pipeline import AnalysisResult

H = np.array([0.6, 0.8])  # core a's h; b's is -H
PIXEL = 0.1


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def pair_tracks(glide_px_per_frame: float, climb_px_per_frame: float, frames=range(2, 8),
                start_px: float = 10.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Core 4 at rest; core 9 starts ``start_px`` along a's b-hat and moves along b-hat and h.
    A lone core 1 is in every frame too."""
    b = b_hat_from_h(H)
    rows = []
    for f in frames:
        k = f - frames[0]
        pos = np.array([50.0, 50.0]) + (start_px + glide_px_per_frame * k) * b + climb_px_per_frame * k * H
        rows += [{"particle": 4, "frame": f, "x": 50.0, "y": 50.0, "hx": H[0], "hy": H[1]},
                 {"particle": 9, "frame": f, "x": pos[0], "y": pos[1], "hx": -H[0], "hy": -H[1]},
                 {"particle": 1, "frame": f, "x": 5.0, "y": 5.0, "hx": 1.0, "hy": 0.0}]
    summary = pd.DataFrame({"particle": [1, 4, 9], "kind": ["single", "dipole", "dipole"],
                            "partner": pd.array([pd.NA, 9, 4], dtype="Int64")})
    return pd.DataFrame(rows), summary


def test_a_gliding_pair_widens_along_b_and_keeps_its_spacing_along_h():
    tracks, summary = pair_tracks(glide_px_per_frame=3.0, climb_px_per_frame=0.0)
    d = dipole_separations(tracks, summary, pixel_size_nm=PIXEL, frame_interval_s=0.5)
    assert list(d.columns) == DIPOLE_COLUMNS
    assert set(d["pair"]) == {"4 9"} and (d["particle_a"] == 4).all() and (d["particle_b"] == 9).all()
    assert d["frame"].tolist() == list(range(2, 8))
    np.testing.assert_allclose(d["t_s"], 0.5 * d["frame"])
    np.testing.assert_allclose(d["glide_separation_nm"], PIXEL * (10.0 + 3.0 * np.arange(6)), atol=1e-9)
    np.testing.assert_allclose(d["climb_separation_nm"], 0.0, atol=1e-9)
    np.testing.assert_allclose(d["separation_nm"], np.hypot(d.glide_separation_nm, d.climb_separation_nm))


def test_a_climbing_pair_widens_along_h_with_the_sign_of_a_s_h():
    tracks, summary = pair_tracks(glide_px_per_frame=0.0, climb_px_per_frame=-2.0)
    d = dipole_separations(tracks, summary, pixel_size_nm=PIXEL)
    np.testing.assert_allclose(d["glide_separation_nm"], 1.0, atol=1e-9)
    np.testing.assert_allclose(d["climb_separation_nm"], -0.2 * np.arange(6), atol=1e-9)  # b moves to -h
    assert d["t_s"].isna().all()  # no frame interval: no times


def test_only_frames_with_both_cores_and_pairs_with_tracks_count():
    tracks, summary = pair_tracks(1.0, 0.0)
    tracks = tracks[~((tracks.particle == 9) & (tracks.frame == 5))]
    d = dipole_separations(tracks, summary, pixel_size_nm=PIXEL)
    assert d["frame"].tolist() == [2, 3, 4, 6, 7]
    gone = dipole_separations(tracks[tracks.particle != 9], summary, pixel_size_nm=PIXEL)
    assert gone.empty and list(gone.columns) == DIPOLE_COLUMNS
    # Typed as a full table: pooled over movies, an empty one kept the numbers numeric.
    assert (gone.dtypes == d.dtypes).all()
    assert pd.concat([gone, d]).dtypes.equals(d.dtypes)
    singles = summary.assign(kind="single", partner=pd.array([pd.NA] * 3, dtype="Int64"))
    assert dipole_separations(tracks, singles, pixel_size_nm=PIXEL).empty


def result(tracks: pd.DataFrame, summary: pd.DataFrame) -> AnalysisResult:
    empty = pd.DataFrame()
    return AnalysisResult(empty, tracks, summary, empty, empty, empty,
                          Calibration.from_file(pixel_size_nm=PIXEL, frame_interval_s=1.0),
                          np.zeros(10), (10, 96, 96), "m.tif", "", {})


def test_the_result_and_its_figure_show_a_gliding_pair_flat_across_the_glide_plane():
    res = result(*pair_tracks(glide_px_per_frame=3.0, climb_px_per_frame=0.0))
    assert res.dipoles["glide_separation_nm"].iloc[-1] == pytest.approx(2.5)
    fig = dipole_figure.dipoles_figure(res)
    across, along = fig.axes
    (line_h,) = across.lines
    (line_b,) = along.lines
    np.testing.assert_allclose(line_h.get_ydata(), 0.0, atol=1e-9)
    np.testing.assert_allclose(line_b.get_ydata(), res.dipoles["glide_separation_nm"])
    np.testing.assert_allclose(line_b.get_xdata(), res.dipoles["frame"] * 1.0)
    assert across.get_ylim() == along.get_ylim() and across.get_ylim()[1] > 2.5  # one scale
    assert [t.get_text() for t in along.get_legend().get_texts()] == ["#4–#9: 1.00 → 2.50"]
    assert "1 dipole" in fig._suptitle.get_text()


def test_no_dipoles_says_so():
    tracks, summary = pair_tracks(1.0, 0.0)
    fig = dipole_figure.dipoles_figure(result(tracks[tracks.particle == 1], summary.iloc[:1]))
    assert all(any(t.get_text() == "no dipoles" for t in ax.texts) for ax in fig.axes)
    assert fig.axes[0].get_xlim() == (0.0, 9.0)  # the movie's 10 frames at 1 s, not 0-1
