"""Training iterations of the semi-supervised methods, for MONAI's ``SupervisedTrainer(iteration_update=...)``.

:class:`TrainingStep` is the one step skeleton every method's iteration runs: MONAI's supervised step
written against the trainer's public attributes (``prepare_batch``, ``network``, ``inferer``,
``loss_function``, ``optimizer``, ``amp``/``scaler``, ``accumulation_steps``, ``optim_set_to_none``) and
its ``IterationEvents``, with hooks for the parts a method changes: its loss, the unlabeled batch it
fetches, extra networks and optimizers, and what happens after the optimizer step.
:class:`UnlabeledBatches` cycles an unlabeled loader endlessly and saves its position.

:class:`ConsistencyIteration` is the paper's Consistency Loss: a supervised loss on the labeled batch plus
the mean squared error between the predictions on two random photometric views (:func:`photometric_views`)
of an unlabeled batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor
from torch import Tensor

__all__ = ["TrainingStep", "UnlabeledBatches", "ConsistencyIteration", "photometric_views", "ACTIVATIONS"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=1),
    "none": lambda x: x,
}


def photometric_views(
    generator: torch.Generator, brightness: float = 0.2, contrast: float = 0.2, noise: float = 0.05
) -> Callable[[Tensor], Tensor]:
    """A function making one random photometric view of a batch of images in [0, 1].

    Per image (vectorised over the batch): contrast around the image mean by a factor drawn from
    ``[1 - contrast, 1 + contrast]``, a brightness shift drawn from ``[-brightness, brightness]``, then
    Gaussian noise of standard deviation ``noise`` per element; the result is clipped to [0, 1].
    All random numbers come from ``generator`` (on its device), so a seeded generator gives the
    same sequence of views.

    Args:
        generator: the source of randomness, e.g. ``torch.Generator().manual_seed(0)``.
        brightness: the largest brightness shift (>= 0).
        contrast: the largest relative contrast change, 0..1.
        noise: the noise standard deviation (>= 0).
    """
    if brightness < 0 or noise < 0 or not 0 <= contrast <= 1:
        raise ValueError(
            f"photometric_views: need brightness >= 0, 0 <= contrast <= 1 and noise >= 0, got "
            f"brightness={brightness}, contrast={contrast}, noise={noise}."
        )

    def view(images: Tensor) -> Tensor:
        """One random view of ``images`` (B, C, *spatial)."""
        images = convert_to_tensor(images, track_meta=False)
        per_image = (images.shape[0],) + (1,) * (images.ndim - 1)

        def draw(shape: tuple[int, ...], normal: bool = False) -> Tensor:
            rand = torch.randn if normal else torch.rand
            values = rand(shape, generator=generator, device=generator.device)
            return values.to(device=images.device, dtype=images.dtype)

        factor = 1 + contrast * (2 * draw(per_image) - 1)
        shift = brightness * (2 * draw(per_image) - 1)
        mean = images.mean(dim=tuple(range(1, images.ndim)), keepdim=True)
        out = (images - mean) * factor + mean + shift
        if noise > 0:
            out = out + noise * draw(tuple(images.shape), normal=True)
        return out.clamp(0.0, 1.0)

    view.generator = generator  # its random state is saved and restored by epoch checkpoints
    return view


class TrainingStep:
    """MONAI's supervised training step, on the trainer's public attributes, with hooks for a method's loss.

    Use it (or a subclass) as ``SupervisedTrainer(..., iteration_update=step)``. One call does what
    ``SupervisedTrainer``'s own step does, in the same order: ``engine.prepare_batch`` on the batch (plain
    tensors for a compiled network), the networks in training mode, ``zero_grad`` (``optim_set_to_none``)
    and the optimizer step following ``engine.accumulation_steps``, the forward pass
    ``engine.inferer(inputs, engine.network)`` and the loss under ``torch.autocast`` with
    ``engine.amp_kwargs`` and the backward pass through ``engine.scaler`` when ``engine.amp`` made one, and
    the events ``IterationEvents.FORWARD_COMPLETED`` (after the labeled forward pass), ``LOSS_COMPLETED``,
    ``BACKWARD_COMPLETED`` and ``MODEL_COMPLETED`` through ``engine.fire_event``. ``engine.state.output``
    holds ``Keys.IMAGE``, ``Keys.LABEL``, ``Keys.PRED`` and ``Keys.LOSS``, plus the parts :meth:`loss` returns.
    Without overrides it is MONAI's supervised step: ``loss = engine.loss_function(pred, label).mean()``.

    Hooks of a subclass: :meth:`loss` (the method's total loss), :meth:`prepare` (e.g. fetch an unlabeled
    batch), :meth:`networks` and :meth:`optimizers` (a second network), :meth:`after_step` (e.g. an EMA
    update after the optimizers stepped).
    """

    def prepare(self, engine: SupervisedTrainer) -> None:
        """Called when the labeled batch is on the device, before the networks run."""

    def networks(self, engine: SupervisedTrainer) -> list[torch.nn.Module]:
        """The networks trained by the step (put in training mode)."""
        return [engine.network]

    def optimizers(self, engine: SupervisedTrainer) -> list[torch.optim.Optimizer]:
        """The optimizers zeroed and stepped by the step."""
        return [engine.optimizer]

    def loss(
        self, engine: SupervisedTrainer, pred: Tensor, inputs: Tensor, targets: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss of the step, and the (detached) parts to put beside it in ``engine.state.output``.

        Args:
            engine: the trainer.
            pred: the prediction of ``engine.network`` on ``inputs`` (the labeled batch).
            inputs: the labeled images.
            targets: their labels.
        """
        return engine.loss_function(pred, targets).mean(), {}

    def after_step(self, engine: SupervisedTrainer) -> None:
        """Called after the optimizers stepped (not on accumulation-only iterations)."""

    @staticmethod
    def accumulation(engine: SupervisedTrainer) -> tuple[int, bool, bool]:
        """(accumulation steps, zero the gradients now, step the optimizers now), as MONAI decides them."""
        acc = int(getattr(engine, "accumulation_steps", 1) or 1)
        if acc <= 1:
            return 1, True, True
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local = (engine.state.iteration - 1) % epoch_length
            return acc, local % acc == 0, (local + 1) % acc == 0 or local + 1 == epoch_length
        local = engine.state.iteration - 1
        return acc, local % acc == 0, (local + 1) % acc == 0

    def __call__(self, engine: SupervisedTrainer, batchdata: Any) -> Any:
        """One training step on the labeled ``batchdata``; returns ``engine.state.output``.

        Args:
            engine: the ``SupervisedTrainer`` running this iteration.
            batchdata: the labeled batch.
        """
        if batchdata is None:
            raise ValueError(f"{type(self).__name__}: must provide batch data for the current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        if getattr(engine, "compile", False):  # a compiled network gets plain tensors
            inputs = convert_to_tensor(inputs, track_meta=False)
            targets = convert_to_tensor(targets, track_meta=False)
        self.prepare(engine)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        acc, zero_grad, step = self.accumulation(engine)
        optimizers = self.optimizers(engine)
        for net in self.networks(engine):
            net.train()
        if zero_grad:
            for opt in optimizers:
                opt.zero_grad(set_to_none=engine.optim_set_to_none)
        use_scaler = engine.amp and engine.scaler is not None
        with torch.autocast("cuda", **engine.amp_kwargs) if use_scaler else nullcontext():
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss, parts = self.loss(engine, pred, inputs, targets)
            engine.state.output[Keys.LOSS] = loss
            engine.state.output.update(parts)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaled = loss / acc if acc > 1 else loss
        (engine.scaler.scale(scaled) if use_scaler else scaled).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step:
            for opt in optimizers:
                if use_scaler:
                    engine.scaler.step(opt)
                else:
                    opt.step()
            if use_scaler:
                engine.scaler.update()
            self.after_step(engine)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class UnlabeledBatches:
    """The image batches of an unlabeled loader, cycled endlessly: when the loader is exhausted it is
    iterated again (a shuffling loader reshuffles). Its position is saved and restored (:meth:`state_dict`).

    Args:
        loader: batches of unlabeled images: dicts with ``image_key``, or tensors, or sequences whose first
            element is the image batch.
        image_key: the image key of dict batches.
        owner: the name used in error messages.
    """

    def __init__(self, loader: Iterable, image_key: str = "image", owner: str = "UnlabeledBatches") -> None:
        self.loader, self.image_key, self.owner = loader, image_key, owner
        self._iterator: Iterator | None = None
        self._pass_start: Tensor | None = None  # the loader generator's state when the pass began
        self._served = 0  # batches served in the current pass
        self._skip = 0  # batches to skip when a restored pass is started again

    def _start_pass(self) -> None:
        generator = getattr(self.loader, "generator", None)
        self._pass_start = generator.get_state() if isinstance(generator, torch.Generator) else None
        self._iterator = iter(self.loader)
        self._served = 0
        for _ in range(self._skip):  # replay a restored pass up to where it was (same order, same batches)
            next(self._iterator)
            self._served += 1
        self._skip = 0

    def next(self) -> Tensor:
        """The next unlabeled image batch, starting the loader again when it is exhausted."""
        for attempt in range(2):
            if self._iterator is None:
                self._start_pass()
            try:
                batch = next(self._iterator)
                self._served += 1
                break
            except StopIteration:
                self._iterator = None
                if attempt:
                    raise ValueError(f"{self.owner}: the unlabeled loader yields no batches.") from None
        if isinstance(batch, dict):
            if self.image_key not in batch:
                raise KeyError(
                    f"{self.owner}: unlabeled batch has no key {self.image_key!r}, keys: {sorted(batch)}."
                )
            batch = batch[self.image_key]
        elif isinstance(batch, (list, tuple)):
            batch = batch[0]
        return convert_to_tensor(batch, track_meta=False)

    def state_dict(self) -> dict[str, Any]:
        """The position in the unlabeled data: the loader generator's state when the pass began and the
        batches served since."""
        return {
            "pass_start": self._pass_start if self._iterator is not None else None,
            "served": self._served if self._iterator is not None else 0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the pass is replayed to the same batch (when the loader has its
        own generator; else the next batch starts a new pass)."""
        self._iterator = None
        generator = getattr(self.loader, "generator", None)
        if state.get("pass_start") is not None and isinstance(generator, torch.Generator):
            generator.set_state(state["pass_start"])
            self._skip = int(state.get("served", 0))
            self._start_pass()


class ConsistencyIteration(TrainingStep):
    """One step = a supervised loss on the labeled batch + ``weight`` * the MSE between the (activated)
    predictions of two photometric views of an unlabeled batch (the paper's Consistency Loss).

    Use it as ``SupervisedTrainer(..., iteration_update=ConsistencyIteration(unlabeled_loader))``. It is a
    :class:`TrainingStep` (MONAI's supervised step and events) whose loss adds the consistency term. Both
    unlabeled views go through the network in one call and both carry gradients (a symmetric consistency
    loss). The unlabeled loader is cycled endlessly (:class:`UnlabeledBatches`).

    ``engine.state.output`` holds ``Keys.IMAGE``, ``Keys.LABEL``, ``Keys.PRED`` (of the labeled batch),
    ``Keys.LOSS`` (the total loss), and the detached parts ``"supervised_loss"`` and
    ``"consistency_loss"``, with ``loss == supervised_loss + weight * consistency_loss``.

    Args:
        unlabeled_loader: batches of unlabeled images: dicts with ``image_key``, or tensors, or
            sequences whose first element is the image batch.
        views: a function making one random view of a batch; None = :func:`photometric_views` with a
            generator seeded by ``seed``.
        weight: the weight of the consistency loss (>= 0).
        activation: applied to the logits before the MSE: "sigmoid" (binary / multi-label),
            "softmax" (multi-class, over channels) or "none".
        image_key: the image key of dict batches of ``unlabeled_loader``.
        seed: the seed of the default views (ignored when ``views`` is given).
    """

    def __init__(
        self,
        unlabeled_loader: Iterable,
        views: Callable[[Tensor], Tensor] | None = None,
        weight: float = 1.0,
        activation: str = "sigmoid",
        image_key: str = "image",
        seed: int = 0,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"ConsistencyIteration: activation {activation!r} is not one of {sorted(ACTIVATIONS)}."
            )
        if not weight >= 0:
            raise ValueError(f"ConsistencyIteration: weight must be >= 0, got {weight}.")
        self.unlabeled_loader = unlabeled_loader
        self.unlabeled = UnlabeledBatches(unlabeled_loader, image_key, owner="ConsistencyIteration")
        self.views = views if views is not None else photometric_views(torch.Generator().manual_seed(seed))
        self.weight = float(weight)
        self.activation = activation
        self.image_key = image_key
        self._batch: Tensor | None = None  # the unlabeled batch of the current step

    def next_unlabeled(self) -> Tensor:
        """The next unlabeled image batch, starting the loader again when it is exhausted."""
        return self.unlabeled.next()

    def state_dict(self) -> dict[str, Any]:
        """Where the step stands: its position in the unlabeled data and the state of its random views."""
        views = getattr(self.views, "generator", None)
        return {
            **self.unlabeled.state_dict(),
            "views": views.get_state() if isinstance(views, torch.Generator) else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the pass over the unlabeled data is replayed to the same batch
        (when the loader has its own generator), the views continue their random sequence."""
        views = getattr(self.views, "generator", None)
        if state.get("views") is not None and isinstance(views, torch.Generator):
            views.set_state(state["views"])
        self.unlabeled.load_state_dict(state)

    def consistency_loss(self, engine: SupervisedTrainer, unlabeled: Tensor) -> Tensor:
        """The MSE between the activated predictions of two views of ``unlabeled``, one network call."""
        first, second = self.views(unlabeled), self.views(unlabeled)
        logits = engine.inferer(torch.cat([first, second]), engine.network)
        probs = ACTIVATIONS[self.activation](convert_to_tensor(logits, track_meta=False).float())
        pred_first, pred_second = probs.chunk(2)
        return torch.nn.functional.mse_loss(pred_first, pred_second)

    def prepare(self, engine: SupervisedTrainer) -> None:  # noqa: D102
        self._batch = self.next_unlabeled().to(engine.state.device, non_blocking=engine.non_blocking)

    def loss(  # noqa: D102
        self, engine: SupervisedTrainer, pred: Tensor, inputs: Tensor, targets: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        supervised, _ = super().loss(engine, pred, inputs, targets)
        consistency = self.consistency_loss(engine, self._batch)
        total = supervised + self.weight * consistency
        return total, {"supervised_loss": supervised.detach(), "consistency_loss": consistency.detach()}
