"""Running the network on frames: tiling and test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dislotrack.infer.options import tta_views
from dislotrack.infer.predict import DIHEDRAL_VIEWS, dihedral_forward, predict_logits
from dislotrack.models.unet import UNetConfig


class GradientModel(torch.nn.Module):
    """Exactly flip/transpose-equivariant stand-in: outputs (x, d/dx, d/dy, x**2),
    periodic central differences, so ``h`` is a vector field like the network's."""

    config = UNetConfig(depth=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = (torch.roll(x, -1, dims=-1) - torch.roll(x, 1, dims=-1)) / 2
        dy = (torch.roll(x, -1, dims=-2) - torch.roll(x, 1, dims=-2)) / 2
        return torch.cat([x, dx, dy, x**2], dim=1)


@pytest.mark.parametrize("views", [2, 4, 8])
def test_test_time_augmentation_maps_vectors_back_to_the_input_frame(views):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 16, 24)).astype(np.float32))
    model = GradientModel()
    assert torch.allclose(dihedral_forward(model, x, views), model(x), atol=1e-6)


def _view(a: np.ndarray, transpose: bool, flip_x: bool, flip_y: bool) -> np.ndarray:
    a = a.T if transpose else a
    return a[::-1 if flip_y else 1, ::-1 if flip_x else 1]


@pytest.mark.parametrize("views", [2, 4, 8])
def test_the_first_2_4_and_8_views_are_groups(views):
    """Closed under composition: averaging them makes the result as symmetric as they are."""
    square = np.arange(16).reshape(4, 4)
    seen = {_view(square, *v).tobytes() for v in DIHEDRAL_VIEWS[:views]}
    assert len(seen) == views
    for v in DIHEDRAL_VIEWS[:views]:
        for w in DIHEDRAL_VIEWS[:views]:
            assert _view(_view(square, *v), *w).tobytes() in seen


def test_fewer_views_average_only_their_turns():
    class RollDiagonally(GradientModel):
        def forward(self, x):  # not equivariant: every view shifts its own image down-right
            out = super().forward(x)
            out[:, 0] = torch.roll(x[:, 0], (1, 1), dims=(-2, -1))
            return out

    x = torch.from_numpy(np.random.default_rng(2).normal(size=(1, 1, 8, 8)).astype(np.float32))
    r = lambda dy, dx: torch.roll(x[:, 0], (dy, dx), dims=(-2, -1))  # noqa: E731
    two = dihedral_forward(RollDiagonally(), x, 2)[:, 0]  # the 180° turn: up-left (a flip: not)
    assert torch.allclose(two, (r(1, 1) + r(-1, -1)) / 2, atol=1e-6)
    four = dihedral_forward(RollDiagonally(), x, 4)[:, 0]  # the quarter turns: all four diagonals
    assert torch.allclose(four, (r(1, 1) + r(-1, -1) + r(1, -1) + r(-1, 1)) / 4, atol=1e-6)


def test_tta_values():
    given = (False, True, 1, 2, 4, 8, np.True_, np.int64(4))
    assert [tta_views(v) for v in given] == [1, 8, 1, 2, 4, 8, 8, 4]
    for bad in (3, 0, 16, "2", None, 2.0):
        with pytest.raises(ValueError, match="one of 1, 2, 4, 8"):
            tta_views(bad)


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


def test_precision_names_resolve_to_autocast_dtypes(monkeypatch):
    from dislotrack.infer import predict

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(predict, "fast_cpu_bfloat16", lambda: True)
    assert predict.network_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(predict, "fast_cpu_bfloat16", lambda: False)
    assert predict.network_dtype("auto", cpu) is None  # emulated bfloat16 would be slower
    assert predict.network_dtype("auto", cuda) is torch.float16
    assert predict.network_dtype("float32", cuda) is None
    assert predict.network_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="float16'? runs on CUDA only; on the CPU use auto or float32"):
        predict.network_dtype("float16", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="cuda does not support it"):
        predict.network_dtype("bfloat16", cuda)
    with pytest.raises(ValueError, match=r"^precision must be one of auto, float32"):
        predict.network_dtype("fp32", cpu)


def test_bfloat16_outputs_are_float32_and_close_to_full_precision():
    from dislotrack.models.unet import UNet, prepare_for_inference

    torch.manual_seed(0)
    net = prepare_for_inference(UNet(UNetConfig(base_channels=4, depth=2)))
    frames = np.random.default_rng(1).normal(size=(2, 48, 40)).astype(np.float32)
    full = predict_logits(net, frames, device=torch.device("cpu"), precision="float32")
    half = predict_logits(net, frames, device=torch.device("cpu"), precision="bfloat16")
    assert full.dtype == half.dtype == np.float32 and full.shape == half.shape == (2, 4, 48, 40)
    scale = np.abs(full).max()
    err = np.abs(half - full).max()
    # bfloat16 keeps 8 significant bits: errors of a few 1e-3 of the output range, not 0.
    assert 0 < err < 0.03 * scale


@pytest.mark.host_precision
def test_amx_probe_follows_torch(monkeypatch):
    from dislotrack.infer import predict

    assert isinstance(predict.fast_cpu_bfloat16(), bool)  # this host's answer, whichever it is
    for has in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda has=has: has, raising=False)
        assert predict.fast_cpu_bfloat16() is has
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)  # torch < 2.3
    assert predict.fast_cpu_bfloat16() is False
