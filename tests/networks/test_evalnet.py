from __future__ import annotations

import pytest
import torch

from monai_im.networks import EvalNet


@pytest.mark.parametrize(
    "image_channels, mask_channels, out_channels, shape",
    [(3, 1, 1, (64, 64)), (1, 3, 1, (64, 96)), (3, 3, 3, (128, 64))],
)
def test_output_is_a_score_per_sample(image_channels, mask_channels, out_channels, shape):
    net = EvalNet(2, image_channels, mask_channels, alpha=0.25, out_channels=out_channels)
    y = net(torch.rand(3, image_channels, *shape), (torch.rand(3, mask_channels, *shape) > 0.5).float())
    assert y.shape == (3, out_channels)
    assert ((y >= 0) & (y <= 1)).all()


def test_logits_option_and_3d():
    torch.manual_seed(0)
    logits_net = EvalNet(3, 1, 1, alpha=0.25, sigmoid=False).eval()
    score_net = EvalNet(3, 1, 1, alpha=0.25).eval()
    score_net.load_state_dict(logits_net.state_dict())
    image, mask = torch.rand(2, 1, 64, 64, 64), torch.rand(2, 1, 64, 64, 64)
    with torch.no_grad():
        y = logits_net(image, mask)
        assert y.shape == (2, 1)
        assert torch.allclose(torch.sigmoid(y), score_net(image, mask))


def test_two_streams_are_concatenated():
    net = EvalNet(2, 3, 1, alpha=1.0)
    assert net.image_stream[0].conv.in_channels == 3
    assert net.mask_stream[0].conv.in_channels == 1
    assert net.trunk[0].conv_k.in_channels == 32  # 16 image + 16 mask channels
    assert net.head.in_features == 256


def test_mask_changes_the_score():
    torch.manual_seed(0)
    net = EvalNet(2, 3, 1, alpha=0.5).eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = net(image, torch.zeros(1, 1, 64, 64))
        b = net(image, torch.ones(1, 1, 64, 64))
    assert not torch.allclose(a, b)


def test_bad_shapes_raise():
    net = EvalNet(2, 3, 1, alpha=0.25)
    with pytest.raises(ValueError, match="same B and spatial size"):
        net(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 128))
    with pytest.raises(ValueError, match=">= 64"):
        net(torch.rand(1, 3, 32, 64), torch.rand(1, 1, 32, 64))


def test_gradient_and_torchscript():
    torch.manual_seed(0)
    net = EvalNet(2, 3, 1, alpha=0.5)
    image, mask = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    torch.nn.functional.mse_loss(net(image, mask), torch.tensor([[0.3], [0.9]])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    net.eval()
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert torch.allclose(scripted(image, mask), net(image, mask), atol=1e-6)
