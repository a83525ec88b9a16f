"""The demo with the bundled model: the seed's velocities come back (issue: end to end)."""

import pytest

from dislotrack.infer.columns import TABLES
from dislotrack.infer.demo import run_demo


@pytest.mark.slow
def test_demo_recovers_glide_and_climb_with_the_bundled_model(tmp_path, capsys):
    table = run_demo(tmp_path, device="cpu")
    out = capsys.readouterr().out
    assert "true vs measured" in out
    # Measured events in nm, as the true ones, so the two can be compared by eye.
    true_head = out.split("Events, true:")[1].split()[:4]
    assert out.split("Events, measured:")[1].split()[:4] == true_head == ["frame", "kind", "x_nm", "y_nm"]
    d = tmp_path / "demo_movie"
    for name in TABLES:
        assert (d / f"{name}.csv").exists()
    assert (d / "figures" / "overlay.mp4").stat().st_size > 0
    rows = table.set_index("particle")
    # particle 0 climbs at -0.18 nm/s (negative climb), particle 1 glides at 0.38 nm/s.
    assert 0 in rows.index and 1 in rows.index
    assert rows.loc[0, "true_climb_nm_s"] == pytest.approx(-0.18, abs=0.005)
    assert rows.loc[1, "true_glide_nm_s"] == pytest.approx(0.38, abs=0.005)
    # Within 5 % of the truth (README: -0.178 vs -0.180, 0.382 vs 0.381), and each core
    # moves only the way it does: no glide of the climbing one, no climb of the gliding one.
    assert rows.loc[0, "pred_climb_nm_s"] == pytest.approx(rows.loc[0, "true_climb_nm_s"], rel=0.05)
    assert rows.loc[1, "pred_glide_nm_s"] == pytest.approx(rows.loc[1, "true_glide_nm_s"], rel=0.05)
    assert abs(rows.loc[0, "pred_glide_nm_s"]) < 0.02 and abs(rows.loc[1, "pred_climb_nm_s"]) < 0.02
    # The dipole's nucleation and annihilation are found (README: event F1 1.00).
    assert "Event F1 = 1.00" in out
