from __future__ import annotations

import pickle

import pytest
import torch

from monai_im.metrics import PerImageIoU
from monai_im.networks import IMUNet
from monai_im.selftrain import build_metrics, build_network, load_weights


class _Payload:
    def __reduce__(self):  # would run code if unpickled
        return (print, ("unpickled!",))


def test_load_weights_is_weights_only(tmp_path):
    net = IMUNet(2, 1, 1, alpha=0.5)
    good = tmp_path / "good.pt"
    torch.save({"model": net.state_dict()}, good)
    other = IMUNet(2, 1, 1, alpha=0.5)
    load_weights(other, good)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    bad = tmp_path / "bad.pt"
    torch.save({"model": net.state_dict(), "extra": _Payload()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        load_weights(other, bad)


def test_build_network_gives_fresh_weights_from_a_template_or_factory():
    torch.manual_seed(0)
    template = IMUNet(2, 3, 1, alpha=0.5)
    a, b = build_network(template), build_network(template)
    assert a is not template
    wa, wb, wt = (next(m.parameters()) for m in (a, b, template))
    assert not torch.equal(wa, wb) and not torch.equal(wa, wt)
    made = build_network(lambda: IMUNet(2, 3, 1, alpha=0.5))
    assert isinstance(made, IMUNet)


def test_build_metrics_copies_and_prefixes():
    proto = PerImageIoU()
    out = build_metrics({"iou": proto}, "val_")
    assert list(out) == ["val_iou"] and out["val_iou"] is not proto
    assert isinstance(build_metrics({"iou": PerImageIoU}, "test_")["test_iou"], PerImageIoU)
