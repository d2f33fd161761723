"""A checkpoint given to inference or evaluation is checked against the bundle's network first, in one line."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from monai_im.bundle.checkpoints import check_checkpoint, checkpoint_mismatch, find_state_dict
from monai_im.networks import EvalNet, IMUNet

REPO = Path(__file__).resolve().parents[2]


def configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO / "bundles" / bundle / "configs" / n) for n in names]


def refusal(bundle: str, config: str, **overrides) -> str:
    from monai.bundle import run

    with pytest.raises(SystemExit) as err:
        run(config_file=configs(bundle, "train.json", config), logging_file=False, **overrides)
    message = str(err.value.code)
    assert len(message.splitlines()) == 1, message
    return message


def save(path: Path, content) -> Path:
    torch.save(content, path)
    return path


class _Payload:
    """Unpickling this object would create the file ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return builtins.open, (str(self.target), "w")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    (folder / "notes.txt").write_text("not a checkpoint")
    return {
        "hela": save(folder / "hela.pt", IMUNet(2, 1, 3, alpha=1.0).state_dict()),
        "isic": save(folder / "isic.pt", IMUNet(2, 3, 1, alpha=0.5).state_dict()),
        "isic_wide": save(folder / "isic_wide.pt", IMUNet(2, 3, 1, alpha=1.0).state_dict()),
        "evalnet": save(folder / "evalnet.pt", EvalNet(2, 3, 1).state_dict()),
        "text": folder / "notes.txt",
    }


def test_a_checkpoint_of_another_task_is_refused_naming_the_channels(checkpoints, tmp_path):
    out = tmp_path / "masks"
    message = refusal(
        "isic_im",
        "inference.json",
        input_dir=str(tmp_path),
        output_dir=str(out),
        checkpoint=str(checkpoints["hela"]),
    )
    assert message == (
        f"error: --checkpoint {checkpoints['hela']}: input channels 1 vs 3, output channels 3 vs 1 "
        "(checkpoint vs bundle): a checkpoint of another task?"
    )
    assert not out.exists(), "refused before any file is written"


def test_2d_weights_are_refused_by_a_3d_bundle(checkpoints, tmp_path):
    message = refusal(
        "flare22_im",
        "inference.json",
        input_dir=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        checkpoint=str(checkpoints["isic"]),
    )
    assert message == (
        f"error: --checkpoint {checkpoints['isic']}: 2D weights into the bundle's 3D IMUNet: a checkpoint of a 2D "
        "bundle?"
    )


def test_evaluation_checks_the_checkpoint_before_reading_the_data(checkpoints, tmp_path):
    message = refusal(
        "hela_im",
        "evaluate.json",
        dataset_dir=str(tmp_path / "nowhere"),
        output_dir=str(tmp_path / "study"),
        checkpoint=str(checkpoints["evalnet"]),
    )
    assert message.startswith(
        f"error: --checkpoint {checkpoints['evalnet']}: not the weights of the bundle's IMUNet: the checkpoint lacks "
    )
    assert message.endswith("; another network?") and "'image_stream." in message


def test_a_missing_file_and_a_forgotten_checkpoint_say_what_to_pass(tmp_path):
    missing = tmp_path / "runs" / "model.pt"
    message = refusal(
        "isic_im",
        "inference.json",
        input_dir=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        checkpoint=str(missing),
    )
    assert (
        message
        == f"error: --checkpoint {missing}: no such file; pass the model a study wrote, runs/<study>/model.pt"
    )
    # no --checkpoint: the bundle's models/model.pt (absent from the repository's bundles)
    default = REPO / "bundles" / "isic_im" / "models" / "model.pt"
    assert not default.exists()
    message = refusal("isic_im", "inference.json", input_dir=str(tmp_path), output_dir=str(tmp_path / "o"))
    assert message == (
        f"error: no --checkpoint given and the default {default} does not exist: pass the model a study wrote, "
        "--checkpoint runs/<study>/model.pt"
    )
    message = refusal("isic_im", "evaluate.json", output_dir=str(tmp_path))
    assert message.startswith(
        f"error: no --checkpoint given and the default {tmp_path}/model.pt does not exist"
    )


def test_a_file_that_is_no_checkpoint_is_named(checkpoints, tmp_path):
    message = refusal(
        "isic_im",
        "inference.json",
        input_dir=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        checkpoint=str(checkpoints["text"]),
    )
    assert message.startswith(f"error: --checkpoint {checkpoints['text']}: not a PyTorch checkpoint (")
    folder = checkpoints["isic"].parent
    message = refusal(
        "isic_im",
        "inference.json",
        input_dir=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        checkpoint=str(folder),
    )
    assert message == f"error: --checkpoint {folder} is a folder: pass the model.pt a study wrote"


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    target = tmp_path / "payload_ran"
    evil = save(tmp_path / "model.pt", {"model": _Payload(target)})
    assert not target.exists()
    message = refusal(
        "isic_im",
        "inference.json",
        input_dir=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        checkpoint=str(evil),
    )
    assert message == (
        f"error: --checkpoint {evil}: refused: it holds Python objects (io.open) besides weights, which loading "
        "would run; a model.pt of a study holds weights only"
    )
    assert not target.exists(), "the payload must not run"


def test_what_loads_and_what_does_not():
    net = IMUNet(2, 3, 1, alpha=0.5)
    weights = net.state_dict()
    assert find_state_dict(weights) is weights
    assert find_state_dict({"model": weights, "optimizer": {"state": {}}}) is weights  # an epoch checkpoint
    assert find_state_dict({"net": weights}) is None and find_state_dict(torch.zeros(2)) is None
    assert checkpoint_mismatch(weights, net) is None
    assert checkpoint_mismatch(IMUNet(2, 3, 1, alpha=1.0).state_dict(), net) == (
        "'stem.conv.weight' is (16, 3, 1, 1) in the checkpoint, (8, 3, 1, 1) in the bundle's IMUNet: a network of "
        "another width (--alpha 1)?"
    )


def test_check_checkpoint_accepts_a_study_checkpoint_and_refuses_other_content(checkpoints, tmp_path):
    net = IMUNet(2, 3, 1, alpha=0.5)
    check_checkpoint(checkpoints["isic"], net)
    check_checkpoint(save(tmp_path / "epoch.pt", {"model": net.state_dict(), "trainer": {"epoch": 3}}), net)
    with pytest.raises(
        SystemExit,
        match=r"holds a dict of trainer, not network weights \(a state dict, or one under 'model'\)$",
    ):
        check_checkpoint(save(tmp_path / "trainer.pt", {"trainer": {"epoch": 3}}), net)
    with pytest.raises(SystemExit, match=r"holds a Tensor, not network weights"):
        check_checkpoint(save(tmp_path / "tensor.pt", torch.zeros(3)), net)
