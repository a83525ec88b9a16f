"""Which cores an image shows: the one definition behind `ignore_hidden_cores`
training and the benchmarks' "cores (events) the image shows" figures.

A misfit edge core shows in (003) lattice fringes as a terminating half-plane: the
fringe phase winds by 2 pi on a small circle around it. Read on a noise-free image,
a winding of 0 means the image carries no such signature there (basal Burgers
vectors; cores crowded by others, under an amorphous layer or blurred by the lens; some
inside rock salt, though the generator's partial cation mixing keeps part of the (003)
contrast there, so the domain itself hides about one core in six that would show
without it), whatever a detector does.
"""

from __future__ import annotations

import numpy as np

from dislotrack.models.fringes import fringe_winding
from dislotrack.models.normalise import normalise_image

#: Radius of the circle on which the winding is read [nm]: about one (003) period,
#: so that a neighbouring core rarely falls inside it.
SHOW_RADIUS_NM = 0.5


def shows_half_plane_end(image: np.ndarray, xy: np.ndarray, *, pixel_size_nm: float,
                         d_spacing_nm: float) -> np.ndarray:
    """Per point: whether the fringes of spacing ``d_spacing_nm`` end inside a circle of
    `SHOW_RADIUS_NM` around it (winding number != 0).

    Parameters
    ----------
    image : ndarray (H, W)
        A noise-free (expected) image, any scale.
    xy : ndarray (n, 2)
        Points (x, y) [px, pixel-centre origin].
    pixel_size_nm, d_spacing_nm : float
        Pixel size and fringe spacing [nm] (the (003) spacing for misfit cores).

    Returns
    -------
    ndarray of bool (n,)
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if not len(xy):
        return np.zeros(0, dtype=bool)
    w = fringe_winding(normalise_image(image), xy, period_px=d_spacing_nm / pixel_size_nm,
                       radius_px=SHOW_RADIUS_NM / pixel_size_nm)
    return w != 0
