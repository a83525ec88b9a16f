"""Tests of the U-Net (shapes, errors, gradients, inference copy) and its input normalisation."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from dislotrack.models.normalise import NORMALISATION, normalise_image
from dislotrack.models.unet import (
    HEATMAP_CH,
    HVEC_CH,
    N_OUT,
    RS_CH,
    ConvNormAct,
    DecoderBlock,
    UNet,
    UNetConfig,
    prepare_for_inference,
    required_multiple,
)

TINY_CONFIGS = [
    UNetConfig(base_channels=4, depth=2),
    UNetConfig(base_channels=4, depth=3, norm="group", skip_merge="cat", full_res_convs=2),
    UNetConfig(base_channels=3, depth=2, channel_mult=1.5, norm="instance"),
    UNetConfig(base_channels=4, depth=1, norm="none", dropout=0.2),
    UNetConfig(base_channels=4, depth=2, fringe_period_px=4.73),
    UNetConfig(base_channels=4, depth=2, fringe_period_px=4.73, inplane_fringe_period_px=2.45),
]


def test_channel_constants_cover_the_output():
    channels = [HEATMAP_CH, *range(N_OUT)[HVEC_CH], RS_CH]
    assert sorted(channels) == list(range(N_OUT))


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=str)
def test_forward_shape_and_dtype(config):
    torch.manual_seed(0)
    net = UNet(config).eval()
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, N_OUT, 32, 48)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=str)
def test_backward_gives_finite_gradients_for_every_parameter(config):
    torch.manual_seed(1)
    net = UNet(config).train()
    loss = net(torch.randn(2, 1, 16, 16)).square().mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("shape", [(1, 1, 30, 32), (1, 1, 32, 20), (1, 1, 36, 36)])
def test_size_not_a_multiple_raises_with_shape(shape):
    net = UNet(UNetConfig(base_channels=4, depth=3))
    assert required_multiple(net.config) == 8
    with pytest.raises(ValueError, match=r"multiples of 8 px.*" + re.escape(str(shape))):
        net(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 2, 16, 16), (1, 16, 16), (16, 16)])
def test_wrong_channels_or_rank_raises(shape):
    net = UNet(UNetConfig(base_channels=4, depth=2))
    with pytest.raises(ValueError, match="expects input of shape"):
        net(torch.zeros(shape))


def test_decoder_block_rejects_inconsistent_channels():
    block = DecoderBlock(8, 4, 4, "batch")
    with pytest.raises(ValueError, match=r"skip expects 4 channels, got shape \(1, 5, 8, 8\)"):
        block(torch.zeros(1, 8, 4, 4), torch.zeros(1, 5, 8, 8))
    with pytest.raises(ValueError, match="input expects 8 channels"):
        block(torch.zeros(1, 6, 4, 4), torch.zeros(1, 4, 8, 8))


def test_config_round_trip_and_validation():
    config = UNetConfig(base_channels=12, depth=3, norm="group", dropout=0.1, skip_merge="cat")
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({**config.to_dict(), "width": 3})
    with pytest.raises(ValueError, match="norm must be one of"):
        UNetConfig(norm="layer")
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        UNetConfig(depth=0)
    with pytest.raises(ValueError, match="skip_merge"):
        UNetConfig(skip_merge="concat")
    with pytest.raises(ValueError, match="fringe_period_px"):
        UNetConfig(in_channels=2, fringe_period_px=4.73)
    fringe = UNetConfig(fringe_period_px=4.73)
    assert UNetConfig.from_dict(fringe.to_dict()) == fringe
    with pytest.raises(ValueError, match="inplane_fringe_width must be in"):
        UNetConfig(fringe_period_px=9.46, inplane_fringe_period_px=4.9, inplane_fringe_width=0)


def test_inplane_fringe_width_reaches_the_channels_and_older_cards_keep_theirs():
    narrow = UNetConfig(fringe_period_px=9.46, inplane_fringe_period_px=4.9, inplane_fringe_width=0.08)
    assert UNet(narrow).inplane_fringes.width == 0.08
    card = narrow.to_dict()
    del card["inplane_fringe_width"]  # a card written before the field existed
    assert UNet(UNetConfig.from_dict(card)).inplane_fringes.width == 0.25


def test_untrained_logits_start_at_the_low_prior():
    torch.manual_seed(2)
    net = UNet(UNetConfig(base_channels=4, depth=2)).eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 16, 16))
    # Zero input -> all features constant; the head bias dominates (prior 1 %).
    for ch in (HEATMAP_CH, RS_CH):
        assert abs(torch.sigmoid(y[:, ch]).mean().item() - 0.01) < 0.005


def test_default_receptive_field_spans_several_fringes():
    """Centre output must see >= 40 px (8 (003) fringes of 4.7 px) of the input."""
    config = dataclasses.replace(UNetConfig(), norm="none")
    net = UNet(config)
    with torch.no_grad():
        for p in net.parameters():  # positive weights: no ReLU hides part of the field
            p.abs_().add_(1e-3)
    x = torch.zeros(1, 1, 128, 128, requires_grad=True)
    net(x)[0, HEATMAP_CH, 64, 64].backward()
    cols = torch.nonzero(x.grad[0, 0].sum(dim=0) > 0)
    assert int(cols.max() - cols.min() + 1) >= 40


@pytest.mark.parametrize("config", TINY_CONFIGS[:3], ids=str)
def test_prepare_for_inference_matches_eval_outputs(config):
    torch.manual_seed(3)
    net = UNet(config)
    for m in net.modules():  # non-trivial batch-norm statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    fast = prepare_for_inference(net)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref, out = net(x), fast(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    n_conv = sum(isinstance(m, ConvNormAct) for m in net.modules())
    assert n_bn == (n_conv if config.norm == "batch" else 0)  # the original is unchanged
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())


# ----------------------------------------------------------------- input normalisation


def test_normalise_is_robust_to_outliers():
    rng = np.random.default_rng(10)
    img = rng.normal(5.0, 3.0, size=(128, 128))
    bad = rng.random(img.shape) < 0.01
    img[bad] = 1e6
    out = normalise_image(img)
    assert out.dtype == np.float32
    good = out[~bad]
    assert abs(np.median(good)) < 0.05
    assert abs(np.std(good) - 1.0) < 0.05  # outliers barely move the robust scale
    assert np.all(out[bad] == 10.0)  # clipped


@pytest.mark.parametrize("value", [0.0, 3.5, -2e4])
def test_normalise_constant_image_gives_zeros(value):
    out = normalise_image(np.full((16, 16), value))
    assert out.dtype == np.float32
    assert np.array_equal(out, np.zeros((16, 16), np.float32))


def test_normalise_mostly_flat_image_uses_std():
    img = np.zeros((20, 20))
    img[:2] = 1.0  # MAD = 0
    out = normalise_image(img)
    assert np.isfinite(out).all()
    assert np.isclose(out[0, 0], 1.0 / img.std(), rtol=1e-6)


def test_normalise_non_finite_pixels_become_zero():
    rng = np.random.default_rng(11)
    img = rng.normal(size=(32, 32))
    ref = normalise_image(img)
    img_nan = img.copy()
    img_nan[3, 4], img_nan[5, 6] = np.nan, np.inf
    out = normalise_image(img_nan)
    assert out[3, 4] == 0 and out[5, 6] == 0
    keep = np.isfinite(img_nan)
    np.testing.assert_allclose(out[keep], ref[keep], atol=0.01)  # 2 pixels barely move the stats
    assert np.array_equal(normalise_image(np.full((4, 4), np.nan)), np.zeros((4, 4), np.float32))


def test_normalise_is_affine_invariant_and_per_frame():
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(2, 24, 24))
    stack = np.stack([a, 100.0 * b + 7.0])
    out = normalise_image(stack)
    np.testing.assert_allclose(out[0], normalise_image(a), atol=1e-6)
    np.testing.assert_allclose(out[1], normalise_image(b), atol=1e-5)


def test_normalise_rejects_1d_and_describes_itself():
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        normalise_image(np.zeros(5))
    assert NORMALISATION["method"] == "median_mad"
