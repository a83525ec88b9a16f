"""Running the network on frames: tiling and test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch

from dislotrack.infer.predict import dihedral_forward, predict_logits
from dislotrack.models.unet import UNetConfig


class GradientModel(torch.nn.Module):
    """Exactly flip/transpose-equivariant stand-in: outputs (x, d/dx, d/dy, x**2),
    periodic central differences, so ``h`` is a vector field like the network's."""

    config = UNetConfig(depth=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = (torch.roll(x, -1, dims=-1) - torch.roll(x, 1, dims=-1)) / 2
        dy = (torch.roll(x, -1, dims=-2) - torch.roll(x, 1, dims=-2)) / 2
        return torch.cat([x, dx, dy, x**2], dim=1)


def test_test_time_augmentation_maps_vectors_back_to_the_input_frame():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 16, 24)).astype(np.float32))
    model = GradientModel()
    assert torch.allclose(dihedral_forward(model, x), model(x), atol=1e-6)


def test_test_time_augmentation_changes_a_model_that_is_not_equivariant():
    class Shifted(GradientModel):
        def forward(self, x):  # a fixed x-gradient: flipping the image does not flip it
            out = super().forward(x)
            out[:, 1] += 1.0
            return out

    x = torch.zeros((1, 1, 8, 8))
    assert torch.allclose(dihedral_forward(Shifted(), x)[:, 1], torch.zeros(1, 8, 8))


def test_tiles_blend_to_the_whole_frame_result():
    model = torch.nn.Conv2d(1, 4, kernel_size=1)  # pointwise: tiling must not show
    model.config = UNetConfig(depth=1)
    frame = np.random.default_rng(1).normal(size=(1, 70, 90)).astype(np.float32)
    whole = predict_logits(model, frame, device=torch.device("cpu"), tile=512)
    tiled = predict_logits(model, frame, device=torch.device("cpu"), tile=32, overlap=8)
    assert tiled.shape == (1, 4, 70, 90)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
