"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 2-level U-Net saved as a model (safetensors + card): fast, not accurate."""
    import torch

    from dislotrack.models.io import save_model
    from dislotrack.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    card = {"canonical_pixel_size_nm": 0.1, "generator": {}, "training": {}, "metrics": {}}
    save_model(UNet(UNetConfig(base_channels=4, depth=2)), path, card=card)
    return path
