"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def float32_network_on_cpu(request, monkeypatch):
    """The network in float32 on any CPU, so expected values do not depend on whether the
    host has AMX (``precision="auto"`` would run bfloat16 there). Tests marked
    ``host_precision`` see the host as it is; tests of bfloat16 ask for it by name."""
    if request.node.get_closest_marker("host_precision"):
        return
    from dislotrack.infer import predict

    monkeypatch.setattr(predict, "fast_cpu_bfloat16", lambda: False)


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
