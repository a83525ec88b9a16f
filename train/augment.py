"""Augmentation with albumentations, behind a small wrapper that keeps labels exact.

Albumentations moves keypoints correctly but its keypoint *angle* update is not
reliable for every transform (``Affine`` rotates angles the wrong way in image
axes with y down). So **h** is carried as a second keypoint at ``core + h * L``
and recovered from the transformed pair; the dense targets are then redrawn
from the transformed cores (`dislotrack.data_gen.labels.dense_targets`).
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

_TIP_PX = 4.0  # length of the h "arrow" carried as a keypoint [px]


def build_transform(*, seed: int, geometric: bool = True, photometric: bool = True) -> A.Compose:
    """The training augmentation pipeline (image expected in [0, 1], float32)."""
    ops: list = []
    if geometric:
        # Arbitrary rotations and pixel-size changes come from the generator itself
        # (random lattice rotation, pixel_size_jitter); an Affine here would need a
        # border fill, and with reflection albumentations also mirrors keypoints.
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5),
                A.Affine(shear=(-3, 3), p=0.2, border_mode=cv2.BORDER_CONSTANT)]
    if photometric:
        ops += [A.RandomGamma(gamma_limit=(80, 125), p=0.3),
                A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.15, p=0.3),
                A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.2, 0.8), p=0.2),
                A.GaussNoise(std_range=(0.005, 0.04), p=0.2)]
    transform = A.Compose(ops, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
    # One random stream shared by every transform. Compose(seed=s) seeds each transform
    # with s alone, so HorizontalFlip and VerticalFlip always decided alike: a 180° turn
    # or nothing, never a mirror (the bundled models were trained so: README › Conventions).
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Scale min..max to [0, 1] (float32) for albumentations' float transforms.

    No clipping: the robust normalisation that follows must see the same tails as at
    inference (`dislotrack.models.normalise.normalise_image`).
    """
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, np.float32)
    # A NaN pad (an aligned stack's border) must not blank the image: scaled over the
    # finite pixels and filled with their median, the flat level normalise_image gives
    # NaN at inference (albumentations' blurs and means would spread NaN).
    lo, hi = float(image[finite].min()), float(image[finite].max())
    out = (image - lo) / max(hi - lo, 1e-12)
    if not finite.all():
        out = np.where(finite, out, np.median(out[finite]))
    return out.astype(np.float32)


def augment(transform: A.Compose, image: np.ndarray, cores: pd.DataFrame,
            rs_mask: np.ndarray) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Apply ``transform`` to an image in [0, 1], its cores (x, y, hx, hy) and RS mask.

    Returns the transformed image, cores (x, y, hx, hy transformed, other columns
    carried along; cores moved outside the image are dropped) and mask.
    """
    xy = cores[["x", "y"]].to_numpy(float).reshape(-1, 2)
    h = cores[["hx", "hy"]].to_numpy(float).reshape(-1, 2)
    known = np.isfinite(h).all(axis=1)  # an unknown h (NaN) rides along as +x, stays unknown
    h = np.where(known[:, None], h, [1.0, 0.0])
    kps = np.concatenate([xy, xy + _TIP_PX * h]) if len(xy) else np.zeros((0, 2))
    out = transform(image=image, mask=rs_mask, keypoints=kps)
    k = np.asarray(out["keypoints"], float).reshape(-1, 2)
    n = len(xy)
    new_xy, tip = k[:n], k[n:]
    d = tip - new_xy
    new_h = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    new_h[~known] = np.nan
    hh, ww = out["image"].shape[:2]
    inside = ((new_xy[:, 0] >= -0.5) & (new_xy[:, 0] < ww - 0.5)
              & (new_xy[:, 1] >= -0.5) & (new_xy[:, 1] < hh - 0.5))
    table = pd.DataFrame({"x": new_xy[inside, 0], "y": new_xy[inside, 1],
                          "hx": new_h[inside, 0], "hy": new_h[inside, 1]})
    extra = cores.drop(columns=["x", "y", "hx", "hy"]).reset_index(drop=True)[inside]
    table = pd.concat([table, extra.reset_index(drop=True)], axis=1)
    return out["image"].astype(np.float32), table, out["mask"]
