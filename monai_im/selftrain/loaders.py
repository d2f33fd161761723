"""The datasets and loaders of a study: validation, test, unlabeled batches and the students' training sets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose

from monai_im.selftrain.settings import StudyData, StudyProtocol

__all__ = ["StudyLoaders"]


class StudyLoaders:
    """Builds (once) and hands out the datasets and loaders of a study.

    Args:
        data: the datalist, transforms, workers and cache rate.
        protocol: the batch sizes (``batch_size`` for training and unlabeled batches, ``eval_batch_size``
            for validation and test).
    """

    def __init__(self, data: StudyData, protocol: StudyProtocol) -> None:
        self.data, self.protocol = data, protocol
        self._val_loader: DataLoader | None = None
        self._test_loader: DataLoader | None = None
        self._unlabeled_ds: CacheDataset | None = None

    def dataset(self, items: Sequence[Mapping[str, Any]], transform: Callable) -> CacheDataset:
        """``items`` through ``transform``, cached up to the first random transform."""
        return CacheDataset(
            list(items),
            transform=transform,
            cache_rate=self.data.cache_rate,
            num_workers=self.data.num_workers,
            progress=False,
        )

    def _eval_loader(self, items: Sequence[Mapping[str, Any]]) -> DataLoader:
        return DataLoader(
            self.dataset(items, self.data.eval_transforms),
            batch_size=self.protocol.eval_batch_size,
            num_workers=self.data.num_workers,
        )

    @property
    def val_loader(self) -> DataLoader:
        """The validation set (``eval_transforms``, ``eval_batch_size``)."""
        if self._val_loader is None:
            self._val_loader = self._eval_loader(self.data.datalist["validation"])
        return self._val_loader

    @property
    def test_loader(self) -> DataLoader | None:
        """The test set, or None when the datalist has none."""
        if self._test_loader is None and self.data.datalist.get("test"):
            self._test_loader = self._eval_loader(self.data.datalist["test"])
        return self._test_loader

    def unlabeled_loader(self, seed: int) -> DataLoader:
        """A shuffled loader over the unlabeled images (``image``), for methods with their own step.

        The images are read and cached once per study; each loader only draws its own order."""
        if self._unlabeled_ds is None:
            items = [{"image": it["image"]} for it in self.data.datalist.get("unlabeled", [])]
            if not items:
                raise ValueError("the datalist has no 'unlabeled' images")
            self._unlabeled_ds = self.dataset(items, self.data.unlabeled_transforms)
        batch_size = self.protocol.batch_size
        return DataLoader(
            self._unlabeled_ds,
            batch_size=batch_size,
            shuffle=True,
            num_workers=self.data.num_workers,
            generator=torch.Generator().manual_seed(seed),
            drop_last=len(self._unlabeled_ds) > batch_size,
        )

    def training_set(self, items: Sequence[Mapping[str, Any]], augmentation: Callable | None) -> CacheDataset:
        """The students' training set: ``train_transforms``, then the method's ``augmentation`` (if any)."""
        transform = self.data.train_transforms
        if augmentation is not None:  # cached up to the first random transform
            transform = Compose([transform, augmentation]).flatten()
        return self.dataset(items, transform)
