"""Seeded synthetic demo datasets that stand in for ISIC 2018 and HeLa, in the layout the bundles read.

::

    OUT_DIR/
      datalist.json   # labeled, unlabeled, validation, test: {"image": "images/x.png", "label": "labels/x.png"}
      dataset.json    # kind, seed, sizes, counts, labeled fraction, label channels, licence
      images/*.png
      labels/*.png

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so an image does not
depend on how many images the other splits hold, and the same arguments give byte-identical files.
The folder is built under a temporary name and moved into place only when complete.

Command line: ``monai-im-demo-data isic OUT_DIR --num-train 200 --size 64`` (the same as
``python data_scripts/make_demo_data.py ...``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from monai_im.data.datalist import split_labeled, write_datalist
from monai_im.datasets.demo_tools import (
    dataset_arguments,
    dataset_options,
    ensure_dataset,
    run_dataset_command,
)
from monai_im.datasets.drawing import image_rng
from monai_im.datasets.hela_like import hela_like_sample
from monai_im.datasets.isic_like import isic_like_sample
from monai_im.io import atomic_directory, atomic_write_json, load_json, save_png
from monai_im.runtime.progress import progress_bar

__all__ = [
    "DemoKind",
    "DEMO_KINDS",
    "make_demo_dataset",
    "make_isic_like_dataset",
    "make_hela_like_dataset",
    "ensure_demo_dataset",
    "isic_like_sample",
    "hela_like_sample",
    "main",
]

logger = logging.getLogger(__name__)

Sampler = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DemoKind:
    """A kind of synthetic dataset: how to draw one sample and how to describe the result.

    ``variants`` names other samplers of the same kind (e.g. ``"families"``: images from several
    acquisition families); ``"classic"`` is always ``sample``.
    """

    name: str
    sample: Sampler
    description: str
    image_channels: int
    label_channels: tuple[str, ...]
    variants: Mapping[str, Sampler] = field(default_factory=dict)

    def sampler(self, variety: str = "classic") -> Sampler:
        """The sampler of ``variety``; a one-line error naming the choices for an unknown one."""
        samplers = {"classic": self.sample, **self.variants}
        if variety not in samplers:
            raise ValueError(
                f"the {self.name} demo data has no variety {variety!r}; choose one of {sorted(samplers)}"
            )
        return samplers[variety]


DEMO_KINDS: dict[str, DemoKind] = {
    "isic": DemoKind(
        "isic_like",
        isic_like_sample,
        "ISIC 2018-like dermoscopy images (RGB) with binary lesion masks (0/255)",
        3,
        ("lesion",),
        {"families": partial(isic_like_sample, families=True)},
    ),
    "hela": DemoKind(
        "hela_like",
        hela_like_sample,
        "HeLa-like brightfield images (grayscale) with alive, dead and position masks (RGB, 0/255)",
        1,
        ("alive", "dead", "position"),
        {"families": partial(hela_like_sample, families=True)},
    ),
}

_SPLITS = (("train", "train"), ("validation", "val"), ("test", "test"))


def _check_args(num_train: int, num_val: int, num_test: int, size: int, seed: int) -> None:
    if num_train < 1:
        raise ValueError(f"num_train must be at least 1, got {num_train}")
    if num_val < 0 or num_test < 0:
        raise ValueError(f"num_val and num_test must not be negative, got {num_val} and {num_test}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def make_demo_dataset(
    kind: str,
    out_dir: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 20,
    num_test: int = 40,
    size: int = 256,
    labeled_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    variety: str = "classic",
) -> Path:
    """Write a synthetic dataset of the given kind (``"isic"`` or ``"hela"``) to ``out_dir``.

    The parameters are the demo command's options one by one, set by keyword from the bundles' demo
    configs and the command line; they stay flat rather than be grouped.

    Args:
        kind: a key of :data:`DEMO_KINDS`.
        out_dir: the dataset folder to create.
        num_train: training images, split into labeled and unlabeled.
        num_val: validation images.
        num_test: test images.
        size: side of the square images in pixels.
        labeled_fraction: share of the training images in the ``labeled`` key (seeded split).
        seed: seed of the images and of the split.
        overwrite: replace an existing ``out_dir``; otherwise an existing one is an error.
        progress: show a progress bar.
        variety: ``"classic"``, or another of the kind's :attr:`DemoKind.variants` (both kinds:
            ``"families"``, images from several acquisition families that augmentation cannot turn
            into one another, see :data:`monai_im.datasets.isic_like.FAMILIES` and
            :data:`monai_im.datasets.hela_like.FAMILIES`).

    Returns:
        The dataset folder.
    """
    if kind not in DEMO_KINDS:
        raise ValueError(f"unknown demo dataset kind {kind!r}; choose one of {sorted(DEMO_KINDS)}")
    _check_args(num_train, num_val, num_test, size, seed)
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    spec = DEMO_KINDS[kind]
    sample = spec.sampler(variety)
    out_dir = Path(out_dir)
    counts = {"train": num_train, "validation": num_val, "test": num_test}
    entries: dict[str, list[dict[str, str]]] = {}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        with progress_bar(
            total=sum(counts.values()), desc=f"{spec.name} data", unit="img", disable=not progress
        ) as bar:
            for split, prefix in _SPLITS:
                entries[split] = _write_split(
                    tmp, sample, split, prefix, counts[split], size, seed, bar.update
                )
        labeled, unlabeled = split_labeled(entries["train"], labeled_fraction=labeled_fraction, seed=seed)
        datalist = {
            "labeled": labeled,
            "unlabeled": unlabeled,
            "validation": entries["validation"],
            "test": entries["test"],
        }
        write_datalist(tmp / "datalist.json", datalist)
        atomic_write_json(
            tmp / "dataset.json",
            {**_description(spec, kind, size, seed, labeled_fraction, datalist), "variety": variety},
        )
    logger.info(
        "wrote %s to %s: %d labeled, %d unlabeled, %d validation, %d test images of %dx%d",
        spec.name,
        out_dir,
        len(labeled),
        len(unlabeled),
        num_val,
        num_test,
        size,
        size,
    )
    return out_dir


def _write_split(
    tmp: Path,
    sample: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]],
    split: str,
    prefix: str,
    count: int,
    size: int,
    seed: int,
    done: Callable[[], Any],
) -> list[dict[str, str]]:
    """Draw and write the ``count`` image/label pairs of one split (each from its own seeded generator);
    their datalist rows. ``done`` is called after each pair."""
    rows = []
    for index in range(count):
        image, label = sample(size, image_rng(seed, split, index))
        name = f"{prefix}_{index:04d}.png"
        save_png(tmp / "images" / name, image, channel_first=False, reverse_indexing=False)
        save_png(tmp / "labels" / name, label, channel_first=False, reverse_indexing=False)
        rows.append({"image": f"images/{name}", "label": f"labels/{name}"})
        done()
    return rows


def _description(
    spec: DemoKind, kind: str, size: int, seed: int, labeled_fraction: float, datalist: dict[str, list[Any]]
) -> dict[str, Any]:
    return {
        "name": spec.name,
        "kind": kind,
        "description": spec.description,
        "seed": seed,
        "image_size": [size, size],
        "image_channels": spec.image_channels,
        "label_channels": list(spec.label_channels),
        "labeled_fraction": labeled_fraction,
        "counts": {key: len(value) for key, value in datalist.items()},
        "license": "synthetic: generated by monai_im.datasets.synthetic, no real patient data; free to use",
    }


def make_isic_like_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 20,
    num_test: int = 40,
    size: int = 256,
    labeled_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write an ISIC-like dataset (RGB dermoscopy-like images, binary 0/255 lesion masks).

    See :func:`make_demo_dataset` for the arguments and :func:`isic_like_sample` for the images.
    """
    return make_demo_dataset(
        "isic", out_dir, num_train, num_val, num_test, size, labeled_fraction, seed, overwrite, progress
    )


def make_hela_like_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 20,
    num_test: int = 40,
    size: int = 256,
    labeled_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a HeLa-like dataset (grayscale images; RGB 0/255 masks with channels alive, dead, position).

    See :func:`make_demo_dataset` for the arguments and :func:`hela_like_sample` for the images.
    """
    return make_demo_dataset(
        "hela", out_dir, num_train, num_val, num_test, size, labeled_fraction, seed, overwrite, progress
    )


def dataset_variety(root: str | os.PathLike) -> str | None:
    """The variety of the demo dataset in ``root`` (``"classic"`` when its dataset.json names none);
    ``None`` when ``root`` holds no dataset.json."""
    made = Path(root) / "dataset.json"
    return load_json(made).get("variety", "classic") if made.is_file() else None


def ensure_demo_dataset(kind: str, root: str | os.PathLike, **kwargs: Any) -> str:
    """Return ``root``, creating a demo dataset there first if it has no ``datalist.json``.

    An existing dataset is reused as it is (``kwargs`` are not compared with it, except ``variety``: a
    folder holding another variety is refused), which lets a bundle config call this on every run:
    ``"$monai_im.datasets.ensure_demo_dataset('isic', @dataset_dir, size=64)"``.

    Args:
        kind: ``"isic"`` or ``"hela"``.
        root: the dataset folder.
        kwargs: passed to :func:`make_demo_dataset` (``num_train``, ``size``, ``seed`` ...).
    """
    if kind not in DEMO_KINDS:
        raise ValueError(f"unknown demo dataset kind {kind!r}; choose one of {sorted(DEMO_KINDS)}")
    wanted = kwargs.get("variety", "classic")
    held = dataset_variety(root)
    if held is not None and (Path(root) / "datalist.json").is_file():
        if held != wanted:  # reusing it would silently train on other data than asked for
            raise ValueError(
                f"{root} holds the {held!r} variety of the demo data, not {wanted!r}; "
                "point dataset_dir at another folder"
            )
    return ensure_dataset(root, lambda path, **kw: make_demo_dataset(kind, path, **kw), **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monai-im-demo-data",
        description="Write a seeded synthetic demo dataset (ISIC-like or HeLa-like) with a datalist.json.",
    )
    parser.add_argument("kind", choices=sorted(DEMO_KINDS), help="which dataset to imitate")
    dataset_arguments(parser, "images", num_train=200, num_val=20, num_test=40, labeled_fraction=0.1)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: %(default)s)")
    parser.add_argument(
        "--variety",
        default="classic",
        help="'classic', or 'families': every image from one of several acquisition families that "
        "augmentation cannot turn into one another (ISIC-like: colour cast, skin type, pigmented or pink "
        "lesions, texture, shape; HeLa-like: brightfield, phase contrast, trypan blue, dark field, "
        "confluent, spindle or round cells, at twice the magnification) (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    return run_dataset_command(
        lambda: make_demo_dataset(
            args.kind, args.out_dir, size=args.size, variety=args.variety, **dataset_options(args)
        ),
        f"{DEMO_KINDS[args.kind].name} images",
    )


if __name__ == "__main__":
    raise SystemExit(main())
