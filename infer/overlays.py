"""Burned-in annotations and clipped areas of a frame: where no lattice is shown.

Exported images often carry a scale bar, text or a data bar drawn into the pixels, and
registered stacks a zero-filled border. These hold no lattice, but the sharp edges of
their strokes look like fringe ends to the network (on a real image with a burned-in
"2 nm", a core was found inside the "2"). They are found as large connected areas at
the frame's extreme grey levels: drawn strokes and bands are flat at (or, anti-aliased,
near) the brightest or darkest value, while a lattice reaches its extremes only at
single columns. On the 14 real perfect lattices of README's Detection accuracy the
largest such area is 85 px (bright) and 6 px (dark); on generated HRTEM and STEM images,
noise-free ones included, 98 px.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Pixels within this fraction of the frame's grey range of its maximum (minimum) are
#: at an extreme level. Bright: anti-aliased text ("2 nm" on a real image) reaches only
#: 0.9 of the range; dark is kept strict, as the dark gaps between STEM columns connect
#: into areas of 0.5 nm² at 0.1 (black bands and zero-filled borders are exactly flat).
BRIGHT_LEVEL = 0.1
DARK_LEVEL = 0.02

#: Smallest connected extreme area taken as drawn or clipped [px] and [nm²]: larger than
#: a clipped atomic column at any pixel size (its bright top spans < 0.01 nm²).
MIN_AREA_PX = 200
MIN_AREA_NM2 = 0.02

#: Cores this close to such an area are not reported [nm] (the core match radius).
MARGIN_NM = 0.5


def overlay_mask(frame: np.ndarray, *, pixel_size_nm: float) -> np.ndarray:
    """Pixels of burned-in annotations and clipped areas (module docstring).

    Parameters
    ----------
    frame : ndarray (H, W)
        A frame at its input resolution and grey levels (any scale).
    pixel_size_nm : float
        Its pixel size [nm/px].

    Returns
    -------
    ndarray of bool (H, W)
        True on every connected area at the frame's extreme levels of at least
        `MIN_AREA_PX` px and `MIN_AREA_NM2` nm².

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> frame = rng.normal(100, 10, (128, 128))
    >>> frame[100:120, 10:60] = 255                      # a burned-in scale bar
    >>> int(overlay_mask(frame, pixel_size_nm=0.05).sum())
    1000
    """
    frame = np.asarray(frame, dtype=np.float32)
    min_area = max(MIN_AREA_PX, MIN_AREA_NM2 / pixel_size_nm**2)
    out = _at_extremes(frame, float(np.nanmin(frame)), float(np.nanmax(frame)), min_area)
    if out.any():  # rare: judged again (most frames stop here), without what would
        # stretch the range until ordinary dark lattice looks extreme
        out = _judged_again(frame, min_area)
    return out


#: A frame one grey level over at least this share of its pixels shows nothing of the
#: specimen (the rest: drawn areas such as a scale bar on a blanked beam).
BLANK_SHARE = 0.96


def shows_nothing(frame: np.ndarray) -> bool:
    """Whether a frame is one grey level over at least `BLANK_SHARE` of its finite pixels
    (blank or saturated, apart from small drawn areas: a blanked beam still carrying its
    scale bar), so that nothing of the specimen shows.

    Two passes over the frame (under 0.5 ms at 512 x 512): the level is the median of a
    scattered sample, then counted exactly.

    Examples
    --------
    >>> frame = np.zeros((64, 64))
    >>> frame[60:62, 4:30] = 255                          # a scale bar on a blank frame
    >>> shows_nothing(frame), shows_nothing(frame + np.random.default_rng(0).random((64, 64)))
    (True, False)
    """
    values = np.asarray(frame).ravel()
    finite = np.isfinite(values) if values.dtype.kind == "f" else None
    n = values.size if finite is None else int(np.count_nonzero(finite))
    if not n:
        return True
    # Scattered, not strided: a stride that divides the row width samples a few columns.
    sample = values[np.linspace(0, values.size - 1, 4099).astype(int)]
    sample = sample[np.isfinite(sample)] if finite is not None else sample
    level = np.median(sample) if len(sample) else np.median(values[finite])
    return bool(np.count_nonzero(values == level) >= BLANK_SHARE * n)


def _at_extremes(frame: np.ndarray, lo: float, hi: float, min_area: float) -> np.ndarray:
    """Connected areas of at least ``min_area`` px at the extremes of the range lo..hi."""
    return _bright(frame, lo, hi, min_area) | _dark(frame, lo, hi, min_area)


def _bright(frame: np.ndarray, lo: float, hi: float, min_area: float) -> np.ndarray:
    return _areas(frame >= hi - BRIGHT_LEVEL * (hi - lo), min_area) if hi > lo else _none(frame)


def _dark(frame: np.ndarray, lo: float, hi: float, min_area: float) -> np.ndarray:
    return _areas(frame <= lo + DARK_LEVEL * (hi - lo), min_area) if hi > lo else _none(frame)


def _none(frame: np.ndarray) -> np.ndarray:
    return np.zeros(frame.shape, dtype=bool)


def _areas(extreme: np.ndarray, min_area: float) -> np.ndarray:
    """The connected areas of ``extreme`` of at least ``min_area`` px."""
    if extreme.sum() < min_area:  # most frames: no labelling needed
        return np.zeros(extreme.shape, dtype=bool)
    labels, _ = ndi.label(extreme)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (sizes >= min_area)[labels]


def _judged_again(frame: np.ndarray, min_area: float) -> np.ndarray:
    """Drawn areas, with the grey range taken from 2 x 2 block medians, and each extreme
    judged against the range of the frame without the other's areas.

    Block medians: an area counts only from `MIN_AREA_PX` pixels (a few pixels across),
    while isolated outliers (hot pixels, X-ray hits, a saturated 65535), however many, do
    not survive a block median, so they cannot stretch the range until ordinary dark
    lattice looks extreme (they would mask whole frames).

    Each extreme apart: a white scale bar on a dim image (a lattice within 20-60 of an
    8-bit range) stretches the range so far that the lattice's dark half looks drawn (11 %
    of a frame), as a zero-filled border does to a bright one. Where both extremes hold
    areas, the smaller set is taken as drawn first: the other extreme is judged again
    without it, then it again without what that leaves.
    """
    h, w = (n - n % 2 for n in frame.shape)
    if not (h and w):
        return _at_extremes(frame, float(np.nanmin(frame)), float(np.nanmax(frame)), min_area)
    medians = np.median(frame[:h, :w].reshape(h // 2, 2, w // 2, 2), axis=(1, 3))
    if not np.isfinite(medians).any():
        return _none(frame)

    def levels(without: np.ndarray) -> tuple[float, float] | None:
        kept = medians[~without[:h, :w].reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))]
        kept = kept[np.isfinite(kept)]
        return (float(kept.min()), float(kept.max())) if len(kept) else None

    lo, hi = levels(_none(frame))
    bright, dark = _bright(frame, lo, hi, min_area), _dark(frame, lo, hi, min_area)

    # Where nothing, or one flat level, is left beside the other extreme's areas (a frame
    # of flat areas), the first judgement stands.
    def again_bright() -> np.ndarray:
        rest = levels(dark)
        return _bright(frame, rest[0], hi, min_area) if rest and hi > rest[0] else bright

    def again_dark() -> np.ndarray:
        rest = levels(bright)
        return _dark(frame, lo, rest[1], min_area) if rest and rest[1] > lo else dark

    if bright.any() and dark.any():
        if bright.sum() <= dark.sum():
            dark = again_dark()
            bright = again_bright()
        else:
            bright = again_bright()
            dark = again_dark()
    return bright | dark
