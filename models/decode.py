"""Turn network outputs into probability maps and a table of dislocation cores.

This is the one decoding used by validation during training, by ``evaluate`` and
by ``infer``: `outputs_to_maps` converts raw outputs to maps, `decode_cores` finds
the cores in one frame's maps.

Sub-pixel positions come from a least-squares fit of a 2-D quadratic to the
logarithm of the heatmap in the 5x5 window around each local maximum, i.e. a 2-D
Gaussian fit. It is exact for the Gaussian blobs the network is trained to draw
(sigma 2 px) and, on noisy synthetic blobs, was 2-3x more accurate than a 3x3 fit
and 3-5x more accurate than 3x3 or 5x5 intensity-weighted centroids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from skimage.feature import peak_local_max

from dislotrack.models.unet import HEATMAP_CH, HVEC_CH, N_OUT, RS_CH

#: Columns of the table returned by `decode_cores`.
CORE_COLUMNS = ["x", "y", "score", "hx", "hy"]

#: Half-width of the sub-pixel fit window [px] (window 5x5).
FIT_HALF_WIDTH = 2

#: Offsets [px] of the points around a core at which h is sampled and averaged.
_H_OFFSETS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=float)

#: Smallest heatmap value used in the logarithm of the fit.
_LOG_FLOOR = 1e-6


def outputs_to_maps(logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Convert raw network outputs to probability maps and a unit h field.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, 4, H, W) or (4, H, W)
        Raw `UNet` outputs.

    Returns
    -------
    dict of str to ndarray (float32, on the CPU)
        ``"heatmap"``: core probability, shape (B, H, W) or (H, W);
        ``"hfield"``: unit vectors ``(hx, hy)`` along the last axis, shape
        (B, H, W, 2) or (H, W, 2) (zero where the raw vector is zero);
        ``"rocksalt"``: rock-salt probability, shape (B, H, W) or (H, W).
    """
    if logits.ndim not in (3, 4) or logits.shape[-3] != N_OUT:
        raise ValueError(
            f"expected logits of shape (B, {N_OUT}, H, W) or ({N_OUT}, H, W), "
            f"got {tuple(logits.shape)}"
        )
    with torch.no_grad():
        x = logits.detach().float()
        heat = torch.sigmoid(x[..., HEATMAP_CH, :, :])
        hx, hy = x[..., HVEC_CH.start, :, :], x[..., HVEC_CH.start + 1, :, :]
        # Per-component hypot: a norm over a moved (strided) size-2 axis is ~30x slower.
        norm = torch.hypot(hx, hy).clamp_min(1e-12)
        h = torch.stack([hx / norm, hy / norm], dim=-1)
        rs = torch.sigmoid(x[..., RS_CH, :, :])
    return {
        "heatmap": heat.cpu().numpy(),
        "hfield": h.contiguous().cpu().numpy(),
        "rocksalt": rs.cpu().numpy(),
    }


def decode_cores(
    heatmap: np.ndarray,
    hfield: np.ndarray,
    *,
    threshold: float = 0.5,
    min_distance: int = 4,
    same_sign_distance: float = 6.0,
    exclude_border: bool | int = False,
) -> pd.DataFrame:
    """Find dislocation cores in one frame's heatmap and read their h vectors.

    Parameters
    ----------
    heatmap : ndarray, shape (H, W)
        Core probability in [0, 1].
    hfield : ndarray, shape (H, W, 2)
        h vectors ``(hx, hy)`` (need not be unit length).
    threshold : float, optional
        A core's heatmap value must exceed this [probability].
    min_distance : int, optional
        Smallest separation of two cores [px of the network's input] (4 px = 0.4 nm at
        0.1 nm/px, the bundled ``default`` model's pixel size: below the closest dipoles,
        0.5 nm, above double peaks of one core; 0.2 nm for the 0.05 nm/px ``fine``
        model, which was validated so); Chebyshev distance, as in
        `skimage.feature.peak_local_max`.
    same_sign_distance : float, optional
        Of two cores closer than this [px] whose **h** agree within 45 deg only the
        stronger is kept (6 px = 0.6 nm at 0.1 nm/px; 0.3 nm for ``fine``): like-sign cores
        that close do not exist, so they are one core's double peak. Opposite cores
        (dipoles) are kept down to ``min_distance``. 0 disables.
    exclude_border : bool or int, optional
        Passed to `skimage.feature.peak_local_max`: ``False`` keeps cores on the
        border, ``True`` drops those within ``min_distance`` of it, an int gives
        the width [px].

    Returns
    -------
    pandas.DataFrame
        One row per core, strongest first, with columns ``x``, ``y`` [px]
        (sub-pixel; x = column, y = row, origin at the centre of the top-left
        pixel), ``score`` (heatmap value at the peak pixel) and ``hx``, ``hy`` (unit
        h; NaN if the field is zero around the core).

    Examples
    --------
    >>> yy, xx = np.mgrid[:32, :32]
    >>> heat = np.exp(-((xx - 10.3) ** 2 + (yy - 20.6) ** 2) / 8.0)
    >>> h = np.broadcast_to([0.0, 1.0], (32, 32, 2))
    >>> decode_cores(heat, h).round(3)
          x     y  score   hx   hy
    0  10.3  20.6  0.969  0.0  1.0
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    hfield = np.asarray(hfield, dtype=np.float64)
    _check_maps(heatmap, hfield)
    peaks = peak_local_max(
        heatmap, min_distance=min_distance, threshold_abs=threshold, exclude_border=exclude_border
    )
    if len(peaks) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in CORE_COLUMNS})
    rows, cols = peaks[:, 0], peaks[:, 1]
    dy, dx = _gaussian_fit_offsets(heatmap, rows, cols)
    # Pixel centres at integers: the image spans -0.5 .. n - 0.5.
    y = np.clip(rows + dy, -0.5, heatmap.shape[0] - 0.5)
    x = np.clip(cols + dx, -0.5, heatmap.shape[1] - 0.5)
    hx, hy = _sample_h(hfield, x, y)
    cores = pd.DataFrame(
        {"x": x, "y": y, "score": heatmap[rows, cols], "hx": hx, "hy": hy}, columns=CORE_COLUMNS
    )
    return _suppress_same_sign(cores, same_sign_distance) if same_sign_distance > 0 else cores


def with_direction(cores: pd.DataFrame) -> pd.DataFrame:
    """The cores that have an h direction: where the h field is zero around a peak
    (``hx``/``hy`` NaN) a core has no usable direction, and validation, calibration and
    infer alike drop it."""
    return cores[cores[["hx", "hy"]].notna().all(axis=1)]


def _suppress_same_sign(cores: pd.DataFrame, distance: float) -> pd.DataFrame:
    """Drop cores within ``distance`` [px] of a stronger core with h within 45 deg
    (``cores`` strongest first, as `peak_local_max` returns them)."""
    xy = cores[["x", "y"]].to_numpy()
    h = np.nan_to_num(cores[["hx", "hy"]].to_numpy())
    keep: list[int] = []
    for i in range(len(cores)):
        near = [j for j in keep if np.hypot(*(xy[i] - xy[j])) < distance and h[i] @ h[j] > np.sqrt(0.5)]
        if not near:
            keep.append(i)
    return cores.iloc[keep].reset_index(drop=True)


def _check_maps(heatmap: np.ndarray, hfield: np.ndarray) -> None:
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must have shape (H, W), got {heatmap.shape}")
    if hfield.shape != (*heatmap.shape, 2):
        raise ValueError(
            f"hfield must have shape (H, W, 2) = {(*heatmap.shape, 2)}, got {hfield.shape}"
        )


def _design(half_width: int) -> np.ndarray:
    """Design matrix of the quadratic ``c + bx*dx + by*dy + axx*dx**2 + axy*dx*dy +
    ayy*dy**2`` over a flattened (2k+1)**2 window (columns in that order)."""
    k = half_width
    dy, dx = (g.ravel().astype(float) for g in np.mgrid[-k : k + 1, -k : k + 1])
    return np.stack([np.ones_like(dx), dx, dy, dx * dx, dx * dy, dy * dy], axis=1)


def _fit_matrix(half_width: int) -> np.ndarray:
    """Pseudo-inverse mapping a flattened window to quadratic coefficients (`_design`)."""
    return np.linalg.pinv(_design(half_width))


def _gaussian_fit_offsets(
    heatmap: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offsets [px] of each peak from a quadratic fit to log(heatmap).

    Falls back to the intensity-weighted centroid of the window where the fit has
    no maximum; offsets are limited to +-1 px. Near the image's edge only the window's
    pixels inside the image are fitted (a mirrored border would put the core's mirror
    image into its own window: 1.2 px off at 1.5 px from the edge).
    """
    k = FIT_HALF_WIDTH
    padded = np.pad(heatmap, k, mode="constant", constant_values=np.nan)
    win_r = rows[:, None, None] + np.arange(2 * k + 1)[None, :, None]
    win_c = cols[:, None, None] + np.arange(2 * k + 1)[None, None, :]
    windows = padded[win_r, win_c].reshape(len(rows), -1)
    inside = np.isfinite(windows)
    logs = np.log(np.maximum(np.where(inside, windows, 1.0), _LOG_FLOOR))
    coef = logs @ _fit_matrix(k).T
    design = _design(k)
    for i in np.flatnonzero(~inside.all(axis=1)):  # windows cut by the edge: few
        coef[i] = np.linalg.lstsq(design[inside[i]], logs[i, inside[i]], rcond=None)[0]
    _, bx, by, axx, axy, ayy = coef.T
    det = 4 * axx * ayy - axy**2
    is_max = (det > 0) & (axx < 0)
    safe_det = np.where(is_max, det, 1.0)
    dx = (axy * by - 2 * ayy * bx) / safe_det
    dy = (axy * bx - 2 * axx * by) / safe_det
    cx, cy = _centroid_offsets(np.where(inside, windows, 0.0), k)
    dx = np.clip(np.where(is_max, dx, cx), -1.0, 1.0)
    dy = np.clip(np.where(is_max, dy, cy), -1.0, 1.0)
    return dy, dx


def _centroid_offsets(windows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Intensity-weighted centroid offsets [px] of flattened (2k+1)**2 windows."""
    dy, dx = (g.ravel().astype(float) for g in np.mgrid[-k : k + 1, -k : k + 1])
    w = np.maximum(windows, 0.0)
    total = np.maximum(w.sum(axis=1), 1e-12)
    return (w @ dx) / total, (w @ dy) / total


def _sample_h(hfield: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of bilinearly interpolated h over a 3x3 neighbourhood, then normalised."""
    ry = (y[:, None] + _H_OFFSETS[None, :, 0]).ravel()
    rx = (x[:, None] + _H_OFFSETS[None, :, 1]).ravel()
    mean = [
        ndimage.map_coordinates(hfield[..., i], [ry, rx], order=1, mode="nearest")
        .reshape(len(x), -1)
        .mean(axis=1)
        for i in range(2)
    ]
    h = np.stack(mean, axis=1)
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    h = np.divide(h, norm, out=np.full_like(h, np.nan), where=norm > 0)
    return h[:, 0], h[:, 1]
