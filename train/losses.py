"""Losses for sparse core heatmaps, h vectors near cores and rock-salt masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def heatmap_loss(logit: torch.Tensor, target: torch.Tensor, *, pos_weight: float = 10.0,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE against the soft Gaussian target, up-weighted near cores (sparse positives);
    ``weight`` (same shape, optional) multiplies it per pixel (0: ignored)."""
    w = 1.0 + pos_weight * target
    if weight is not None:
        w = w * weight
    bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    return (bce * w).sum() / w.sum().clamp_min(1e-6)


def h_cosine_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between predicted and true h where ``mask`` is set (0 if none)."""
    cos = F.cosine_similarity(pred, target, dim=1, eps=1e-6)[:, None]
    n = mask.sum()
    # Zero tied to the graph (DDP needs every output used); abs: never a logged -0.0.
    return ((1 - cos) * mask).sum() / n if n > 0 else (pred.sum() * 0.0).abs()


def bce_dice_loss(logit: torch.Tensor, target: torch.Tensor, *, known: torch.Tensor | None = None,
                  smooth: float = 1.0) -> torch.Tensor:
    """BCE plus soft Dice over the whole batch (well defined when masks are empty), over the
    samples whose mask is ``known`` (shape (B,), nonzero: annotated; 0 if none is)."""
    if known is not None:
        keep = known.reshape(-1) > 0
        if not keep.any():
            return (logit.sum() * 0.0).abs()  # as in `h_cosine_loss`
        logit, target = logit[keep], target[keep]
    bce = F.binary_cross_entropy_with_logits(logit, target)
    p = torch.sigmoid(logit)
    dice = 1 - (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)
    return bce + dice
