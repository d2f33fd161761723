"""Do bf16 teachers make the same pseudo-labels as fp32 teachers? Measured on a finished study.

The teachers of generation ``g`` of a finished study folder (the top ``n`` students of generation
``g - 1`` by validation rank, as the study picked them) pseudo-label the study's unlabeled images
twice: with fp32 and with bf16 inference (both channels_last, as ``RunSettings`` prepares them).
Reported: pixel agreement of the pseudo-labels and of the IMs, the IM fraction of each, and how
many images the acceptance rule keeps in each and in both.

    python benchmarks/precision_agreement.py runs/isic_im_demo --dataset data/demo/isic_like
"""

from __future__ import annotations

import argparse
import json

import torch
from monai.data import DataLoader, Dataset
from monai_im.engines.strategies import InconsistencyMask

from monai_im.data import load_datalist
from monai_im.networks import IMUNet
from monai_im.runtime import RunSettings, ensemble_predict
from monai_im.selftrain.layout import StudyLayout
from monai_im.transforms import image_segmentation_transforms


def teachers(study: StudyLayout, generation: int, num_teachers: int, settings: RunSettings, alpha: float):
    summary = study.read_summary(generation - 1)
    if summary is None:
        raise SystemExit(f"error: {study.root} has no finished generation {generation - 1}")
    nets = []
    for index in summary["ranking"][:num_teachers]:
        net = IMUNet(2, 3, 1, alpha=alpha)
        state = torch.load(study.read_student(generation - 1, index).checkpoint, weights_only=True)
        net.load_state_dict(state)
        nets.append(settings.prepare_network(net, "cpu").eval())
    return nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a finished isic_im study folder")
    parser.add_argument("--dataset", required=True, help="its dataset folder (with datalist.json)")
    parser.add_argument("--generation", type=int, default=1, help="whose teachers (default 1)")
    parser.add_argument("--teachers", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    study = StudyLayout(args.study)
    items = load_datalist(args.dataset)["unlabeled"]
    loader = DataLoader(
        Dataset(
            [{"image": it["image"]} for it in items], image_segmentation_transforms((args.size, args.size))
        ),
        batch_size=32,
    )
    strategy = InconsistencyMask(mode="binary")
    out: dict[str, list[torch.Tensor]] = {}
    for name in ("fp32", "bf16"):
        settings = RunSettings(inference_precision=name)
        nets = teachers(study, args.generation, args.teachers, settings, args.alpha)
        labels, ims, kept = [], [], []
        with torch.no_grad():
            for batch in loader:
                pl = strategy(ensemble_predict(nets, batch["image"]))
                labels.append(pl.label.bool())
                ims.append(pl.im.bool())
                kept.append(pl.accepted)
        out[name] = [torch.cat(labels), torch.cat(ims), torch.cat(kept)]
    (l32, im32, k32), (l16, im16, k16) = out["fp32"], out["bf16"]
    report = {
        "images": len(items),
        "pseudo_label_pixel_agreement": float((l32 == l16).float().mean()),
        "im_pixel_agreement": float((im32 == im16).float().mean()),
        "im_fraction_fp32": float(im32.float().mean()),
        "im_fraction_bf16": float(im16.float().mean()),
        "kept_fp32": int(k32.sum()),
        "kept_bf16": int(k16.sum()),
        "kept_by_both": int((k32 & k16).sum()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
