"""The (003)-fringe pixel-size estimate on generated HRTEM images (issue: within 2 %)."""

import numpy as np
import pytest

from dislotrack.data_gen.imaging import Detector, Grid, Optics, scherzer_defocus
from dislotrack.data_gen.sample import render_frame
from dislotrack.data_gen.specimen import SpecimenParams
from dislotrack.infer.fringes import estimate_pixel_size_from_fringes


@pytest.mark.parametrize(("pixel", "rotation", "seed"), [(0.05, 0.3, 1), (0.1, 1.2, 2), (0.02, 2.5, 3)])
def test_pixel_size_from_fringes_of_a_generated_hrtem_image(pixel, rotation, seed):
    rng = np.random.default_rng(seed)
    grid = Grid(256, pixel)
    spec = SpecimenParams(material="LiNiO2", zone="[100]", rotation=rotation, origin=rng.uniform(0, 1, 2))
    optics = Optics(cs_mm=1.0, defocus_nm=scherzer_defocus(1.0, 200.0), phase=0.5)
    s = render_frame(spec, [], grid=grid, mode="hrtem", imaging=optics,
                     detector=Detector(dose=500.0), rng=rng)[0]
    est, _ = estimate_pixel_size_from_fringes(s.image, d_spacing_nm=0.473)
    assert abs(est / pixel - 1) < 0.02
