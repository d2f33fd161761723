"""Tests of the dictionary wrappers and their use from a MONAI bundle config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_im.constants import IGNORE_INDEX
from monai_im.transforms import (
    AcceptPseudoLabeld,
    ApplyInconsistencyMaskd,
    EnsureNumChannelsd,
    InconsistencyMask,
    InconsistencyMaskd,
)


def _preds(seed: int = 0, channels: int = 1) -> torch.Tensor:
    return torch.rand(3, channels, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_inconsistency_maskd_single_key():
    preds = _preds()
    out = InconsistencyMaskd(keys="pred", dilation=2)({"pred": preds, "other": 1})
    expected = InconsistencyMask(dilation=2)(preds)
    torch.testing.assert_close(out["pseudo_label"], expected[0])
    torch.testing.assert_close(out["im"], expected[1])
    assert out["pred"] is preds and out["other"] == 1


def test_inconsistency_maskd_multiple_keys_postfix_and_sequences():
    data = {"a": _preds(1), "b": _preds(2, channels=3).numpy()}
    out = InconsistencyMaskd(keys=["a", "b"], mode="multilabel")(data)
    assert {"a_pseudo_label", "a_im", "b_pseudo_label", "b_im"} <= set(out)
    assert isinstance(out["b_im"], np.ndarray) and out["b_pseudo_label"].shape == (3, 6, 6)
    np.testing.assert_array_equal(out["b_im"], InconsistencyMask("multilabel")(data["b"])[1])
    out = InconsistencyMaskd(keys=["a", "b"], pseudo_label_key=["pl_a", "pl_b"], im_key=("im_a", "im_b"))(
        {"a": _preds(1), "b": _preds(2)}
    )
    assert {"pl_a", "pl_b", "im_a", "im_b"} <= set(out)
    torch.testing.assert_close(out["im_b"], InconsistencyMask()(_preds(2))[1])


def test_inconsistency_maskd_validation_and_missing_keys():
    with pytest.raises(ValueError, match="one key per input key"):
        InconsistencyMaskd(keys=["a", "b"], pseudo_label_key=["x"])
    with pytest.raises(ValueError, match="must be different"):
        InconsistencyMaskd(keys="pred", pseudo_label_key="out", im_key="out")
    with pytest.raises(ValueError, match="mode"):
        InconsistencyMaskd(mode="x")
    with pytest.raises(KeyError):
        InconsistencyMaskd(keys="pred")({"image": 1})
    assert InconsistencyMaskd(keys="pred", allow_missing_keys=True)({"image": 1}) == {"image": 1}


def _im_dict() -> dict:
    im = torch.zeros(1, 4, 4)
    im[0, :2, :2] = 1
    return {
        "image": torch.rand(3, 4, 4) + 1,
        "label": torch.ones(1, 4, 4),
        "im": im,
        "name": "case",
    }


@pytest.mark.parametrize("policy,value", [("ignore", IGNORE_INDEX), ("background", 0), ("im_class", 0)])
def test_apply_inconsistency_maskd(policy, value):
    data = _im_dict()
    out = ApplyInconsistencyMaskd(policy=policy)(data)
    inside = data["im"] > 0
    assert bool((out["image"][inside.expand(3, -1, -1)] == 0).all())
    torch.testing.assert_close(
        out["image"][~inside.expand(3, -1, -1)], data["image"][~inside.expand(3, -1, -1)]
    )
    assert out["label"][inside].unique().tolist() == [value] and bool((out["label"][~inside] == 1).all())
    torch.testing.assert_close(out["im"], data["im"])
    again = ApplyInconsistencyMaskd(policy=policy)(out)  # idempotent
    for key in ("image", "label"):
        torch.testing.assert_close(again[key], out[key])


def test_apply_inconsistency_maskd_passthrough_and_keys():
    labeled = {"image": torch.rand(3, 4, 4), "label": torch.ones(1, 4, 4)}  # no IM: a labeled image
    out = ApplyInconsistencyMaskd(allow_missing_keys=True)(labeled)
    assert out.keys() == labeled.keys() and all(out[k] is labeled[k] for k in labeled)
    with pytest.raises(KeyError, match="im"):
        ApplyInconsistencyMaskd()(labeled)
    data = _im_dict()
    out = ApplyInconsistencyMaskd(image_keys="image", label_keys=None)(data)
    assert out["label"] is data["label"] and out["image"][0, 0, 0] == 0
    data = {"img": np.ones((1, 4, 4), np.float32), "im": np.eye(4, dtype=np.float32)[None]}
    out = ApplyInconsistencyMaskd(image_keys="img", label_keys="pseudo_label", allow_missing_keys=True)(data)
    assert isinstance(out["img"], np.ndarray) and out["img"].sum() == 12
    with pytest.raises(ValueError, match="im_key"):
        ApplyInconsistencyMaskd(image_keys="im")


def test_accept_pseudo_labeld():
    pl = torch.zeros(1, 4, 4)
    pl[0, 0] = 1
    im = torch.zeros(1, 4, 4)
    im[0, 3, :2] = 1
    out = AcceptPseudoLabeld()({"pseudo_label": pl, "im": im})
    assert out["accepted"] is True
    out = AcceptPseudoLabeld(accept_key="keep", max_im_fraction=0.1)({"pseudo_label": pl, "im": im})
    assert out["keep"] is False
    out = AcceptPseudoLabeld()({"pseudo_label": torch.zeros(1, 4, 4), "im": im})
    assert out["accepted"] is False
    assert AcceptPseudoLabeld(allow_missing_keys=True)({"label": pl}) == {"label": pl}
    with pytest.raises(KeyError):
        AcceptPseudoLabeld()({"pseudo_label": pl})


def test_ensure_num_channelsd():
    data = {
        "image": MetaTensor(torch.rand(1, 4, 4), meta={"filename_or_obj": "g.png"}),
        "label": torch.ones(1, 4, 4),
    }
    out = EnsureNumChannelsd(keys="image", num_channels=3)(data)
    assert out["image"].shape == (3, 4, 4) and out["label"].shape == (1, 4, 4)
    bad = {"image": MetaTensor(torch.rand(2, 4, 4), meta={"filename_or_obj": "two.png"})}
    with pytest.raises(ValueError, match="two.png"):
        EnsureNumChannelsd(keys="image", num_channels=3)(bad)
    assert EnsureNumChannelsd(keys="missing", num_channels=3, allow_missing_keys=True)(bad) == bad


def test_pipeline_from_bundle_config():
    config = {
        "pipeline": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "monai_im.transforms.InconsistencyMaskd", "keys": "pred", "mode": "multiclass"},
                {
                    "_target_": "monai_im.transforms.ApplyInconsistencyMaskd",
                    "image_keys": "image",
                    "label_keys": "pseudo_label",
                    "policy": "im_class",
                },
                {
                    "_target_": "monai_im.transforms.AcceptPseudoLabeld",
                    "mode": "multiclass",
                    "min_foreground": 0,
                },
            ],
        }
    }
    pipeline = ConfigParser(config).get_parsed_content("pipeline")
    assert isinstance(pipeline, Compose)
    votes = torch.tensor([[[1, 1, 2, 0]], [[1, 1, 2, 2]]])  # (E, H, W): last pixel disputed
    preds = torch.nn.functional.one_hot(votes, 3).permute(0, 3, 1, 2).float()  # (E, C, H, W)
    out = pipeline({"pred": preds, "image": torch.ones(3, 1, 4)})
    assert out["pseudo_label"].flatten().tolist() == [1, 1, 2, 0]
    assert out["im"].flatten().tolist() == [0, 0, 0, 1]
    assert out["image"][:, 0, 3].tolist() == [0, 0, 0] and out["image"][:, 0, :3].sum() == 9
    assert out["accepted"] is True  # 3 foreground pixels > 1 IM pixel
