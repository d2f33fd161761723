"""EvalNet: a two-stream CNN that regresses the IoU of an (image, mask) pair.

Following the structure of the paper's code (``f(c) = int(c * alpha)``)::

    image stream  1x1 conv f(16) + act, norm; 3x3 conv f(16) + act, 1x1 conv f(16) + act, norm, 2x max-pool
    mask stream   the same, on the mask
    trunk         concatenate (2 f(16) channels), then five blocks of
                  3x3 conv + act, 1x1 conv + act, norm, 2x max-pool with widths f(16), f(32), f(64),
                  f(128), f(256)
    head          global average pooling, linear layer to ``out_channels``, sigmoid

The six poolings need every spatial size to be at least 64 (256 x 256 in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Pool

from monai_im.networks.unet import ConvPair, PointwiseBlock, init_he_normal, scaled_width

__all__ = ["EvalNet"]


class EvalNet(nn.Module):
    """Predict the segmentation quality (IoU) of ``mask`` for ``image``.

    Used to filter (EvalNet) or weight (IM++) pseudo-labels: trained on teacher predictions
    on the labeled set with their true IoU as target (ground-truth masks as 1.0), then applied
    to the pseudo-labels of the unlabeled set.

    Args:
        spatial_dims: 2 or 3.
        image_channels: channels of the image (3 RGB, 1 grey), values in [0, 1].
        mask_channels: channels of the mask (1 binary; C for multi-label or one-hot masks).
        alpha: width factor (1 for ISIC 2018 in the paper, 2 for the other datasets).
        out_channels: number of predicted scores (1: the IoU of the mask; C: one per channel).
        stream_features: base width of each input stream.
        features: base widths of the trunk blocks after the concatenation; each block ends
            with a 2x max-pool.
        kernel_size: size of the spatial convolutions.
        act: activation after every convolution, MONAI ``Act`` name or ``(name, kwargs)``.
        norm: normalisation at the end of each block, MONAI ``Norm`` name or ``(name, kwargs)``.
        sigmoid: apply the sigmoid to the output (scores in [0, 1]); ``False`` returns logits,
            e.g. for ``BCEWithLogitsLoss``.
        he_normal_init: initialise like Keras (convolutions ``he_normal``, the linear head
            ``glorot_uniform``), as the paper's code does.

    ``forward(image, mask)`` returns ``(B, out_channels)``.

    The constructor's keywords are a MONAI network's (``spatial_dims``, ``act``, ``norm``, ...), set by name
    from the bundles' configs; they stay flat, as in :mod:`monai.networks.nets`.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        image_channels: int = 3,
        mask_channels: int = 1,
        alpha: float = 1.0,
        out_channels: int = 1,
        stream_features: int = 16,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        kernel_size: int = 3,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = ("batch", {}),
        sigmoid: bool = True,
        he_normal_init: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(features) < 1:
            raise ValueError("features must name at least one trunk block")
        self.spatial_dims = spatial_dims
        self.image_channels = image_channels
        self.mask_channels = mask_channels
        self.sigmoid = sigmoid
        self.min_size = 2 ** (len(features) + 1)
        pool = Pool[Pool.MAX, spatial_dims]
        fs = scaled_width(stream_features, alpha)

        def stream(cin: int) -> nn.Sequential:
            return nn.Sequential(
                PointwiseBlock(spatial_dims, cin, fs, act, norm),
                ConvPair(spatial_dims, fs, fs, fs, kernel_size, act, norm),
                pool(kernel_size=2),
            )

        self.image_stream = stream(image_channels)
        self.mask_stream = stream(mask_channels)
        blocks: list[nn.Module] = []
        cin = 2 * fs
        for f in features:
            cout = scaled_width(f, alpha)
            blocks += [ConvPair(spatial_dims, cin, cout, cout, kernel_size, act, norm), pool(kernel_size=2)]
            cin = cout
        self.trunk = nn.Sequential(*blocks)
        self.gap = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.head = nn.Linear(cin, out_channels)
        if he_normal_init:
            self.apply(init_he_normal)
            nn.init.xavier_uniform_(self.head.weight)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Score ``mask`` (B, mask_channels, *spatial) for ``image`` (B, image_channels, *spatial).

        Raises:
            ValueError: mismatched batch or spatial shapes, or a spatial size below the minimum.
        """
        if (
            image.dim() != self.spatial_dims + 2
            or image.shape[0] != mask.shape[0]
            or image.shape[2:] != mask.shape[2:]
        ):
            raise ValueError(
                "EvalNet expects image (B, C, *spatial) and mask (B, Cm, *spatial) with the same B and spatial size, got "
                + str(list(image.shape))
                + " and "
                + str(list(mask.shape))
            )
        for size in image.shape[2:]:
            if size < self.min_size:
                raise ValueError(
                    "EvalNet needs every spatial size >= "
                    + str(self.min_size)
                    + ", got input shape "
                    + str(list(image.shape))
                )
        x = torch.cat([self.image_stream(image), self.mask_stream(mask)], dim=1)
        x = torch.flatten(self.gap(self.trunk(x)), 1)
        x = self.head(x)
        if self.sigmoid:
            x = torch.sigmoid(x)
        return x
