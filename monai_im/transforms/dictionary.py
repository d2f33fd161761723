"""
Dictionary wrappers of :mod:`monai_im.transforms.array`: they only pick keys, the array transforms
do the math. All are reachable from bundle JSON, e.g. ``"_target_": "monai_im.transforms.InconsistencyMaskd"``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms.transform import MapTransform
from monai.utils import ensure_tuple

from monai_im.constants import IGNORE_INDEX
from monai_im.transforms.array import (
    AcceptPseudoLabel,
    ApplyInconsistencyMask,
    EnsureNumChannels,
    InconsistencyMask,
)

__all__ = ["InconsistencyMaskd", "ApplyInconsistencyMaskd", "AcceptPseudoLabeld", "EnsureNumChannelsd"]


def _output_keys(keys: tuple[Hashable, ...], out: str | Sequence[str], name: str) -> tuple[Hashable, ...]:
    """One output key per input key: ``out`` itself for one key, ``{key}_{out}`` for several, or a sequence as given."""
    if isinstance(out, str):
        return (out,) if len(keys) == 1 else tuple(f"{key}_{out}" for key in keys)
    out = tuple(out)
    if len(out) != len(keys):
        raise ValueError(
            f"{name} must be one key or one key per input key ({len(keys)}), got {len(out)}: {out}."
        )
    return out


class InconsistencyMaskd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`monai_im.transforms.InconsistencyMask`.

    Reads the stacked teacher predictions (E, C, *spatial) from each key and writes the pseudo-label
    (Cp, *spatial) and the IM (1, *spatial). With one input key the outputs go to
    ``pseudo_label_key`` and ``im_key``; with several keys a string output key becomes the postfix
    ``{key}_{pseudo_label_key}`` / ``{key}_{im_key}``, or sequences with one output key per input
    key can be given. The input predictions are kept.

    Args:
        keys: keys of the stacked predictions.
        pseudo_label_key: output key(s) for the pseudo-labels.
        im_key: output key(s) for the Inconsistency Masks.
        mode: one of ``"binary"``, ``"multiclass"``, ``"multilabel"``.
        threshold: foreground threshold for the binary and multilabel modes, in (0, 1).
        dilation: kernel size of the IM dilation; 0 or 1 = none.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.
    """

    backend = InconsistencyMask.backend

    def __init__(
        self,
        keys: KeysCollection = "pred",
        pseudo_label_key: str | Sequence[str] = "pseudo_label",
        im_key: str | Sequence[str] = "im",
        mode: str = "binary",
        threshold: float = 0.5,
        dilation: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.pseudo_label_keys = _output_keys(self.keys, pseudo_label_key, "pseudo_label_key")
        self.im_keys = _output_keys(self.keys, im_key, "im_key")
        if set(self.pseudo_label_keys) & set(self.im_keys):
            raise ValueError(
                f"pseudo-label keys {self.pseudo_label_keys} and IM keys {self.im_keys} must be different."
            )
        self.converter = InconsistencyMask(mode=mode, threshold=threshold, dilation=dilation)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, pseudo_label_key, im_key in self.key_iterator(d, self.pseudo_label_keys, self.im_keys):
            d[pseudo_label_key], d[im_key] = self.converter(d[key])
        return d


class ApplyInconsistencyMaskd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`monai_im.transforms.ApplyInconsistencyMask`.

    Cuts the IM stored at ``im_key`` out of every image key (set to ``fill_value``) and every label
    key (according to ``policy``). When ``allow_missing_keys=True`` and the IM key is absent, e.g. a
    labeled image in a mix of labeled and pseudo-labeled data, the dictionary passes through
    unchanged. Applying it twice gives the same result as once.

    Args:
        image_keys: keys of the images (C, *spatial).
        label_keys: keys of the labels (C', *spatial); None or empty for none.
        im_key: key of the Inconsistency Mask (1, *spatial).
        policy: one of ``"ignore"``, ``"background"``, ``"im_class"``.
        fill_value: image value inside the IM.
        ignore_index: label value inside the IM for the ``"ignore"`` policy.
        im_class: label class inside the IM for the ``"im_class"`` policy.
        allow_missing_keys: skip missing image/label keys and pass through data without an IM.
    """

    backend = ApplyInconsistencyMask.backend

    def __init__(
        self,
        image_keys: KeysCollection = "image",
        label_keys: KeysCollection | None = "label",
        im_key: str = "im",
        policy: str = "background",
        fill_value: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        im_class: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        self.image_keys = ensure_tuple(image_keys) if image_keys is not None else ()
        self.label_keys = ensure_tuple(label_keys) if label_keys is not None else ()
        super().__init__(self.image_keys + self.label_keys, allow_missing_keys)
        if im_key in self.keys:
            raise ValueError(f"im_key {im_key!r} must differ from the image and label keys {self.keys}.")
        self.im_key = im_key
        self.masker = ApplyInconsistencyMask(
            policy=policy, fill_value=fill_value, ignore_index=ignore_index, im_class=im_class
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.im_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(
                f"IM key `{self.im_key}` of transform `{self.__class__.__name__}` was missing in the data "
                "and allow_missing_keys==False."
            )
        im = d[self.im_key]
        is_label = [False] * len(self.image_keys) + [True] * len(self.label_keys)
        for key, label in self.key_iterator(d, is_label):
            d[key] = self.masker.apply_label(d[key], im) if label else self.masker.apply_image(d[key], im)
        return d


class AcceptPseudoLabeld(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`monai_im.transforms.AcceptPseudoLabel`.

    Reads the pseudo-label and the IM, and stores the decision (a Python ``bool``) at ``accept_key``.
    When ``allow_missing_keys=True`` and either input is absent, the dictionary passes through unchanged.

    Args:
        pseudo_label_key: key of the pseudo-label (Cp, *spatial).
        im_key: key of the Inconsistency Mask (1, *spatial).
        accept_key: output key of the decision.
        mode: one of ``"binary"``, ``"multiclass"``, ``"multilabel"``.
        min_foreground: minimum number of foreground pixels (0 switches it off).
        foreground_exceeds_im: whether the foreground area must be larger than the IM area.
        max_im_fraction: largest accepted fraction of IM pixels, or None.
        allow_missing_keys: pass through data without a pseudo-label or IM.
    """

    backend = AcceptPseudoLabel.backend

    def __init__(
        self,
        pseudo_label_key: str = "pseudo_label",
        im_key: str = "im",
        accept_key: str = "accepted",
        mode: str = "binary",
        min_foreground: int = 1,
        foreground_exceeds_im: bool = True,
        max_im_fraction: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__((pseudo_label_key, im_key), allow_missing_keys)
        self.pseudo_label_key = pseudo_label_key
        self.im_key = im_key
        self.accept_key = accept_key
        self.acceptor = AcceptPseudoLabel(
            mode=mode,
            min_foreground=min_foreground,
            foreground_exceeds_im=foreground_exceeds_im,
            max_im_fraction=max_im_fraction,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = list(self.key_iterator(d))
        if len(present) < len(self.keys):  # only reached with allow_missing_keys=True
            return d
        d[self.accept_key] = self.acceptor(d[self.pseudo_label_key], d[self.im_key])
        return d


class EnsureNumChannelsd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`monai_im.transforms.EnsureNumChannels`.

    Args:
        keys: keys of the channel-first images.
        num_channels: the number of channels wanted.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.
    """

    backend = EnsureNumChannels.backend

    def __init__(self, keys: KeysCollection, num_channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureNumChannels(num_channels)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
