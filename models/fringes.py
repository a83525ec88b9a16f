"""The local (003) fringe as two extra input channels of the network.

An edge core is where the phase of a lattice fringe winds by 2 pi (a terminating
half-plane): a local, contrast-independent signature that geometric phase analysis
(GPA) reads off one Bragg reflection. `FringeChannels` computes that reflection's
complex image for every input, inside the network's forward pass, so that training,
inference and test-time flips all see exactly the same recipe:

1. FFT of the (normalised) image;
2. ``g`` = the strongest frequency within +-``band`` of ``1 / period_px`` in the
   upper half plane (rows < 0 in FFT order, or row 0 and columns > 0);
3. a Gaussian mask of sigma ``width / period_px`` around ``g`` (cut at 4 sigma),
   inverse FFT: the fringe's complex image ``A(r) exp(i (2 pi g.r + phi(r)))``,
   carrier included;
4. scaled by the median of ``A`` over the image and clipped to +-``clip``.

Its real and imaginary parts are the channels. The amplitude dips and the phase
winds at a core; an image without such fringes gives a weak, noise-like band.
This module imports nothing from the rest of dislotrack.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

#: Gaussian mask sigma of the fringe image, relative to 1 / period (the network's channels).
FRINGE_MASK_WIDTH = 0.25


class FringeChannels(nn.Module):
    """Append the real and imaginary parts of the (003) fringe image to the input.

    Parameters
    ----------
    period_px : float
        Nominal fringe period [px] at the model's canonical pixel size (0.473 nm /
        0.1 nm/px = 4.73 px for LiNiO2's (003)).
    band : float
        Relative half-width of the ring searched for the reflection.
    width : float
        Gaussian mask sigma, relative to ``1 / period_px``; the channels resolve
        about ``period_px / (2 pi width)`` px.
    clip : float
        The channels are clipped to +-``clip`` median fringe amplitudes.
    avoid_angle_deg : float
        With ``avoid`` given to `forward`, ring frequencies within this angle of its
        direction are skipped.

    Examples
    --------
    >>> y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    >>> fringes = torch.cos(2 * torch.pi * y / 4.0)[None, None]
    >>> FringeChannels(4.0)(fringes).shape
    torch.Size([1, 3, 32, 32])
    """

    def __init__(self, period_px: float, *, band: float = 0.15, width: float = FRINGE_MASK_WIDTH,
                 clip: float = 3.0, avoid_angle_deg: float = 20.0) -> None:
        super().__init__()
        if period_px <= 2:
            raise ValueError(f"period_px must be > 2 px (Nyquist), got {period_px}")
        self.period_px, self.band, self.width, self.clip = period_px, band, width, clip
        self.avoid_cos = math.cos(math.radians(avoid_angle_deg))
        self._cache: dict[tuple, tuple] = {}

    def forward(self, x: torch.Tensor, avoid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, H, W) -> (B, 3, H, W): the image, Re and Im of its fringe image.

        ``avoid`` (B, 2), optional: per image, a frequency (rows, cols) [cycles/px]
        whose direction the reflection must not lie within ``avoid_angle_deg`` of
        (e.g. the (003) reflection, whose (006) harmonic falls in the in-layer ring).
        """
        return torch.cat([x, self.fringe(x, avoid)[0].to(x.dtype)], dim=1)

    def fringe(self, x: torch.Tensor, avoid: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The channels (B, 2, H, W) and the reflection used, (B, 2) as (rows, cols)
        [cycles/px]; arguments as in `forward`."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"FringeChannels expects (B, 1, H, W), got {tuple(x.shape)}")
        image = x[:, 0].float()
        n, h, w = image.shape
        spectrum = torch.fft.fft2(image - image.mean(dim=(-2, -1), keepdim=True))
        ring, (oy, my), (ox, mx) = self._geometry(h, w, x.device)
        flat = spectrum.flatten(1)
        power = flat[:, ring].abs()
        freq = self._frequencies(ring, h, w)  # (R, 2)
        if avoid is not None:
            cos = (avoid.float() @ freq.T).abs() / (
                avoid.float().norm(dim=1, keepdim=True) * freq.norm(dim=1)[None, :]).clamp_min(1e-12)
            power = torch.where(cos > self.avoid_cos, torch.full_like(power, -1.0), power)
        pick = power.argmax(dim=1)
        best = ring[pick]  # flat index of g per image
        # The mask is separable and negligible beyond 4 sigma: only that box is kept.
        rows = torch.remainder(best[:, None] // w + oy[None, :], h)[:, :, None]
        cols = torch.remainder(best[:, None] % w + ox[None, :], w)[:, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None]
        masked = torch.zeros_like(spectrum)
        masked[batch, rows, cols] = spectrum[batch, rows, cols] * (my[:, None] * mx[None, :])
        fringe = torch.fft.ifft2(masked)
        scale = fringe.abs().flatten(1).median(dim=1).values.clamp_min(1e-6)[:, None, None]
        fringe = fringe / scale
        channels = torch.stack([fringe.real, fringe.imag], dim=1).clamp(-self.clip, self.clip)
        return channels, freq[pick]

    @staticmethod
    def _frequencies(ring: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(rows, cols) frequencies [cycles/px] of flat FFT indices."""
        fy = torch.fft.fftfreq(h, device=ring.device)[ring // w]
        fx = torch.fft.fftfreq(w, device=ring.device)[ring % w]
        return torch.stack([fy, fx], dim=1)

    def _geometry(self, h: int, w: int, device: torch.device) -> tuple:
        """Flat indices of the search ring (upper half plane) and, per axis, the bin
        offsets of the mask box with their Gaussian weights; cached per shape."""
        key = (h, w, str(device))
        if key not in self._cache:
            fy = torch.fft.fftfreq(h, device=device)[:, None]
            fx = torch.fft.fftfreq(w, device=device)[None, :]
            k0 = 1.0 / self.period_px
            upper = (fy < 0) | ((fy == 0) & (fx > 0))  # one of each +-g pair
            ring = upper & ((torch.sqrt(fy**2 + fx**2) - k0).abs() <= self.band * k0)
            sigma = self.width * k0

            def axis(m: int) -> tuple[torch.Tensor, torch.Tensor]:
                r = min(math.ceil(4 * sigma * m), (m - 1) // 2)
                off = torch.arange(-r, r + 1, device=device)
                return off, torch.exp(-((off / m) ** 2) / (2 * sigma**2)).to(torch.complex64)

            self._cache[key] = (torch.nonzero(ring.flatten()).flatten(), axis(h), axis(w))
        return self._cache[key]


def fringe_winding(image: np.ndarray, xy: np.ndarray, *, period_px: float,
                   radius_px: float, width: float = FRINGE_MASK_WIDTH,
                   avoid_period_px: float | None = None) -> np.ndarray:
    """Winding number of the fringe phase on a circle around each point.

    Parameters
    ----------
    image : ndarray (H, W)
        Normalised image (`dislotrack.models.normalise.normalise_image`).
    xy : ndarray (n, 2)
        Points (x, y) [px, pixel-centre origin].
    period_px : float
        Nominal fringe period [px] (the (003) one for misfit cores).
    radius_px : float
        Circle radius [px] (48 samples, nearest pixel).
    width : float
        Mask width of the fringe image, as in `FringeChannels` (default: the
        network's channels; smaller = smoother phase, fewer noise vortices).
    avoid_period_px : float, optional
        If given, the reflection is picked at least 20 deg from the direction of the
        strongest fringe of this period (the (003) one, whose (006) harmonic lies in
        the in-layer ring), as the network's in-layer channels pick it.

    Returns
    -------
    ndarray (n,)
        Rounded winding numbers: +-1 where a half-plane of those fringes ends inside
        the circle (the sign depends on which of +-g `FringeChannels` picks), 0 where
        the fringes run through.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:64, 0:64].astype(float)
    >>> phase = 2 * np.pi * yy / 5.0 + np.arctan2(yy - 32, xx - 32)  # one extra fringe
    >>> w = fringe_winding(np.cos(phase), np.array([[32.0, 32.0], [10.0, 50.0]]),
    ...                    period_px=5.0, radius_px=6.0)
    >>> np.abs(w).tolist()
    [1.0, 0.0]
    """
    tensor = torch.from_numpy(np.asarray(image, np.float32))[None, None]
    avoid = None if avoid_period_px is None else FringeChannels(avoid_period_px).fringe(tensor)[1]
    ch, _ = FringeChannels(period_px, width=width).fringe(tensor, avoid=avoid)
    z = (ch[0, 0] + 1j * ch[0, 1]).numpy()
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    pts = np.asarray(xy, float).reshape(-1, 2)
    xs = np.clip(np.round(pts[:, :1] + radius_px * np.cos(t)).astype(int), 0, z.shape[1] - 1)
    ys = np.clip(np.round(pts[:, 1:] + radius_px * np.sin(t)).astype(int), 0, z.shape[0] - 1)
    phase = np.angle(z[ys, xs])  # (n, 48)
    steps = np.angle(np.exp(1j * np.diff(np.concatenate([phase, phase[:, :1]], axis=1), axis=1)))
    return np.round(steps.sum(axis=1) / (2 * np.pi))
