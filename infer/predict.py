"""Run the network on frames of any size: padding, overlapping tiles, blending."""

from __future__ import annotations

import numpy as np
import torch

from dislotrack.infer.interface import option
from dislotrack.infer.options import tta_views
from dislotrack.models.normalise import normalise_image
from dislotrack.models.unet import HVEC_CH, N_OUT, UNet, required_multiple


def available_devices() -> list[str]:
    """The devices torch can run on here: ``cpu``, then ``cuda:0``, ``cuda:1``, ..."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu", *(f"cuda:{i}" for i in range(n))]


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device name to a usable `torch.device`.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If the name is none of those, or CUDA (that CUDA device) is not available;
        the message lists the available devices.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    # Only what dislotrack checks and tests (mps, xpu, ... would fail late, mid-analysis).
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index):
        raise ValueError(f"{option('device')} must be auto, cpu, cuda or cuda:N, got {str(device)!r}")
    if dev.type == "cuda":
        have = available_devices()
        n = len(have) - 1
        if n == 0 or (dev.index is not None and dev.index >= n):
            seen = "no CUDA device" if n == 0 else f"{n} CUDA device{'s' if n > 1 else ''}"
            raise ValueError(f"CUDA requested (device {str(device)!r}) but not available: torch sees "
                             f"{seen} (available: {', '.join(have)})")
    return dev


#: Arithmetic of the network (`network_dtype`): ``auto`` is reduced precision where the
#: device runs it fast, ``float32`` full precision everywhere.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def fast_cpu_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix units (Intel AMX).

    There oneDNN runs the network in bfloat16 about twice as fast as in float32
    (README, Network); other CPUs are not known to gain, so ``auto`` keeps float32.
    torch before 2.3 cannot tell: False.

    Returns
    -------
    bool
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3, private
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def network_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the network's arithmetic; None for float32.

    Parameters
    ----------
    precision : {"auto", "float32", "bfloat16", "float16"}
        ``auto``: float16 on CUDA, bfloat16 on a CPU with `fast_cpu_bfloat16`, else float32.
    device : torch.device
        Where the network runs (`pick_device`).

    Returns
    -------
    torch.dtype or None

    Raises
    ------
    ValueError
        For another name, float16 on the CPU (no fast path there), or bfloat16 on a CUDA
        device without it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{option('precision')} must be one of {', '.join(PRECISIONS)}, "
                         f"got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if fast_cpu_bfloat16() else None
    if precision == "float16" and device.type != "cuda":
        raise ValueError(f"{option('precision', 'float16', text=True)} runs on CUDA only; on the CPU use "
                         "auto or float32 (bfloat16 is fast only on CPUs with AMX)")
    if precision == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{option('precision', 'bfloat16', text=True)}: {device} does not support it; "
                         "use auto (float16) or float32")
    return None if precision == "float32" else getattr(torch, precision)


def _window(n: int, overlap: int) -> np.ndarray:
    """1-D blending weight: ramps over ``overlap`` px at both ends."""
    w = np.ones(n, np.float32)
    if overlap > 0:
        ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        w[:overlap] = ramp
        w[-overlap:] = ramp[::-1]
    return w


def _starts(n: int, tile: int, step: int) -> list[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(s))


#: The views of test-time augmentation as (transpose, flip x, flip y), ordered so that the
#: first 2 (identity, 180° turn) and the first 4 (the quarter turns) are groups, like all 8.
DIHEDRAL_VIEWS = ((False, False, False), (False, True, True), (True, True, False),
                  (True, False, True), (False, True, False), (False, False, True),
                  (True, False, False), (True, True, True))


def dihedral_forward(model: UNet, x: torch.Tensor, views: int = 8, *, mirror: bool = False) -> torch.Tensor:
    """Test-time augmentation: the mean output over the first ``views`` of
    `DIHEDRAL_VIEWS` (flips and transposes) of ``x``; with ``mirror``, over the same
    views of ``x`` flipped (the last 4 of `DIHEDRAL_VIEWS`, which are those; 8 views are
    the whole group either way).

    Each output is mapped back to the input's frame, the **h** channels included
    (a flip negates the flipped component, a transpose swaps them).
    """
    n = tta_views(views)
    hx, hy = HVEC_CH.start, HVEC_CH.start + 1
    acc = torch.zeros((), device=x.device)
    chosen = DIHEDRAL_VIEWS[4:4 + n] if mirror and n < 8 else DIHEDRAL_VIEWS[:n]
    for transpose, flip_x, flip_y in chosen:
        z = x.transpose(-1, -2) if transpose else x
        dims = [d for d, f in ((-1, flip_x), (-2, flip_y)) if f]
        y = model(torch.flip(z, dims) if dims else z).float()
        y = torch.flip(y, dims) if dims else y
        sign = torch.ones(y.shape[1], device=y.device)
        sign[hx], sign[hy] = (-1.0 if flip_x else 1.0), (-1.0 if flip_y else 1.0)
        y = y * sign[None, :, None, None]
        if transpose:
            perm = list(range(y.shape[1]))
            perm[hx], perm[hy] = hy, hx
            y = y.transpose(-1, -2)[:, perm]
        acc = acc + y
    return acc / n


def predict_logits(model: UNet, frames: np.ndarray, *, device: torch.device, tile: int = 512,
                   overlap: int = 32, tta: bool | int = False, precision: str = "auto",
                   mirror: bool = False) -> np.ndarray:
    """Network outputs (B, 4, H, W) for a batch of canonical frames (B, H, W).

    Frames are normalised one by one, edge-padded to a multiple of the network's
    stride and, when larger than ``tile``, processed in overlapping tiles that are
    blended with linear ramps. ``tta`` averages that many views
    (`tta_views`, `dihedral_forward`; as many times the time). ``precision``: the
    network's arithmetic (`network_dtype`); outputs are float32 either way.
    ``mirror``: the network sees the frames flipped (`dihedral_forward`), outputs mapped
    back: for a lattice of the handedness it was not trained on
    (`dislotrack.infer.lattice.Lattice.is_mirror_view`).
    """
    views = tta_views(tta)
    frames = np.stack([normalise_image(f) for f in frames]).astype(np.float32)
    b, h, w = frames.shape
    m = required_multiple(model.config)
    tile = max(m, tile // m * m)
    th, tw = min(tile, _ceil(h, m)), min(tile, _ceil(w, m))
    ph, pw = max(th, h), max(tw, w)
    # Edge pixels repeated, not mirrored: at a mirror seam inclined fringes meet in a
    # chevron, which the network took for fringe ends (false cores on the last row of
    # real frames); README Changelog 0.1.16 has the comparison.
    padded = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w)), mode="edge")
    out = np.zeros((b, N_OUT, ph, pw), np.float32)
    weight = np.zeros((ph, pw), np.float32)
    ov = overlap if (ph > th or pw > tw) else 0
    wy, wx = _window(th, ov if ph > th else 0), _window(tw, ov if pw > tw else 0)
    win = wy[:, None] * wx[None, :]
    dtype = network_dtype(precision, device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for y0 in _starts(ph, th, th - ov):
            for x0 in _starts(pw, tw, tw - ov):
                x = torch.from_numpy(padded[:, None, y0:y0 + th, x0:x0 + tw].copy()).to(device)
                x = x.contiguous(memory_format=torch.channels_last)
                y = (dihedral_forward(model, x, views, mirror=mirror) if views > 1 or mirror
                     else model(x).float()).cpu().numpy()
                out[:, :, y0:y0 + th, x0:x0 + tw] += y * win
                weight[y0:y0 + th, x0:x0 + tw] += win
    return (out / weight)[:, :, :h, :w]


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m
