"""Run the network on frames of any size: padding, overlapping tiles, blending."""

from __future__ import annotations

import numpy as np
import torch

from dislotrack.models.normalise import normalise_image
from dislotrack.models.unet import N_OUT, UNet, required_multiple


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


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


def predict_logits(model: UNet, frames: np.ndarray, *, device: torch.device, tile: int = 512,
                   overlap: int = 32) -> np.ndarray:
    """Network outputs (B, 4, H, W) for a batch of canonical frames (B, H, W).

    Frames are normalised one by one, reflect-padded to a multiple of the network's
    stride and, when larger than ``tile``, processed in overlapping tiles that are
    blended with linear ramps.
    """
    frames = np.stack([normalise_image(f) for f in frames]).astype(np.float32)
    b, h, w = frames.shape
    m = required_multiple(model.config)
    tile = max(m, tile // m * m)
    th, tw = min(tile, _ceil(h, m)), min(tile, _ceil(w, m))
    ph, pw = max(th, h), max(tw, w)
    padded = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect")
    out = np.zeros((b, N_OUT, ph, pw), np.float32)
    weight = np.zeros((ph, pw), np.float32)
    ov = overlap if (ph > th or pw > tw) else 0
    wy, wx = _window(th, ov if ph > th else 0), _window(tw, ov if pw > tw else 0)
    win = wy[:, None] * wx[None, :]
    autocast = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=autocast):
        for y0 in _starts(ph, th, th - ov):
            for x0 in _starts(pw, tw, tw - ov):
                x = torch.from_numpy(padded[:, None, y0:y0 + th, x0:x0 + tw].copy()).to(device)
                x = x.contiguous(memory_format=torch.channels_last)
                y = model(x).float().cpu().numpy()
                out[:, :, y0:y0 + th, x0:x0 + tw] += y * win
                weight[y0:y0 + th, x0:x0 + tw] += win
    return (out / weight)[:, :, :h, :w]


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m
