"""The bundle folder's root, the model zoo's checks of a bundle run offline, and the ``python -m monai_im.bundle``
command line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from monai_im.utils import find_on_stack

__all__ = ["METADATA_SCHEMA", "bundle_root", "check_bundle", "main"]

#: JSON schema of ``metadata.json`` (the MONAI bundle specification's mandatory keys and tensor formats),
#: shipped so that ``verify_metadata`` runs without downloading one.
METADATA_SCHEMA = Path(__file__).with_name("metadata_schema.json")


def bundle_root(default: str = ".") -> str:
    """The folder of the bundle being run: the parent of the ``configs`` folder of its first config file.

    Found from the ``monai.bundle`` workflow on the call stack (``python -m monai.bundle run`` and
    ``ConfigWorkflow`` keep the config's folder as ``config_root_path``), so that a bundle copied anywhere
    finds its own ``models/`` folder whatever the working directory. Outside a workflow (e.g. in
    ``ckpt_export``) it is ``default``; ``--bundle_root`` on the command line overrides it as usual.
    """
    from monai.bundle import ConfigWorkflow

    def workflow_root(value: object) -> str | None:
        if isinstance(value, ConfigWorkflow) and isinstance(value.config_root_path, Path):
            root = value.config_root_path
            return str(root.parent if root.name == "configs" else root)
        return None

    found = find_on_stack(workflow_root)
    return found if found is not None else default


def _configs(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / n) for n in names]


def check_bundle(bundle_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> list[str]:
    """Run the model zoo's checks on a bundle folder, offline; return what was checked.

    1. ``verify_metadata``: ``configs/metadata.json`` against :data:`METADATA_SCHEMA`.
    2. ``verify_net_in_out``: ``network_def`` of ``configs/train.json`` on the metadata's input shape.
    3. ``ckpt_export``: a TorchScript export of ``checkpoint`` (random weights when None) that gives the
       same output as the checkpoint loaded into ``network_def``.
    4. ``check_properties`` of the inference workflow (``train.json`` + ``inference.json``).

    Raises:
        ValueError / RuntimeError: the first check that fails, with MONAI's message.
    """
    import numpy as np
    import torch
    from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
    from PIL import Image

    bundle = Path(bundle_dir)
    meta = str(bundle / "configs" / "metadata.json")
    train = _configs(bundle, "train.json")
    done: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        verify_metadata(meta_file=meta, filepath=str(METADATA_SCHEMA))
        done.append("verify_metadata")
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=train, device="cpu")
        done.append("verify_net_in_out")
        parser = ConfigParser()
        parser.read_config(train)
        net = parser.get_parsed_content("network_def").eval()
        if checkpoint is None:
            checkpoint = Path(tmp) / "model.pt"
            torch.save(net.state_dict(), checkpoint)
        net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        ts = Path(tmp) / "model.ts"
        ckpt_export(
            net_id="network_def",
            filepath=str(ts),
            ckpt_file=str(checkpoint),
            meta_file=meta,
            config_file=train,
        )
        # the network's input: the 2D bundles' image size, the 3D bundles' patch (sliding-window) size
        shape = parser.get_parsed_content("image_size" if "image_size" in parser else "patch_size")
        x = torch.rand(1, parser.get_parsed_content("in_channels"), *shape)
        with torch.no_grad():
            if not torch.allclose(torch.jit.load(str(ts))(x), net(x), atol=1e-5):
                raise RuntimeError(f"{bundle}: the TorchScript export differs from the checkpoint")
        done.append("ckpt_export")
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        channels = x.shape[1]
        if len(shape) == 3:  # a CT-like volume in Hounsfield units, 1.5 mm voxels
            import nibabel as nib

            hu = np.random.default_rng(0).integers(-1000, 1000, size=tuple(shape)).astype(np.int16)
            nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 1.5, 1.0])), inputs / "image.nii.gz")
        else:
            pixels = (np.random.default_rng(0).random((*shape, channels)) * 255).astype(np.uint8)
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(inputs / "image.png")
        workflow = ConfigWorkflow(
            config_file=_configs(bundle, "train.json", "inference.json"),
            meta_file=meta,
            logging_file=False,
            workflow_type="inference",
            input_dir=str(inputs),
            output_dir=str(Path(tmp) / "outputs"),
            checkpoint=str(checkpoint),
        )
        workflow.initialize()
        wrong = workflow.check_properties()
        if wrong:
            raise ValueError(f"{bundle}: the inference workflow lacks or misnames the properties {wrong}")
        done.append("check_properties (inference)")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_im.bundle check <bundle folder> [--checkpoint model.pt]`` and
    ``python -m monai_im.bundle options <bundle folder> [--config inference.json ...]``."""
    parser = argparse.ArgumentParser(prog="python -m monai_im.bundle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="run the model zoo's checks on a bundle folder, offline")
    check.add_argument("bundle", help="the bundle folder (holding configs/metadata.json)")
    check.add_argument("--checkpoint", help="a state dict to export (default: random weights)")
    options = sub.add_parser("options", help="list the options of a bundle with their defaults and meanings")
    options.add_argument("bundle", help="the bundle folder (holding configs/train.json)")
    options.add_argument(
        "--config",
        action="append",
        default=[],
        help="a config of the bundle merged on train.json, e.g. inference.json (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.command == "options":
        from monai_im.bundle.options import format_options

        try:
            print(format_options(args.bundle, args.config))
        except (OSError, ValueError) as e:
            print(f"error: {args.bundle}: {e}".splitlines()[0], file=sys.stderr)
            return 1
        return 0
    try:
        done = check_bundle(args.bundle, args.checkpoint)
    except Exception as e:  # report the failing check in one line
        print(f"error: {args.bundle}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    print(f"{args.bundle}: passed {', '.join(done)}")
    return 0
