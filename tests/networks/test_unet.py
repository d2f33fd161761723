from __future__ import annotations

import re

import pytest
import torch

from monai_im.networks import IMUNet, scaled_width


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "spatial_dims, in_channels, out_channels, alpha, shape",
    [
        (2, 3, 1, 0.5, (2, 3, 32, 48)),
        (2, 1, 3, 1.0, (2, 1, 16, 16)),
        (2, 3, 9, 1.5, (1, 3, 16, 32)),
        (3, 1, 2, 0.5, (1, 1, 16, 32, 16)),
        (3, 2, 1, 0.25, (2, 2, 32, 16, 16)),
    ],
)
def test_output_shape_is_logits(spatial_dims, in_channels, out_channels, alpha, shape):
    net = IMUNet(spatial_dims, in_channels, out_channels, alpha=alpha)
    y = net(torch.rand(shape))
    assert y.shape == (shape[0], out_channels, *shape[2:])
    # logits, not probabilities: a fresh network is not squashed into [0, 1]
    assert y.min() < 0 or y.max() > 1


@pytest.mark.parametrize(
    "alpha, expected",
    # the paper: about 0.17M at alpha 0.5 .. 2.72M at alpha 2 (Keras counts incl. BN statistics)
    [(0.5, 0.17e6), (1.0, 0.68e6), (2.0, 2.72e6)],
)
def test_parameter_count_matches_paper(alpha, expected):
    net = IMUNet(2, 3, 1, alpha=alpha)
    bn_stats = sum(b.numel() for name, b in net.named_buffers() if "running" in name)
    assert abs(n_params(net) - expected) / expected < 0.02
    assert abs(n_params(net) + bn_stats - expected) / expected < 0.02


def test_widths_round_down_like_the_reference():
    assert scaled_width(16, 1.5) == 24
    assert scaled_width(16, 0.5) == 8
    assert scaled_width(128, 0.75) == 96
    assert scaled_width(25, 0.5) == 12
    with pytest.raises(ValueError):
        scaled_width(16, 0.01)
    with pytest.raises(ValueError):
        scaled_width(16, 0)
    net = IMUNet(alpha=1.5)
    assert net.stem.conv.out_channels == 24
    assert net.bottleneck.conv_k.out_channels == 384 and net.bottleneck.conv_1.out_channels == 192


@pytest.mark.parametrize("shape", [(1, 3, 40, 64), (1, 3, 64, 24), (1, 3, 8, 8)])
def test_non_divisible_input_raises(shape):
    net = IMUNet(alpha=0.25)
    with pytest.raises(ValueError, match="divisible by 16.*" + re.escape(str(list(shape)))):
        net(torch.rand(shape))


def test_wrong_dims_raises():
    with pytest.raises(ValueError, match="spatial dims"):
        IMUNet(2, 3, 1, alpha=0.25)(torch.rand(1, 3, 16, 16, 16))
    with pytest.raises(ValueError):
        IMUNet(spatial_dims=1)
    with pytest.raises(ValueError):
        IMUNet(upsample_mode="deconv")


def test_skips_are_additive():
    net = IMUNet(2, 3, 1, alpha=1.0)
    # the first decoder convolution sees the skip width, not skip + upsampled (concatenation)
    for dec, width in ((net.dec4, 128), (net.dec3, 64), (net.dec2, 32), (net.dec1, 16)):
        assert dec.fuse.conv.in_channels == width
    seen = {}
    net.dec1.fuse.register_forward_hook(lambda m, inp, out: seen.setdefault("fuse_in", inp[0]))
    net.dec1.up.register_forward_hook(lambda m, inp, out: seen.setdefault("up_out", out))
    net.enc1.register_forward_hook(lambda m, inp, out: seen.setdefault("skip", out))
    net(torch.rand(2, 3, 16, 16))
    assert torch.allclose(seen["fuse_in"], seen["up_out"] + seen["skip"])


def test_upsampling_modes_and_no_transposed_conv():
    for mode in ("nearest", "linear"):
        net = IMUNet(2, 1, 1, alpha=0.25, upsample_mode=mode)
        assert net.dec1.up.mode == ("nearest" if mode == "nearest" else "bilinear")
        assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    assert IMUNet(3, 1, 1, alpha=0.25, upsample_mode="linear").dec1.up.mode == "trilinear"


def test_gradient_reaches_every_parameter():
    net = IMUNet(2, 3, 2, alpha=0.5)
    net(torch.rand(2, 3, 16, 16)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_dropout_layers_only_when_asked():
    assert not any(isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout) for m in IMUNet(alpha=0.25).modules())
    net = IMUNet(alpha=0.25, dropout=0.2)
    assert any(isinstance(m, torch.nn.Dropout | torch.nn.Dropout2d) for m in net.modules())
    assert n_params(net) == n_params(IMUNet(alpha=0.25))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 3, 32, 16)), (3, (1, 3, 16, 16, 32))])
def test_torchscript_matches_eager(spatial_dims, shape):
    torch.manual_seed(0)
    net = IMUNet(spatial_dims, 3, 2, alpha=0.5).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(shape)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)
    with pytest.raises(Exception, match="divisible by 16"):
        scripted(torch.rand(1, 3, *([24] * spatial_dims)))
