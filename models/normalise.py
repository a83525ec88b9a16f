"""Robust per-image intensity normalisation, shared by training and inference.

Every image the network sees, synthetic or real, goes through `normalise_image`
exactly once, after resampling to the canonical pixel size. `NORMALISATION`
describes the recipe and is written into the model card, so a model file states
what its input must look like.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

#: Scale factor that turns a median absolute deviation into a standard deviation
#: for normally distributed data.
MAD_TO_SIGMA = 1.4826

#: Normalised values are clipped to ``[-CLIP, CLIP]`` (robust standard deviations).
CLIP = 10.0

#: Description of the recipe, for the model card.
NORMALISATION = {
    "method": "median_mad",
    "function": "dislotrack.models.normalise.normalise_image",
    "centre": "median",
    "scale": f"{MAD_TO_SIGMA} * median absolute deviation; fallback std, then 1",
    "clip": CLIP,
    "axes": "per image (last two axes)",
    "non_finite": "ignored in the statistics, set to 0",
    "dtype": "float32",
}


def normalise_image(image: np.ndarray, *, clip: float = CLIP) -> np.ndarray:
    """Centre on the median and scale by the robust standard deviation.

    ``out = clip((image - median) / (1.4826 * MAD), -clip, clip)``, computed per image
    over the last two axes, so a (T, H, W) stack is normalised frame by frame. When
    the MAD is zero (e.g. a mostly flat image) the standard deviation is used
    instead, and a constant image becomes all zeros. Non-finite pixels are ignored
    in the statistics and come out as 0.

    Parameters
    ----------
    image : ndarray, shape (..., H, W)
        Intensities [arbitrary units], any real dtype.
    clip : float, optional
        Output range ``[-clip, clip]`` [robust standard deviations].

    Returns
    -------
    ndarray of float32, same shape as ``image``
        Normalised intensities [robust standard deviations].

    Examples
    --------
    >>> normalise_image(np.array([[1.0, 2.0], [3.0, 100.0]])).round(2)
    array([[-1.01, -0.34],
           [ 0.34, 10.  ]], dtype=float32)
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim < 2:
        raise ValueError(f"normalise_image expects an image of shape (..., H, W), got {img.shape}")
    if clip <= 0:
        raise ValueError(f"clip must be > 0 [robust standard deviations], got {clip}")
    if img.size == 0:
        return img.astype(np.float32)
    finite = np.isfinite(img)
    if finite.all():
        centre, scale = _robust_centre_scale(img, np.median, np.std)
    else:
        missing = np.where(finite, img, np.nan)
        centre, scale = _robust_centre_scale(missing, np.nanmedian, np.nanstd)
    out = np.clip((img - centre) / scale, -clip, clip)
    out[~finite] = 0.0
    return out.astype(np.float32)


def _robust_centre_scale(
    img: np.ndarray, median: Callable, std: Callable
) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust scale over the last two axes (keepdims).

    ``median`` and ``std`` are the numpy reductions to use (the ``nan`` variants
    when ``img`` marks missing pixels with NaN).
    """
    axes = (-2, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN images are handled below
        centre = median(img, axis=axes, keepdims=True)
        mad = median(np.abs(img - centre), axis=axes, keepdims=True)
        sd = std(img, axis=axes, keepdims=True)
    scale = np.where(mad > 0, MAD_TO_SIGMA * mad, sd)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    centre = np.where(np.isfinite(centre), centre, 0.0)
    return centre, scale
