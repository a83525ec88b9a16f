"""A small U-Net that maps one image to core heatmap, h-vector field and rock-salt mask.

The network sees one grey-level image at the canonical pixel size (0.1 nm/px,
`dislotrack.data_gen.conventions.CANONICAL_PIXEL_SIZE_NM`), normalised with
`dislotrack.models.normalise.normalise_image`, and returns ``N_OUT`` = 4 channels
of the same height and width:

========  ==============================================================
channel   meaning
========  ==============================================================
0         core-heatmap logit (sigmoid -> probability of a core centre)
1, 2      h-vector field ``(hx, hy)``, unnormalised, meaningful near cores
3         rock-salt mask logit (sigmoid -> probability of rock-salt)
========  ==============================================================

Height and width must be multiples of ``required_multiple(config)`` = ``2**depth``.
This module imports nothing from the rest of dislotrack but `models.fringes`.

The default `UNetConfig` (12 base channels, depth 4, one convolution at full
resolution, additive skips; 0.98 M parameters, receptive field 171 px = 36 (003)
fringes; the bundled model adds ``fringe_period_px=4.73``) was picked with
``tests/benchmarks/bench_network.py``: on 2 CPU cores at
512x512 it runs at about 10 frames/s as a plain ``eval()`` module and about 18-25
frames/s after `prepare_for_inference`; a 16x1x128x128 training step takes about
0.25 s.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dislotrack.models.fringes import FRINGE_MASK_WIDTH, FringeChannels

#: Output channel of the core-heatmap logit.
HEATMAP_CH = 0
#: Output channels of the h-vector field ``(hx, hy)``.
HVEC_CH = slice(1, 3)
#: Output channel of the rock-salt mask logit.
RS_CH = 3
#: Number of output channels.
N_OUT = 4

#: Meaning of each output channel, for the model card.
OUTPUTS = {
    str(HEATMAP_CH): "core heatmap logit (sigmoid -> core probability; target: Gaussian, "
    "sigma 2 px, peak 1, at each core)",
    "1": "hx: x (column) component of h, the direction from the core into the extra "
    "half-plane (unnormalised; meaningful within 5 px of a core)",
    "2": "hy: y (row, down) component of h (unnormalised; meaningful within 5 px of a core)",
    str(RS_CH): "rock-salt mask logit (sigmoid -> rock-salt probability)",
}

NORMS = ("batch", "group", "instance", "none")
SKIP_MERGES = ("add", "cat")

#: Prior probability used to initialise the bias of the two logit channels, so that
#: an untrained network predicts "almost no cores, almost no rock-salt".
_PRIOR_PROBABILITY = 0.01


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of `UNet` (everything needed to rebuild it).

    Parameters
    ----------
    in_channels : int
        Input channels (1: one grey-level image).
    base_channels : int
        Channels of the full-resolution level.
    depth : int
        Number of 2x down-samplings; the bottleneck sits at 1/2**depth resolution.
    channel_mult : float
        Channel growth per level: level ``i`` has ``round(base_channels * channel_mult**i)``.
    norm : {"batch", "group", "instance", "none"}
        Normalisation layer after each convolution.
    dropout : float
        Channel dropout probability in the bottleneck (0 disables it).
    full_res_convs : int
        3x3 convolutions at full resolution in the encoder and in the decoder (1 or 2);
        1 makes the most expensive level cheaper.
    skip_merge : {"add", "cat"}
        How a decoder level merges the up-sampled features with the encoder skip:
        ``"add"`` sums them (cheaper, as in LinkNet), ``"cat"`` concatenates them
        (the original U-Net).
    fringe_period_px : float
        If > 0, the network computes the (003) fringe image of its input
        (`dislotrack.models.fringes.FringeChannels`, nominal period in px at the
        canonical pixel size) and sees it as two extra channels; 0 turns this off.
        Needs ``in_channels == 1``.
    inplane_fringe_period_px : float
        If > 0 (needs ``fringe_period_px > 0``), two more channels: the strongest
        fringe of this nominal period at least 20 deg from the (003) direction, i.e.
        LiNiO2's 0.245 nm (101)/(012) in-layer planes in [100] projections (2.45 px at
        0.1 nm/px), which a basal-b core terminates as the (003) ones end at a misfit
        core; 0 turns this off.
    """

    in_channels: int = 1
    base_channels: int = 12
    depth: int = 4
    channel_mult: float = 2.0
    norm: str = "batch"
    dropout: float = 0.0
    full_res_convs: int = 1
    skip_merge: str = "add"
    fringe_period_px: float = 0.0
    inplane_fringe_period_px: float = 0.0
    inplane_fringe_width: float = FRINGE_MASK_WIDTH

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.channel_mult < 1:
            raise ValueError(f"channel_mult must be >= 1, got {self.channel_mult}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.full_res_convs not in (1, 2):
            raise ValueError(f"full_res_convs must be 1 or 2, got {self.full_res_convs}")
        if self.skip_merge not in SKIP_MERGES:
            raise ValueError(f"skip_merge must be one of {SKIP_MERGES}, got {self.skip_merge!r}")
        if self.fringe_period_px < 0 or (self.fringe_period_px > 0 and self.in_channels != 1):
            raise ValueError(f"fringe_period_px must be 0 (off) or > 0 with in_channels == 1, got "
                             f"{self.fringe_period_px} with in_channels {self.in_channels}")
        if self.inplane_fringe_period_px < 0 or (self.inplane_fringe_period_px > 0
                                                 and self.fringe_period_px <= 0):
            raise ValueError("inplane_fringe_period_px must be 0 (off) or > 0 with "
                             f"fringe_period_px > 0, got {self.inplane_fringe_period_px} with "
                             f"fringe_period_px {self.fringe_period_px}")
        if not 0 < self.inplane_fringe_width <= 1:
            raise ValueError(f"inplane_fringe_width must be in (0, 1], got {self.inplane_fringe_width}")

    def channels(self) -> list[int]:
        """Channels of levels ``0 .. depth`` (full resolution first, bottleneck last)."""
        return [round(self.base_channels * self.channel_mult**i) for i in range(self.depth + 1)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Inverse of `to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


def required_multiple(config: UNetConfig) -> int:
    """Height and width of the input must be multiples of this [px]."""
    return 2**config.depth


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = max(g for g in range(1, 9) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _check_channels(x: torch.Tensor, expected: int, what: str) -> None:
    if x.shape[1] != expected:
        raise ValueError(f"{what} expects {expected} channels, got shape {tuple(x.shape)}")


class ConvNormAct(nn.Sequential):
    """3x3 convolution (same padding), normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none")
        super().__init__(conv, _norm_layer(norm, out_channels), nn.ReLU(inplace=True))
        self.in_channels = in_channels
        self.out_channels = out_channels


class ConvStack(nn.Sequential):
    """``n_convs`` `ConvNormAct` layers; the first maps ``in_channels -> out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, n_convs: int = 2) -> None:
        layers = [ConvNormAct(in_channels, out_channels, norm)]
        layers += [ConvNormAct(out_channels, out_channels, norm) for _ in range(n_convs - 1)]
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.in_channels, type(self).__name__)
        return super().forward(x)


class DecoderBlock(nn.Module):
    """Up-sample 2x (transposed convolution), merge with the skip, then convolve.

    Parameters
    ----------
    in_channels, skip_channels, out_channels : int
        Channels of the coarser input, of the encoder skip and of the output.
    norm : str
        Normalisation layer, one of `NORMS`.
    n_convs : int
        3x3 convolutions after the merge.
    skip_merge : {"add", "cat"}
        Sum or concatenate the up-sampled input and the skip.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str,
        n_convs: int = 2,
        skip_merge: str = "add",
    ) -> None:
        super().__init__()
        if skip_merge not in SKIP_MERGES:
            raise ValueError(f"skip_merge must be one of {SKIP_MERGES}, got {skip_merge!r}")
        self.in_channels = in_channels
        self.skip_channels = skip_channels
        self.out_channels = out_channels
        self.skip_merge = skip_merge
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        merged = skip_channels if skip_merge == "add" else 2 * skip_channels
        self.convs = ConvStack(merged, out_channels, norm, n_convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.in_channels, "DecoderBlock input")
        _check_channels(skip, self.skip_channels, "DecoderBlock skip")
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            raise ValueError(
                f"DecoderBlock: up-sampled shape {tuple(x.shape)} does not match skip "
                f"shape {tuple(skip.shape)}"
            )
        x = x + skip if self.skip_merge == "add" else torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNet(nn.Module):
    """U-Net with a 4-channel head (heatmap logit, hx, hy, rock-salt logit).

    Parameters
    ----------
    config : UNetConfig, optional
        Hyperparameters; the default is the configuration of the bundled model.

    Examples
    --------
    >>> net = UNet(UNetConfig(base_channels=4, depth=2)).eval()
    >>> net(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 4, 32, 32])
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        ch = config.channels()
        n0 = config.full_res_convs
        self.fringes = FringeChannels(config.fringe_period_px) if config.fringe_period_px > 0 else None
        self.inplane_fringes = (FringeChannels(config.inplane_fringe_period_px,
                                               width=config.inplane_fringe_width)
                                if config.inplane_fringe_period_px > 0 else None)
        first = config.in_channels + 2 * sum(m is not None for m in (self.fringes, self.inplane_fringes))
        self.encoders = nn.ModuleList(
            [ConvStack(first, ch[0], config.norm, n0)]
            + [ConvStack(ch[i - 1], ch[i], config.norm) for i in range(1, config.depth + 1)]
        )
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.decoders = nn.ModuleList(
            [
                DecoderBlock(
                    ch[i + 1], ch[i], ch[i], config.norm, n0 if i == 0 else 2, config.skip_merge
                )
                for i in reversed(range(config.depth))
            ]
        )
        self.head = nn.Conv2d(ch[0], N_OUT, kernel_size=1)
        self._init_head()

    def _init_head(self) -> None:
        prior_logit = -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[HEATMAP_CH] = prior_logit
            self.head.bias[RS_CH] = prior_logit

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (B, in_channels, H, W) with H, W multiples."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"UNet expects input of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}"
            )
        m = required_multiple(cfg)
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"UNet input height and width must be multiples of {m} px (depth "
                f"{cfg.depth}), got shape {tuple(x.shape)}; pad the image first"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in_channels, H, W) images to (B, N_OUT, H, W) raw outputs."""
        self.check_input(x)
        if self.fringes is not None:
            channels, g = self.fringes.fringe(x)
            parts = [x, channels.to(x.dtype)]
            if self.inplane_fringes is not None:  # skip the (003) direction: (006) is in its ring
                parts.append(self.inplane_fringes.fringe(x, avoid=g)[0].to(x.dtype))
            x = torch.cat(parts, dim=1)
        skips = []
        for i, encoder in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        return self.head(x)


def prepare_for_inference(model: UNet) -> UNet:
    """Return a faster, evaluation-only copy of ``model`` for CPU or GPU inference.

    The copy is in eval mode, has each batch-norm folded into the preceding
    convolution and uses the channels-last memory format (about 1.5-2x faster on
    CPU with oneDNN). Its outputs match ``model.eval()`` to float32 rounding
    (not bit for bit). Do not train or save the copy; save the original.

    Parameters
    ----------
    model : UNet
        Trained network; left unchanged.

    Returns
    -------
    UNet
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvNormAct) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return fused.to(memory_format=torch.channels_last)
