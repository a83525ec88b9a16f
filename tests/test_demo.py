"""The demo with the bundled model: the seed's velocities come back (issue: end to end)."""

import numpy as np
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
    climb = rows.loc[0, "pred_climb_nm_s"]
    glide = rows.loc[1, "pred_glide_nm_s"]
    assert climb < 0 and np.isclose(climb, -0.18, rtol=0.25)
    assert np.isclose(glide, 0.38, rtol=0.25)
