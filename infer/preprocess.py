"""Bring a raw frame to what the network expects: float32 at the canonical pixel size.

Resampling keeps pixel centres aligned with corners (scikit-image ``rescale``):
canonical coordinate ``c`` maps back to input coordinate ``(c + 0.5) / s - 0.5``
with ``s = pixel_size / canonical``.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import rescale


def scale_factor(pixel_size_nm: float, canonical_nm: float) -> float:
    """Zoom factor from the input to the canonical grid."""
    return pixel_size_nm / canonical_nm


def to_canonical(frame: np.ndarray, *, pixel_size_nm: float, canonical_nm: float) -> np.ndarray:
    """Resample a frame to the canonical pixel size (anti-aliased when shrinking).

    Parameters
    ----------
    frame : ndarray (H, W)
    pixel_size_nm, canonical_nm : float
        Input and canonical pixel sizes [nm/px].
    """
    s = scale_factor(pixel_size_nm, canonical_nm)
    frame = np.asarray(frame, np.float32)
    if abs(s - 1) < 1e-3:
        return frame
    return rescale(frame, s, order=1, anti_aliasing=s < 1, preserve_range=True).astype(np.float32)


def canonical_to_input(xy: np.ndarray, s: float) -> np.ndarray:
    """Map canonical pixel coordinates back to input pixel coordinates."""
    return (np.asarray(xy, float) + 0.5) / s - 0.5


def input_to_canonical(xy: np.ndarray, s: float) -> np.ndarray:
    """Map input pixel coordinates to canonical pixel coordinates."""
    return (np.asarray(xy, float) + 0.5) * s - 0.5
