"""Dense training targets made exactly from the geometry of a sample.

Targets (all on the output pixel grid):

* ``heatmap`` -- a Gaussian of fixed physical width ``HEATMAP_SIGMA_NM`` (peak 1)
  at every core, combined by maximum;
* ``hvec`` (2, H, W) -- the unit vector **h** within ``HVEC_RADIUS_NM`` of a core,
  zero elsewhere, with ``hmask`` marking where it is defined;
* ``rs`` -- the rock-salt mask.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HEATMAP_SIGMA_NM = 0.2
HVEC_RADIUS_NM = 0.5


def dense_targets(cores: pd.DataFrame, rs_mask: np.ndarray, *, pixel_size: float) -> dict:
    """Heatmap, h field, h mask and RS mask for one frame.

    Parameters
    ----------
    cores : DataFrame
        Columns x, y [px] (pixel-centre origin), hx, hy.
    rs_mask : ndarray (H, W)
        Rock-salt mask (0/1).
    pixel_size : float
        [nm/px].

    Returns
    -------
    dict of float32 arrays: heatmap (H, W), hvec (2, H, W), hmask (H, W), rs (H, W).
    """
    h, w = rs_mask.shape
    heat = np.zeros((h, w), np.float32)
    hvec = np.zeros((2, h, w), np.float32)
    dist = np.full((h, w), np.inf, np.float32)
    known = np.zeros((h, w), bool)  # h is defined (a lab may annotate a core without it)
    sig = HEATMAP_SIGMA_NM / pixel_size
    rad = HVEC_RADIUS_NM / pixel_size
    half = int(np.ceil(max(4 * sig, rad))) + 1
    for x, y, hx, hy in cores[["x", "y", "hx", "hy"]].to_numpy(float):
        c0, r0 = int(round(x)), int(round(y))
        rs_, re_ = max(r0 - half, 0), min(r0 + half + 1, h)
        cs_, ce_ = max(c0 - half, 0), min(c0 + half + 1, w)
        if rs_ >= re_ or cs_ >= ce_:
            continue
        # Separable squared distances: an outer sum, no full coordinate grids.
        dy2 = (np.arange(rs_, re_, dtype=np.float32) - np.float32(y)) ** 2
        dx2 = (np.arange(cs_, ce_, dtype=np.float32) - np.float32(x)) ** 2
        d2 = dy2[:, None] + dx2[None, :]
        np.maximum(heat[rs_:re_, cs_:ce_], np.exp(d2 * np.float32(-1 / (2 * sig * sig))),
                   out=heat[rs_:re_, cs_:ce_])
        # Nearest core wins the h label where two discs overlap.
        sub = dist[rs_:re_, cs_:ce_]
        near = (d2 <= rad * rad) & (d2 < sub)
        sub[near] = d2[near]
        has_h = bool(np.isfinite(hx) and np.isfinite(hy))
        hvec[0, rs_:re_, cs_:ce_][near] = hx if has_h else 0.0
        hvec[1, rs_:re_, cs_:ce_][near] = hy if has_h else 0.0
        known[rs_:re_, cs_:ce_][near] = has_h
    hmask = (np.isfinite(dist) & known).astype(np.float32)
    return {"heatmap": heat, "hvec": hvec, "hmask": hmask, "rs": rs_mask.astype(np.float32)}
