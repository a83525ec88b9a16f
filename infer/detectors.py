"""Per-frame core and rock-salt detectors behind one interface.

* `NetworkDetector` -- the U-Net on frames resampled to its canonical pixel size
  (the default);
* `GPADetector` -- the classical baseline: phase singularities of geometric phase
  analysis at the input pixel size (`dislotrack.infer.gpa_detect`).

Both return, per frame, a detections table in *input* pixels (x, y, score, hx, hy,
bx_nm, by_nm) and a boolean rock-salt mask of the input shape.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from skimage.transform import resize

from dislotrack.data_gen.conventions import b_hat_from_h
from dislotrack.infer.gpa import NoReflectionError
from dislotrack.infer.gpa_detect import auto_reflections, detect_cores_gpa, rocksalt_mask_gpa
from dislotrack.infer.predict import predict_logits
from dislotrack.infer.preprocess import canonical_to_input
from dislotrack.models.decode import decode_cores, outputs_to_maps, with_direction

logger = logging.getLogger(__name__)

CORE_COLUMNS = ["x", "y", "score", "hx", "hy", "bx_nm", "by_nm"]


def empty_cores() -> pd.DataFrame:
    """A detector's table of no cores (`CORE_COLUMNS`, float)."""
    return pd.DataFrame({c: pd.Series(dtype=float) for c in CORE_COLUMNS})


class NetworkDetector:
    """The U-Net: batched prediction on canonical frames, decoded once (`decode_cores`).

    ``bx_nm, by_nm`` assume the misfit Burgers vector (|b| = ``d_spacing_nm``, the (003)
    spacing) along ``b_hat = (hy, -hx)``: the network predicts **h**, not |b|.
    """

    name = "unet"

    def __init__(self, net, *, device: torch.device, threshold: float, scale: float,
                 d_spacing_nm: float, tta: bool | int = False, precision: str = "auto",
                 mirror: bool = False) -> None:
        self.net, self.device, self.threshold = net, device, threshold
        self.scale, self.d_spacing, self.tta = scale, d_spacing_nm, tta
        self.precision, self.mirror = precision, mirror  # mirror: `predict_logits`

    def __call__(self, raw: list[np.ndarray], canonical: list[np.ndarray]) -> list[tuple]:
        logits = torch.from_numpy(predict_logits(self.net, np.stack(canonical), device=self.device,
                                                 tta=self.tta, precision=self.precision,
                                                 mirror=self.mirror))
        maps = outputs_to_maps(logits)
        out = []
        for k, frame in enumerate(raw):
            det = decode_cores(maps["heatmap"][k], maps["hfield"][k], threshold=self.threshold)
            kept = with_direction(det)
            if len(kept) < len(det):  # a zero h field at a peak: no direction, no usable core
                logger.warning("dropped %d cores without an h direction", len(det) - len(kept))
                det = kept
            # The zoom actually applied per axis (rescale rounds the output size).
            sy, sx = np.array(canonical[k].shape) / frame.shape
            xy = np.stack([canonical_to_input(det["x"].to_numpy(), sx),
                           canonical_to_input(det["y"].to_numpy(), sy)], axis=1).reshape(-1, 2)
            h = det[["hx", "hy"]].to_numpy()
            b = b_hat_from_h(h) * self.d_spacing
            table = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "score": det["score"].to_numpy(),
                                  "hx": h[:, 0], "hy": h[:, 1], "bx_nm": b[:, 0], "by_nm": b[:, 1]})
            rs = resize(maps["rocksalt"][k] > 0.5, frame.shape, order=0, anti_aliasing=False)
            out.append((table, rs))
        return out


class GPADetector:
    """Geometric-phase baseline; the two reflections are chosen once, on the first frame."""

    name = "gpa"

    def __init__(self, *, pixel_size_nm: float, d_spacing_nm: float) -> None:
        self.pixel_size, self.d_spacing = pixel_size_nm, d_spacing_nm
        self.g: np.ndarray | None = None

    def reflections(self, frame: np.ndarray) -> np.ndarray | None:
        if self.g is None:
            try:
                self.g = auto_reflections(frame, self.pixel_size, self.d_spacing)
            except NoReflectionError as e:
                logger.warning("GPA: %s", e)
        return self.g

    def __call__(self, raw: list[np.ndarray], canonical: list[np.ndarray]) -> list[tuple]:
        out = []
        for frame in raw:
            g = self.reflections(frame)
            if g is None:
                out.append((empty_cores(), np.zeros(frame.shape, bool)))
                continue
            det = detect_cores_gpa(frame, pixel_size_nm=self.pixel_size, g=g,
                                   d_spacing_nm=self.d_spacing)
            rs = rocksalt_mask_gpa(frame, pixel_size_nm=self.pixel_size, g003=g[0],
                                   g_other=g[1] if len(g) > 1 else None, d_spacing_nm=self.d_spacing)
            out.append((det[CORE_COLUMNS] if len(det) else empty_cores(), rs))
        return out
