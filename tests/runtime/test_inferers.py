from __future__ import annotations

import torch

from monai_im.runtime import AdaptiveInferer, ensemble_predict


class _Counting(torch.nn.Module):
    """Doubles its input and counts calls and the shapes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return 2 * x


def test_adaptive_inferer_direct_call_at_roi_size():
    net = _Counting()
    x = torch.rand(3, 1, 16, 16)
    out = AdaptiveInferer(roi_size=(16, 16))(x, net)
    assert torch.allclose(out, 2 * x)
    assert net.shapes == [(3, 1, 16, 16)]


def test_adaptive_inferer_slides_over_larger_images():
    net = _Counting()
    x = torch.rand(1, 1, 40, 24)
    out = AdaptiveInferer(roi_size=16, sw_batch_size=4, overlap=0.25, mode="constant")(x, net)
    assert out.shape == x.shape
    assert torch.allclose(out, 2 * x, atol=1e-5)
    assert all(s[2:] == (16, 16) for s in net.shapes)
    assert sum(s[0] for s in net.shapes) > 1


def test_ensemble_predict_stacks_one_batched_call_per_network():
    nets = [_Counting(), _Counting()]
    x = torch.rand(4, 2, 8, 8)
    out = ensemble_predict(nets, x)
    assert out.shape == (2, 4, 2, 8, 8)
    assert [n.shapes for n in nets] == [[(4, 2, 8, 8)], [(4, 2, 8, 8)]]
