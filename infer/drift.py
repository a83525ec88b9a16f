"""Specimen drift: measure it from the frames, remove it from the detections.

Convention (also in DESIGN.md): a feature at ``(x, y)`` in frame 0 appears at
``(x + dx, y + dy)`` in frame ``t``; drift-corrected positions are
``(x - dx, y - dy)``. All shifts are in pixels.

How the drift is measured
-------------------------
Frames are registered one after the other: only the drift *step* between
consecutive frames is measured, and the steps are summed. Each frame is compared
with a *running reference*, an exponentially weighted average of the previous
frames, each moved onto the current frame by its measured drift. The average
follows slow lattice changes (delithiation, rock-salt growth), a single moving
dislocation core barely affects it, and because it is less noisy than one frame
the summed error grows more slowly than with plain frame-to-frame chaining (3-4
times over 30 noisy frames with the default weight, in our trials). Memory is
O(1) in movie length.

Registration is cross-correlation of mean-free, Hann-tapered frames (the taper is
fixed on the detector, so it does not pull the result towards zero drift). The
cross-power spectrum is Wiener-weighted: a running power spectrum of the frames
gives each frequency's share of structure over the noise floor (the median power),
so the lattice reflections count and the noise-only frequencies do not; this is
what makes low-dose frames registrable. The sub-pixel peak comes from an upsampled
DFT (Guizar-Sicairos et al., the method of
:func:`skimage.registration.phase_cross_correlation`) plus a parabolic fit on that
fine grid. skimage's function itself is not called because it cannot restrict its
peak search to a window, which the lattice needs (below), nor weight frequencies;
its phase normalisation biased sub-pixel shifts of smooth or noisy images by
0.2-1 px in our trials.

Limits, by design:

* A perfect lattice is periodic, so its correlation has equally tall peaks one
  lattice period apart. The reference is first moved by the predicted step (a
  running average of past steps) and the peak is searched only within
  ``max_step_px`` of that prediction, on the fine grid (a lattice of ~2 px period has
  correlation peaks narrower than a pixel). Steady drift of any speed is followed;
  the first step and any change of the step between frames must stay below
  ``max_step_px`` (keep it below half the shortest lattice period). A peak on the
  window's edge is followed out to the nearest maximum and warned of when that lies
  more than a grid step beyond; a larger change that a lattice peak inside the window
  imitates (e.g. a first step of 1.5-1.8 px with a 2.5 px period) is taken for that
  peak, unwarned.
* An image showing a single set of lattice fringes does not fix the drift
  *along* the fringes. When the correlation peak is a ridge (curvature across it
  more than 10 times that along it), only the component across the ridge is
  measured and the predicted step is kept along it; a warning gives the number of
  such frames. Drift corrected positions are then unreliable along the fringes.
* Given ``layer_reflections`` (a ``[100]``-type view's (003) and in-layer reflections,
  `dislotrack.infer.lattice.Lattice.registration_reflections`), a ridge's direction
  is read from the in-layer spots alone where they agree on it (`_MIN_COHERENCE`);
  frames where they do not are counted and warned as above. An aliased in-layer spot
  (of planes finer than two pixels) moves otherwise than the specimen and would
  mislead this read: `registration_reflections` refuses the cases it can tell.
* Frames far too noisy to show the lattice (synthetic HRTEM below about 40
  e/px^2 at 256 x 256 px in our trials) give no reliable peak, and the summed
  drift can run off by many pixels. Check ``drift.csv`` on such movies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import fft
from skimage.filters import window as make_window

from dislotrack.data_gen.text import first_few

logger = logging.getLogger(__name__)

#: Weight of the newest step in the running step average that predicts the next one.
_STEP_MEMORY = 0.3

#: Below this ratio of the peak curvatures (weak / strong) the peak counts as a ridge.
_RIDGE_RATIO = 0.1


#: ``measure_drift``'s ``DataFrame.attrs`` key: the number of frames whose drift along the
#: fringes could not be seen (kept at its prediction).
UNSEEN_ALONG_FRINGES = "frames_unseen_along_fringes"
#: ``measure_drift``'s ``DataFrame.attrs`` key: the number of frames whose drift along the
#: fringes was read from the in-layer spots (``layer_reflections``).
READ_FROM_LAYER_SPOTS = "frames_along_fringes_from_layer_spots"


def measure_drift(
    frames: Iterable[np.ndarray],
    *,
    upsample_factor: int = 10,
    max_step_px: float | None = 1.0,
    reference_weight: float = 0.2,
    layer_reflections: np.ndarray | None = None,
    warn: bool = True,
) -> pd.DataFrame:
    """Measure the specimen drift of every frame relative to frame 0.

    Parameters
    ----------
    frames : iterable of ndarray, each shape (ny, nx)
        The movie, frame by frame (an iterator is fine; each frame is read once).
    upsample_factor : int
        The correlation peak is located on a grid of ``1 / upsample_factor`` [px]
        and then refined by a parabolic fit.
    max_step_px : float or None
        Largest change [px] of the drift step between consecutive frames (the
        first step counts from zero). ``None`` searches the whole correlation (no
        protection against lattice-period jumps).
    reference_weight : float
        Weight of the newest frame in the running reference, in (0, 1]; 1 compares
        each frame with the previous one only.
    layer_reflections : ndarray (2, 2), optional
        The crystal's (003) reflection and an in-layer one, rows (kx, ky) [cycles/px of
        these frames] (`dislotrack.infer.lattice.Lattice.registration_reflections`).
        Where the (003) fringes outweigh the rest so that the correlation peak is a
        ridge, the drift along them is then read from the in-layer spots alone
        (`lattice_weights`), within ``max_step_px`` (1 px if None) of the predicted
        step, instead of being extrapolated.
    warn : bool
        Log warnings (of lattice-period jumps, frames without a correlation peak, drift
        along the fringes that cannot be seen). A caller whose frames cannot show a core
        passes False: there such trouble is expected and concerns no result.

    Returns
    -------
    DataFrame
        Columns ``frame`` (0, 1, ...), ``dx``, ``dy`` [px]; ``dx = dy = 0`` for frame 0.
        ``attrs[UNSEEN_ALONG_FRINGES]``: the number of frames whose drift along the
        fringes could not be seen; ``attrs[READ_FROM_LAYER_SPOTS]``: of those whose drift
        along the fringes was read from the in-layer spots.

    Examples
    --------
    >>> from scipy import ndimage
    >>> base = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(64, 64)), 2)
    >>> moved = ndimage.shift(base, (-0.3, 0.6), mode="wrap")  # content moves +x, -y
    >>> measure_drift([base, moved]).round(1).to_numpy().tolist()
    [[0.0, 0.0, 0.0], [1.0, 0.6, -0.3]]
    """
    if not 0 < reference_weight <= 1:
        raise ValueError(f"reference_weight must be in (0, 1], got {reference_weight}")
    if max_step_px is not None and max_step_px <= 0:
        raise ValueError(f"max_step_px must be positive [px], got {max_step_px}")
    iterator = iter(frames)
    try:
        first = _standardise(next(iterator), 0)
    except StopIteration:
        raise ValueError("measure_drift needs at least one frame, got none") from None
    grid = _Grid(first.shape)
    layer = None if layer_reflections is None else lattice_weights(grid, layer_reflections)
    reference = fft.rfft2(first)  # running reference spectrum, current frame's axes
    power = np.abs(fft.rfft2(first * grid.taper)) ** 2  # running power spectrum
    drift, predicted = np.zeros(2), np.zeros(2)  # (rows, cols) = (dy, dx)
    rows, trouble = [(0, 0.0, 0.0)], {"ok": 0, "ridge": 0, "layer": 0, "flat": 0}
    flat: list[int] = []  # frames without a correlation peak
    jumps: list[tuple[int, float]] = []  # (frame, step change [px]) beyond max_step_px
    for t, frame in enumerate(iterator, start=1):
        image = _standardise(frame, t, grid.shape)
        moving = fft.rfft2(image * grid.taper)
        power = (1 - reference_weight) * power + reference_weight * np.abs(moving) ** 2
        guess = reference * grid.ramp(predicted)  # the reference moved by the predicted step
        residual, status, offset = _measure_residual(
            fft.rfft2(fft.irfft2(guess, s=grid.shape) * grid.taper) * np.conj(moving),
            _wiener(power),
            grid,
            max_step_px=max_step_px,
            upsample_factor=upsample_factor,
            layer=layer,
        )
        # A peak followed just out of the window (by up to a grid step) is no jump.
        if max_step_px is not None and offset > max_step_px + 1.0 / upsample_factor:
            jumps.append((t, offset))
        trouble[status] += 1
        if status == "flat":
            flat.append(t)
        step = predicted + residual
        drift = drift + step
        predicted = (1 - _STEP_MEMORY) * predicted + _STEP_MEMORY * step
        reference = (1 - reference_weight) * guess * grid.ramp(residual) + (
            reference_weight * fft.rfft2(image)
        )
        rows.append((t, float(drift[1]), float(drift[0])))
    if jumps and warn:  # one line for the movie, not one per frame
        frames = ", ".join(str(f) for f, _ in jumps[:5]) + (", ..." if len(jumps) > 5 else "")
        logger.warning(
            "the drift step between frames changed by more than %.2f px in %d frame(s) (frames "
            "%s; largest change %.2f px), beyond what registration follows safely: from such a "
            "frame on the drift may be off by a lattice period (a jump of a few px in drift.csv "
            "there; a stage jump, or drift faster than %.2f px per frame at the start, does this)",
            max_step_px, len(jumps), frames, max(j for _, j in jumps), max_step_px,
        )
    if trouble["ridge"] and warn:
        # "Repeat along one direction", not "one set of (003) fringes": any periodic
        # content does it, also where pipeline's (003) check finds no such fringes.
        logger.warning(
            "drift along the lattice fringes cannot be seen in %d of %d frames (the frames "
            "repeat along one direction only, as one set of fringes does): the drift (drift.csv) keeps "
            "the drift along them extrapolated from earlier frames' steps, and motion along the "
            "fringes includes any drift "
            "that way (the climb of cores that end a (003) fringe, their h along the layers)",
            trouble["ridge"],
            len(rows) - 1,
        )
    if flat and warn:
        logger.warning(
            "%d of the %d frames after the first had no correlation peak (blank?): %s %s; "
            "their drift was extrapolated from earlier frames' steps",
            len(flat), len(rows) - 1, "frame" if len(flat) == 1 else "frames",
            first_few([str(f) for f in flat], 8),
        )
    out = pd.DataFrame(rows, columns=["frame", "dx", "dy"])
    out.attrs[UNSEEN_ALONG_FRINGES] = trouble["ridge"]  # for figures that show such motion
    out.attrs[READ_FROM_LAYER_SPOTS] = trouble["layer"]  # for summary.json
    return out



def apply_drift(detections: pd.DataFrame, drift: pd.DataFrame) -> pd.DataFrame:
    """Add drift-corrected positions ``x_corr = x - dx`` and ``y_corr = y - dy`` [px].

    Parameters
    ----------
    detections : DataFrame
        Needs ``frame``, ``x``, ``y`` [px].
    drift : DataFrame
        ``frame``, ``dx``, ``dy`` [px], as returned by `measure_drift`.

    Returns
    -------
    DataFrame
        A copy of ``detections`` (same row order and index) with ``x_corr``, ``y_corr``.
    """
    table = drift.set_index("frame")[["dx", "dy"]]
    missing = sorted(set(detections["frame"].tolist()) - set(table.index.tolist()))
    if missing:
        raise ValueError(f"drift has no entry for frame(s) {missing[:10]}")
    shift = table.loc[detections["frame"].to_numpy()]
    out = detections.copy()
    out["x_corr"] = detections["x"].to_numpy(dtype=float) - shift["dx"].to_numpy()
    out["y_corr"] = detections["y"].to_numpy(dtype=float) - shift["dy"].to_numpy()
    return out


def position_columns(table: pd.DataFrame) -> list[str]:
    """``["x_corr", "y_corr"]`` if the table has drift-corrected positions, else ``["x", "y"]``."""
    return ["x_corr", "y_corr"] if {"x_corr", "y_corr"} <= set(table.columns) else ["x", "y"]


def _standardise(frame: np.ndarray, index: int, shape: tuple | None = None) -> np.ndarray:
    """Frame as float with zero mean and unit SD (so every frame weighs the same)."""
    image = np.asarray(frame, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"frame {index} must be a 2-D image, got shape {image.shape}")
    if shape is not None and image.shape != shape:
        raise ValueError(f"frame {index} has shape {image.shape}, frame 0 has {shape}")
    spread = image.std()
    return (image - image.mean()) / (spread if spread > 0 else 1.0)


class _Grid:
    """Frame shape, taper and the frequencies of its real-FFT (half) spectrum."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.taper = make_window("hann", shape)
        self.rows = fft.fftfreq(shape[0])[:, None]
        self.cols = fft.rfftfreq(shape[1])[None, :]
        # The half spectrum stands for both halves, except its self-conjugate columns.
        self.weights = np.full(self.cols.size, 2.0)
        self.weights[0] = 1.0
        if shape[1] % 2 == 0:
            self.weights[-1] = 1.0
        # Lag (rows, cols) [px] of each point of the correlation surface, and its length.
        self.lags = np.meshgrid(*(fft.fftfreq(n, 1 / n) for n in shape), indexing="ij")
        self.lag_length = np.hypot(*self.lags)

    def ramp(self, shift: np.ndarray) -> np.ndarray:
        """Phase ramp that moves the content of a spectrum by (rows, cols) [px]."""
        # The product of a column and a row of phases: (H + W/2) exponentials, not H x W/2.
        return np.exp(-2j * np.pi * self.rows * shift[0]) * np.exp(-2j * np.pi * self.cols * shift[1])


#: Spot width of `lattice_weights`: Gaussian sigma relative to the shorter reflection,
#: and at least this many frequency bins.
_SPOT_SIGMA, _SPOT_MIN_BINS = 0.06, 1.5


def lattice_weights(grid: _Grid, reflections: np.ndarray) -> np.ndarray:
    """Weights on a frame's half spectrum that keep the in-layer spots of a lattice.

    Parameters
    ----------
    grid : _Grid
        The frame's shape and frequencies.
    reflections : ndarray (2, 2)
        Rows g1 (the (003) reflection) and g2 (an in-layer one) as (kx, ky) [cycles/px].

    Returns
    -------
    ndarray
        Gaussian spots (peak 1, sigma `_SPOT_SIGMA` of the shorter g, at least
        `_SPOT_MIN_BINS` bins; 0 beyond 4 sigma) at every point ``n1 g1 + n2 g2`` with
        ``n2 != 0`` (off the row of g1, along which a ridge runs) inside the Nyquist box.
    """
    g = np.asarray(reflections, float).reshape(2, 2)
    if abs(np.linalg.det(g)) < 1e-9:
        raise ValueError(f"reflections must be two independent vectors, got {g.tolist()}")
    lengths = np.hypot(*g.T)
    sigma = max(_SPOT_SIGMA * lengths.min(), _SPOT_MIN_BINS / min(grid.shape))
    # Orders enough for every point of the box, however oblique the basis.
    m = int(np.ceil(0.75 / (abs(np.linalg.det(g)) / lengths.max())))
    n1, n2 = np.mgrid[-m:m + 1, -m:m + 1].reshape(2, -1)
    spots = np.outer(n1, g[0]) + np.outer(n2, g[1])  # (kx, ky)
    keep = (np.abs(spots) < 0.5).all(axis=1) & (n2 != 0) & (spots[:, 0] >= 0)  # -g: its partner
    weights = np.zeros((grid.rows.size, grid.cols.size))
    for kx, ky in spots[keep]:
        d2 = (grid.cols - kx) ** 2 + ((grid.rows - ky + 0.5) % 1.0 - 0.5) ** 2
        weights = np.maximum(weights, np.exp(-d2 / (2 * sigma**2)))
    weights[weights < np.exp(-8.0)] = 0.0  # beyond 4 sigma: the spots stay sparse
    return weights


#: `_along_ridge` reads the drift along the fringes only where the in-layer spots agree
#: on it: the line maximum is at least this fraction of the sum of their amplitudes
#: (1 for a pure shift; noise alone gave 0.19-0.75 in a review's trials).
_MIN_COHERENCE = 0.85


def _along_ridge(product: np.ndarray, lag: np.ndarray, axis: np.ndarray, grid: _Grid,
                 radius: float, upsample_factor: int) -> float | None:
    """Offset [px] along ``axis`` from ``lag`` of the correlation maximum of ``product``
    (the cross-power at the in-layer spots only) within ``radius``; None without an
    interior maximum or where the spots do not agree on it (`_MIN_COHERENCE`)."""
    steps = np.arange(-radius, radius + 1e-9, 1.0 / upsample_factor)
    # Only the spots' support counts (`lattice_weights` is 0 beyond 4 sigma): the line
    # is sum_k a(k) exp(2 pi i s k.axis), a(k) the product moved to ``lag``.
    rows, cols = np.nonzero(product)
    if not len(rows):
        return None
    k_rows, k_cols = grid.rows[rows, 0], grid.cols[0, cols]
    a = product[rows, cols] * grid.weights[cols] * np.exp(2j * np.pi * (k_rows * lag[0] + k_cols * lag[1]))
    line = (np.exp(2j * np.pi * np.outer(steps, k_rows * axis[0] + k_cols * axis[1])) @ a).real
    best = int(np.argmax(line))
    if not 0 < best < len(line) - 1 or line[best] < _MIN_COHERENCE * np.abs(a).sum():
        return None
    around = line[best - 1 : best + 2]
    curvature = around[0] - 2 * around[1] + around[2]
    if not curvature < 0:
        return None
    return float(steps[best] + 0.5 * (around[0] - around[2]) / curvature / upsample_factor)


def _wiener(power: np.ndarray) -> np.ndarray:
    """Weights (signal / total power) that keep the frequencies carrying structure
    (lattice reflections, texture) and suppress those carrying only noise, whose
    power is taken as the median over the spectrum."""
    signal = np.maximum(power - np.median(power), 0.0)
    return np.divide(signal, power, out=np.zeros_like(power), where=power > 0)


def _measure_residual(
    product: np.ndarray,
    weight: np.ndarray,
    grid: _Grid,
    *,
    max_step_px: float | None,
    upsample_factor: int,
    layer: np.ndarray | None = None,
) -> tuple[np.ndarray, str, float]:
    """Displacement (rows, cols) [px] of a frame relative to the moved reference.

    ``product`` is their cross-power half spectrum (tapered images), ``weight`` the
    `_wiener` weights. Returns the displacement, a status: ``"ok"``, ``"ridge"``
    (only the direction across the ridge was measured), ``"layer"`` (a ridge, the
    drift along it read from the in-layer spots) or ``"flat"`` (no peak: zero
    displacement), and the length [px] of the measured offset (across the ridge only
    for a ridge).
    """
    product = product * weight
    if max_step_px is None:
        surface = fft.irfft2(product, s=grid.shape)
        peak = np.unravel_index(np.argmax(surface), grid.shape)
        lag = _refine_peak(product, np.array([grid.lags[0][peak], grid.lags[1][peak]]), grid,
                           upsample_factor)
    else:
        # The window is searched on the fine grid itself: a lattice of ~2.5 px period has
        # correlation peaks narrower than a pixel, and on the integer lags the window's
        # edge could outscore a true peak just beyond it (a 1.007 px step was taken as
        # its neighbour 2.5 px away, and the drift ran off by one period per frame).
        lag = _refine_peak(product, np.zeros(2), grid, upsample_factor, span=2 * max_step_px,
                           radius=max_step_px)
        if np.hypot(*lag) > max_step_px - 1.5 / upsample_factor:
            # On the window's edge: the peak is beyond it; follow it out to the nearest
            # maximum (warned as a jump when more than a grid step out).
            lag = _refine_peak(product, lag, grid, upsample_factor)
    curvature, axes = _peak_curvature(product, lag, grid)
    if not curvature[1] > 0:
        return np.zeros(2), "flat", 0.0
    if curvature[0] < _RIDGE_RATIO * curvature[1]:
        strong = axes[:, 1]
        across = float(strong @ lag)
        if layer is not None:  # the in-layer spots alone fix the position along the ridge
            along = _along_ridge(product * layer, strong * across, axes[:, 0], grid,
                                 max_step_px or 1.0, upsample_factor)
            if along is not None:
                return -(strong * across + axes[:, 0] * along), "layer", abs(across)
        # Along the ridge the peak's place is arbitrary (often the search window's edge):
        # only the measured component counts as a change of the step.
        return -strong * across, "ridge", abs(across)
    return -lag, "ok", float(np.hypot(*lag))


def _refine_peak(
    product: np.ndarray, lag: np.ndarray, grid: _Grid, upsample_factor: int,
    span: float = 1.5, radius: float | None = None,
) -> np.ndarray:
    """Sub-pixel correlation peak (rows, cols) [px] near ``lag``.

    The inverse DFT of the half spectrum ``product`` is evaluated on a grid of step
    ``1 / upsample_factor`` spanning ``span`` px around ``lag`` by matrix multiplication
    (Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33, 156 (2008)); a parabola
    through the best grid point and its neighbours removes the grid quantisation.
    With ``radius``, only grid points within it of ``lag`` count.
    """
    size = int(np.ceil(span * upsample_factor)) | 1  # odd, centred on lag
    steps = (np.arange(size) - size // 2) / upsample_factor
    row_kernel = np.exp(2j * np.pi * np.outer(lag[0] + steps, grid.rows[:, 0]))
    col_kernel = grid.weights * np.exp(2j * np.pi * np.outer(lag[1] + steps, grid.cols[0]))
    local = (row_kernel @ product @ col_kernel.T).real
    if radius is not None:
        local[np.hypot(*np.meshgrid(steps, steps, indexing="ij")) > radius + 1e-9] = -np.inf
    best = np.unravel_index(np.argmax(local), local.shape)
    refined = lag + steps[list(best)]
    for axis, index in enumerate(best):
        if 0 < index < size - 1:
            line = local[best[0]] if axis == 1 else local[:, best[1]]
            around = line[index - 1 : index + 2]
            curvature = around[0] - 2 * around[1] + around[2]
            if np.isfinite(around).all() and curvature < 0:
                refined[axis] += 0.5 * (around[0] - around[2]) / curvature / upsample_factor
    return refined


def _peak_curvature(
    product: np.ndarray, lag: np.ndarray, grid: _Grid
) -> tuple[np.ndarray, np.ndarray]:
    """Principal curvatures (ascending, positive at a maximum) of the correlation at
    ``lag`` [px] and their directions (columns, as (rows, cols) unit vectors),
    computed exactly from the half spectrum."""
    phase = (product * grid.ramp(-lag)).real
    phase = phase * grid.weights
    k = [grid.rows, grid.cols]
    hessian = np.array([[np.sum(k[i] * k[j] * phase) for j in range(2)] for i in range(2)])
    return np.linalg.eigh(4 * np.pi**2 * hessian)
