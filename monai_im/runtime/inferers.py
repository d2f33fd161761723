"""Inference helpers: whole-image or sliding-window inference, and batched ensembles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_tensor, ensure_tuple_rep

from monai_im.runtime.acceleration import RunSettings

__all__ = ["AdaptiveInferer", "ensemble_predict"]


class AdaptiveInferer(Inferer):
    """Run the network on the whole input when it has the network's input size, else slide a window.

    Images whose spatial size equals ``roi_size`` go through the network in one call; any other
    size (larger, smaller or not divisible as the network needs) is handled by MONAI's
    :class:`~monai.inferers.SlidingWindowInferer` with windows of ``roi_size``.

    Args:
        roi_size: the network's input size, e.g. (256, 256).
        sw_batch_size: windows per network call in sliding-window mode.
        overlap: window overlap in sliding-window mode.
        mode: blending of overlapping windows ("constant" or "gaussian").
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 8,
        overlap: float = 0.25,
        mode: str = "gaussian",
    ) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.sliding = SlidingWindowInferer(
            roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode
        )

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs
    ) -> torch.Tensor:
        spatial = tuple(inputs.shape[2:])
        roi = tuple(ensure_tuple_rep(self.roi_size, len(spatial)))
        if spatial == roi:
            return network(inputs, *args, **kwargs)
        return self.sliding(inputs, network, *args, **kwargs)


def ensemble_predict(
    networks: Sequence[torch.nn.Module],
    inputs: torch.Tensor,
    inferer: Callable[[torch.Tensor, Callable], torch.Tensor] | None = None,
    settings: RunSettings | None = None,
) -> torch.Tensor:
    """Logits of every network on the same batch, stacked in float32: (E, B, C, *spatial).

    One call per network on the whole batch (never one call per image).

    Args:
        networks: the ensemble; networks prepared by :meth:`RunSettings.prepare_network` carry their
            own precision and memory format.
        inputs: the batch (B, C, *spatial).
        inferer: how a network is applied (e.g. :class:`AdaptiveInferer`); None = a direct call.
        settings: a policy applied around networks that were not prepared (inference precision and
            memory format of ``inputs``); None runs them as they are.
    """
    run = inferer if inferer is not None else (lambda x, net: net(x))
    context = settings.autocast(inputs.device, training=False) if settings is not None else nullcontext()
    if settings is not None:
        inputs = settings.to_memory_format(inputs)
    with torch.no_grad(), context:
        outs = [run(inputs, net) for net in networks]
    return torch.stack([convert_to_tensor(o, track_meta=False).float() for o in outs])
