"""Generated movies: rates drawn per second whatever the frame interval, and true events
only where the labels show them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dislotrack.data_gen.movie import _events_at_labels, draw_drift, draw_scenario
from dislotrack.data_gen.sample import GeneratorConfig
from dislotrack.data_gen.specimen import draw_specimen


def test_drift_is_drawn_per_second():
    # Without the random walk, the drift at 0.5 s per frame reaches at frame 2k what it
    # reaches at frame k at 1 s per frame.
    one = draw_drift(np.random.default_rng(3), 11, frame_interval=1.0, walk=0.0)
    half = draw_drift(np.random.default_rng(3), 21, frame_interval=0.5, walk=0.0)
    assert np.abs(one[-1]).max() > 0.1
    assert np.allclose(half[::2], one)


@pytest.mark.parametrize("frame_interval", [0.1, 1.0])
def test_dipole_cores_move_at_most_0_3_nm_per_second(frame_interval):
    cfg = GeneratorConfig(size=128, density=0.0, dipole_fraction=3.0)
    speeds = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        spec = draw_specimen(rng, fov_nm=12.8, realism=0.0)
        scn = draw_scenario(rng, cfg, spec, 20, 12.8, frame_interval)
        speeds += [np.hypot(*np.diff(t.path, axis=0).T).max() / frame_interval
                   for t in scn.tracks if t.partner is not None and len(t.path) > 1]
    assert len(speeds) >= 4
    assert max(speeds) <= 0.3 + 1e-9  # drawn from 0.05-0.3 nm/s (it was per frame: 3 nm/s at 0.1 s)
    assert max(speeds) > 0.1


def test_an_event_whose_cores_are_unlabelled_is_dropped():
    # Particle 2 lies beyond the specimen's edge (no labels): its nucleation cannot be seen.
    cores = pd.DataFrame({"frame": [3, 3, 5], "particle": [0, 1, 0], "x": [10.0, 14.0, 12.0],
                          "y": [20.0, 20.0, 20.0]})
    events = pd.DataFrame({"frame": [3, 4, 5], "kind": ["dipole_nucleation", "nucleation", "annihilation"],
                           "x_nm": [0.0, 9.0, 0.0], "y_nm": [0.0, 9.0, 0.0], "particles": ["0 1", "2", "0"]})
    out = _events_at_labels(events, cores, 0.1)
    assert out["particles"].tolist() == ["0 1", "0"]
    assert out[["x_nm", "y_nm"]].to_numpy() == pytest.approx(np.array([[1.2, 2.0], [1.2, 2.0]]))
