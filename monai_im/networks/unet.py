"""The lightweight "1x1 U-Net" of the Inconsistency Masks paper, in PyTorch (2D and 3D).

Layout (``f(c) = int(c * alpha)``, as the paper's code rounds the widths)::

    input  1x1 conv f(16) + act, norm
    enc1   3x3 conv f(16) + act, 1x1 conv f(16) + act, norm   -> skip1, 2x2 max-pool
    enc2   3x3 conv f(32) + act, 1x1 conv f(32) + act, norm   -> skip2, max-pool
    enc3   ... f(64)                                          -> skip3, max-pool
    enc4   ... f(128)                                         -> skip4, max-pool
    bottom 3x3 conv f(256) + act, 1x1 conv f(128) + act, norm
    dec4   2x upsample, + skip4, 1x1 conv f(128) + act, norm, 3x3 conv f(128) + act, 1x1 conv f(64) + act, norm
    dec3   2x upsample, + skip3, ... f(64) ... f(32)
    dec2   2x upsample, + skip2, ... f(32) ... f(16)
    dec1   2x upsample, + skip1, ... f(16) ... f(16)
    output 1x1 conv ``out_channels`` (logits)

The skip connections are ADDITIVE (the upsampled decoder tensor and the encoder tensor have
the same width), which keeps the model small: about 0.17M parameters at ``alpha=0.5`` and
2.7M at ``alpha=2`` for 3 input channels and 1 output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_dropout_layer, get_norm_layer

__all__ = ["IMUNet", "ConvPair", "PointwiseBlock", "scaled_width", "init_he_normal"]

_UPSAMPLE_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def scaled_width(filters: int, alpha: float) -> int:
    """Width of a layer with ``filters`` base filters at width factor ``alpha``.

    Rounds down like the paper's code (``int(filters * alpha)``), so that the parameter counts
    agree with the published ones.

    Raises:
        ValueError: when ``alpha`` is not positive or the width would be zero.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    width = int(filters * alpha)
    if width < 1:
        raise ValueError(f"alpha={alpha} leaves a layer with {filters} base filters without channels")
    return width


@torch.no_grad()
def _truncated_normal_(weight: torch.Tensor, std: float) -> None:
    """Fill ``weight`` from N(0, std^2) truncated at +-2 std by redrawing the outliers
    (exact, and much faster on CPU than the inverse-CDF method of ``nn.init.trunc_normal_``)."""
    weight.normal_(0.0, std)
    outside = weight.abs() > 2.0 * std
    fill = weight[outside]  # about 4.6% of the entries: redraw only these
    bad = torch.ones_like(fill, dtype=torch.bool)
    while bool(bad.any()):
        fill[bad] = torch.randn(int(bad.sum()), dtype=weight.dtype, device=weight.device) * std
        bad = fill.abs() > 2.0 * std
    weight[outside] = fill


def init_he_normal(module: nn.Module) -> None:
    """Initialise like Keras' ``he_normal``: convolutions and linear layers get a normal
    distribution truncated at two standard deviations with std ``sqrt(2 / fan_in)``, biases 0.

    Use with ``model.apply(init_he_normal)``.
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        fan_in = module.weight[0].numel()
        # Keras corrects the std for the truncation at +-2 std.
        std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
        _truncated_normal_(module.weight, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PointwiseBlock(nn.Sequential):
    """A 1x1 convolution, the activation, then the normalisation layer."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, act: str | tuple, norm: str | tuple
    ) -> None:
        super().__init__()
        self.add_module("conv", Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1))
        self.add_module("act", get_act_layer(act))
        self.add_module("norm", get_norm_layer(norm, spatial_dims=spatial_dims, channels=out_channels))


class ConvPair(nn.Sequential):
    """The paper's basic block: a ``kernel_size`` convolution + activation, a 1x1 convolution +
    activation, optional dropout, then the normalisation layer.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input width.
        mid_channels: width of the ``kernel_size`` convolution.
        out_channels: width of the 1x1 convolution (the block's output).
        kernel_size: size of the first convolution ("same" padding; odd).
        act: activation, a MONAI ``Act`` name or ``(name, kwargs)``.
        norm: normalisation, a MONAI ``Norm`` name or ``(name, kwargs)``.
        dropout: dropout rate before the normalisation; 0 adds no layer.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel_size: int,
        act: str | tuple,
        norm: str | tuple,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        conv = Conv[Conv.CONV, spatial_dims]
        self.add_module(
            "conv_k", conv(in_channels, mid_channels, kernel_size=kernel_size, padding=kernel_size // 2)
        )
        self.add_module("act_k", get_act_layer(act))
        self.add_module("conv_1", conv(mid_channels, out_channels, kernel_size=1))
        self.add_module("act_1", get_act_layer(act))
        if dropout > 0:
            self.add_module(
                "dropout", get_dropout_layer(("dropout", {"p": dropout}), dropout_dim=spatial_dims)
            )
        self.add_module("norm", get_norm_layer(norm, spatial_dims=spatial_dims, channels=out_channels))


class _UpAdd(nn.Module):
    """Decoder level: 2x upsampling, ADD the skip tensor, 1x1 conv block, then a ``ConvPair``."""

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        out_channels: int,
        kernel_size: int,
        act: str | tuple,
        norm: str | tuple,
        dropout: float,
        upsample_mode: str,
    ) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2.0, mode=upsample_mode)
        self.fuse = PointwiseBlock(spatial_dims, channels, channels, act, norm)
        self.convs = ConvPair(spatial_dims, channels, channels, out_channels, kernel_size, act, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(self.fuse(self.up(x) + skip))


class IMUNet(nn.Module):
    """The paper's lightweight "1x1 U-Net": 3x3 + 1x1 convolution blocks, additive skips.

    Four encoder levels (base widths ``features[:4]``, default 16/32/64/128) and a bottleneck
    (``features[4]`` -> ``features[3]``, default 256 -> 128), every width multiplied by
    ``alpha`` and rounded down. Upsampling is by interpolation (no transposed convolution);
    the paper's code uses nearest-neighbour upsampling and ReLU activations after every
    convolution except the last, and batch norm at the end of each block.

    The output is the raw LOGITS (MONAI convention): apply a sigmoid (binary, multi-label) or
    a softmax (multi-class) in the loss or the post-processing. The paper's code scales the
    input from 0..255 to [0, 1] inside its model; here the preprocessing does that.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (3 for RGB, 1 for grey).
        out_channels: output channels (1 for binary; the number of classes or labels).
        alpha: width factor (0.5 for ISIC 2018 in the paper, 1 otherwise; Noisy Student
            widens the students up to 2).
        features: the five base widths (four encoder levels, bottleneck).
        kernel_size: size of the spatial convolutions (3 in the paper).
        act: activation after every convolution but the output one, MONAI ``Act`` name or
            ``(name, kwargs)``.
        norm: normalisation at the end of each block, MONAI ``Norm`` name or ``(name, kwargs)``.
            ``("batch", {"eps": 1e-3, "momentum": 0.01})`` reproduces the Keras defaults of the
            paper's code; PyTorch's defaults (the default here) adapt faster in short runs.
        dropout: dropout rate inside every block (0 in the paper's published runs).
        upsample_mode: ``"nearest"`` (the paper) or ``"linear"`` (bi-/trilinear).
        he_normal_init: initialise the convolutions like Keras' ``he_normal`` (the paper's
            choice) instead of PyTorch's default.

    Input spatial sizes must be divisible by 16 (four 2x poolings).

    Example::

        net = IMUNet(spatial_dims=2, in_channels=3, out_channels=1, alpha=0.5)
        logits = net(torch.rand(2, 3, 256, 256))  # (2, 1, 256, 256)

    The constructor's keywords are a MONAI network's (``spatial_dims``, ``act``, ``norm``, ...), set by name
    from the bundles' configs; they stay flat, as in :mod:`monai.networks.nets`.
    """

    #: every spatial size of the input must be a multiple of this (four 2x poolings)
    divisor = 16

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        alpha: float = 1.0,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        kernel_size: int = 3,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = ("batch", {}),
        dropout: float = 0.0,
        upsample_mode: str = "nearest",
        he_normal_init: bool = True,
    ) -> None:
        super().__init__()
        self._config = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "alpha": alpha,
            "features": tuple(features),
            "kernel_size": kernel_size,
            "act": act,
            "norm": norm,
            "dropout": dropout,
            "upsample_mode": upsample_mode,
            "he_normal_init": he_normal_init,
        }
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(features) != 5:
            raise ValueError(f"features must have 5 entries (4 encoder levels, bottleneck), got {features}")
        if upsample_mode in ("linear", "bilinear", "trilinear"):
            upsample_mode = _UPSAMPLE_LINEAR[spatial_dims]
        elif upsample_mode != "nearest":
            raise ValueError(f"upsample_mode must be 'nearest' or 'linear', got {upsample_mode!r}")
        f0, f1, f2, f3, f4 = (scaled_width(f, alpha) for f in features)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.alpha = float(alpha)
        self.divisor = type(self).divisor  # also on the instance: TorchScript reads only those

        def pair(cin: int, cmid: int, cout: int) -> ConvPair:
            return ConvPair(spatial_dims, cin, cmid, cout, kernel_size, act, norm, dropout)

        def up(channels: int, cout: int) -> _UpAdd:
            return _UpAdd(spatial_dims, channels, cout, kernel_size, act, norm, dropout, upsample_mode)

        self.stem = PointwiseBlock(spatial_dims, in_channels, f0, act, norm)
        self.enc1 = pair(f0, f0, f0)
        self.enc2 = pair(f0, f1, f1)
        self.enc3 = pair(f1, f2, f2)
        self.enc4 = pair(f2, f3, f3)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.bottleneck = pair(f3, f4, f3)
        self.dec4 = up(f3, f2)
        self.dec3 = up(f2, f1)
        self.dec2 = up(f1, f0)
        self.dec1 = up(f0, f0)
        self.head = Conv[Conv.CONV, spatial_dims](f0, out_channels, kernel_size=1)
        if he_normal_init:
            self.apply(init_he_normal)

    def widened(self, alpha: float) -> IMUNet:
        """A new, freshly initialised network like this one with width factor ``alpha`` (Noisy Student)."""
        return IMUNet(**{**self._config, "alpha": float(alpha)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

        Raises:
            ValueError: wrong number of dimensions or a spatial size not divisible by 16.
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                "IMUNet expects a (B, C, *spatial) input with "
                + str(self.spatial_dims)
                + " spatial dims, got shape "
                + str(list(x.shape))
            )
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    "IMUNet needs every spatial size divisible by 16 (four 2x poolings), got input shape "
                    + str(list(x.shape))
                    + "; pad or resize the input"
                )
        s1 = self.enc1(self.stem(x))
        s2 = self.enc2(self.pool(s1))
        s3 = self.enc3(self.pool(s2))
        s4 = self.enc4(self.pool(s3))
        y = self.bottleneck(self.pool(s4))
        y = self.dec4(y, s4)
        y = self.dec3(y, s3)
        y = self.dec2(y, s2)
        y = self.dec1(y, s1)
        return self.head(y)
