"""One speed policy for every place a network runs: precision, memory format and compilation.

:class:`RunSettings` decides, per device and per use (training or inference), the autocast dtype, the
memory format of networks and inputs, and whether ``torch.compile`` is tried. Training, validation,
testing, pseudo-labelling and bundle inference all use it through :meth:`RunSettings.prepare_network`,
which makes the network apply the policy in its own forward pass: whatever engine, inferer or sliding
window calls the network, the policy holds, and the state dict (checkpoints) is unchanged.

Defaults and why:

- ``channels_last=True``: the same numbers (up to float rounding), about 2x faster convolutions on CPU.
- ``inference_precision="auto"``: bfloat16 autocast on CPUs with native bfloat16 (AVX512-BF16/AMX)
  and on CUDA devices that support it (else float16); float32 elsewhere. Pseudo-labels and masks
  change on a small fraction of border pixels only (the tests bound it), for several times the speed.
- ``precision="auto"`` (training): float32 on CPU, because bfloat16 training was measured slower than
  channels_last float32 on CPU and it changes the optimisation; bfloat16 (or float16 with a gradient
  scaler) on CUDA, as mixed precision training is standard there.
- ``compile=False``: compilation costs a warm-up (logged) and needs a working C compiler; when it is
  asked for and fails, the network runs eagerly after one warning.
- ``reuse_cpu_memory=True``: on Linux with glibc, freed blocks of up to 1 GiB stay in the process's heap
  for the next allocation instead of going back to the operating system (:func:`reuse_freed_cpu_memory`).
  By default glibc maps every block above its mmap threshold (at most 32 MiB) freshly and unmaps it
  when freed, so each forward pass faults the pages of its large activations in again, zero-filled by the
  kernel: at 256 x 256 that was half of a teacher's forward pass and a third of a training step on the
  2-core test machine. The numbers computed are the same; the process keeps its peak memory.

Why the policy lives in the network's forward pass (and not in MONAI's ``amp`` arguments):

- MONAI 1.6.1's engines apply their precision as ``torch.autocast("cuda", **amp_kwargs)``
  (``SupervisedTrainer`` and ``SupervisedEvaluator``): the device type is fixed, so
  ``amp_kwargs={"device_type": "cpu", ...}`` is a ``TypeError`` (two values for ``device_type``), and
  ``amp=True`` on a CPU is a CUDA autocast that torch disables with a warning (plus a disabled CUDA
  gradient scaler). Validation would then run in float32 instead of the bfloat16 of the inference
  policy: slower, and validation metrics (hence best epochs and checkpoints) would change. On CUDA,
  :meth:`RunSettings.trainer_amp` does use MONAI's ``amp`` where its gradient scaler is needed.
- networks also run outside the engines (the pseudo-labeller, sliding-window inferers, EvalNet, bundle
  inference); one forward pass keeps one policy for all of them.
- the plain-torch route itself is not the obstacle: for the pseudo-labeller's work (3 IMUNet teachers,
  a batch of 32x3x256x256, bfloat16 autocast, channels_last) ``network.to(memory_format=channels_last)``,
  ``contiguous(memory_format=channels_last)`` inputs and one ``torch.autocast("cpu", dtype=bfloat16)``
  gave bit-identical logits, and the same speed within the noise of the shared 2-core test machine:
  per-round CPU-time ratio plain / patched, median 1.09 (8 interleaved rounds) and 0.94 (12 rounds),
  single rounds from 0.6 to 1.7 (``benchmarks/speed_policy_route.py``). The speed did not decide it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["RunSettings", "PRECISIONS", "cpu_supports_bf16", "reuse_freed_cpu_memory"]

logger = logging.getLogger("monai_im")

#: Accepted values of ``precision`` and ``inference_precision``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively through oneDNN (AVX512-BF16 or AMX)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=1)
def _cpu_supports_fp16() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size are kept in the heap when freed (larger ones are still mapped and unmapped)
REUSE_CPU_MEMORY_BYTES = 1 << 30


@functools.lru_cache(maxsize=1)
def reuse_freed_cpu_memory() -> bool:
    """Make this process's C allocator keep freed blocks of up to 1 GiB for reuse; True when done.

    Sets glibc's ``M_MMAP_THRESHOLD`` to :data:`REUSE_CPU_MEMORY_BYTES` (blocks below it come from the
    heap, not from fresh mappings) and ``M_TRIM_THRESHOLD`` to just under twice that, the largest C int
    (free memory at the top of the heap is given back to the system only beyond it). Process-wide, once, and only where it is known to
    work: Linux with glibc. Elsewhere (macOS, Windows, musl) nothing changes and False is returned.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt ignores these
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, REUSE_CPU_MEMORY_BYTES) == 1
    done = mallopt(_M_TRIM_THRESHOLD, 2 * REUSE_CPU_MEMORY_BYTES - 1) == 1 and done
    if done:
        logger.debug(
            "C allocator: freed blocks up to %d MiB are kept for reuse", REUSE_CPU_MEMORY_BYTES >> 20
        )
    return done


@dataclass
class RunSettings:
    """How networks run: autocast precision, memory format and optional ``torch.compile``.

    Args:
        precision: autocast precision of training forward passes: ``"auto"`` (float32 on CPU,
            bfloat16 or else float16 on CUDA), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (float16 training is
            CUDA only: it needs a gradient scaler, which :meth:`trainer_amp` asks MONAI's trainer for).
        inference_precision: autocast precision of validation, test, pseudo-labelling and inference:
            ``"auto"`` (bfloat16 where the device supports it natively, float16 on older CUDA devices,
            float32 otherwise), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: networks and inputs in channels_last (``channels_last_3d`` for volumes).
        compile: try ``torch.compile`` on each prepared network; a failure at the first call is warned
            about once and the network runs eagerly from then on.
        compile_kwargs: arguments of ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).
        reuse_cpu_memory: when a network is prepared for the CPU, let the process keep freed memory
            for reuse (:func:`reuse_freed_cpu_memory`; Linux with glibc, process-wide, cannot be undone).

    A precision the device cannot run (e.g. ``"bf16"`` on a CPU without bfloat16) falls back to float32
    with a warning, so that a bundle moved to another machine still runs.
    """

    precision: str = "auto"
    inference_precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    compile_kwargs: Mapping[str, Any] | None = None
    reuse_cpu_memory: bool = True
    _compile_failed: bool = field(default=False, init=False, repr=False, compare=False)
    _warned: set = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("precision", "inference_precision"):
            value = getattr(self, name)
            if value not in PRECISIONS:
                raise ValueError(f"RunSettings {name}={value!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("channels_last", "compile", "reuse_cpu_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RunSettings {name} must be true or false, got {getattr(self, name)!r}")

    # ------------------------------------------------------------------ precision
    def dtype(self, device: torch.device | str, training: bool) -> torch.dtype | None:
        """The autocast dtype of a training (or inference) forward pass on ``device``; None = float32."""
        dev = torch.device(device).type
        request = self.precision if training else self.inference_precision
        if request == "fp32":
            return None
        if dev == "cuda":
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            if request == "auto":
                return torch.bfloat16 if bf16 else torch.float16
            if request == "bf16" and not bf16:
                self._warn_once(f"bf16 is not supported by this CUDA device: {request} -> fp16")
                return torch.float16
            return _DTYPES[request]
        if dev == "cpu":
            if request == "auto":
                return torch.bfloat16 if (not training and cpu_supports_bf16()) else None
            if request == "fp16" and training:
                self._warn_once("fp16 training needs a gradient scaler (CUDA only): training runs in fp32")
                return None
            supported = cpu_supports_bf16() if request == "bf16" else _cpu_supports_fp16()
            if not supported:
                self._warn_once(
                    f"this CPU has no native {request}: {'training' if training else 'inference'} "
                    "runs in fp32"
                )
                return None
            return _DTYPES[request]
        if request != "auto" and torch.amp.is_autocast_available(dev):
            return _DTYPES[request]
        if request != "auto":
            self._warn_once(f"no {request} autocast on device type {dev!r}: running in fp32")
        return None

    def describe(self, device: torch.device | str) -> dict[str, Any]:
        """The resolved policy on ``device`` (for logs and tracking)."""

        def name(dtype: torch.dtype | None) -> str:
            return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

        return {
            "train_precision": name(self.dtype(device, training=True)),
            "inference_precision": name(self.dtype(device, training=False)),
            "channels_last": self.channels_last,
            "compile": self.compile,
            "reuse_cpu_memory": self.reuse_cpu_memory and torch.device(device).type == "cpu",
        }

    def uses_grad_scaler(self, device: torch.device | str) -> bool:
        """Whether training needs a gradient scaler (float16 training on CUDA)."""
        return torch.device(device).type == "cuda" and self.dtype(device, training=True) == torch.float16

    def trainer_amp(self, device: torch.device | str) -> dict[str, Any]:
        """``amp``/``amp_kwargs`` of MONAI's ``SupervisedTrainer``.

        A prepared network casts its own forward pass; MONAI's ``amp`` is switched on only where its
        gradient scaler is needed (float16 training on CUDA), with the same dtype.
        """
        if self.uses_grad_scaler(device):
            return {"amp": True, "amp_kwargs": {"dtype": torch.float16}}
        return {"amp": False}

    @contextlib.contextmanager
    def autocast(self, device: torch.device | str, training: bool) -> Iterator[None]:
        """Autocast to the policy's dtype for a training or inference forward pass; a no-op for float32.

        Float32 leaves an autocast already active around it in place (it does not switch it off).
        """
        dtype = self.dtype(device, training)
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
            yield

    # ------------------------------------------------------------------ memory format
    def to_memory_format(self, tensor: Any) -> Any:
        """``tensor`` in channels_last (4D) or channels_last_3d (5D) when the policy asks for it; other
        tensors and non-tensors are returned unchanged."""
        if not (self.channels_last and isinstance(tensor, torch.Tensor)):
            return tensor
        if tensor.dim() == 4:
            return tensor.contiguous(memory_format=torch.channels_last)
        if tensor.dim() == 5:
            return tensor.contiguous(memory_format=torch.channels_last_3d)
        return tensor

    # ------------------------------------------------------------------ networks
    def prepare_network(self, network: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
        """Move ``network`` to ``device`` and make its forward pass follow this policy (in place).

        The forward pass converts tensor inputs to the memory format, runs under :meth:`autocast` with
        the training precision while the network is in training mode and the inference precision
        otherwise, optionally through ``torch.compile``, and returns contiguous float32 outputs. The
        parameters and the state dict keep their names, so checkpoints load either way. Preparing a
        network again with other settings or another device replaces the previous policy.

        Returns:
            ``network`` itself.
        """
        device = torch.device(device)
        if device.type == "cpu" and self.reuse_cpu_memory:
            reuse_freed_cpu_memory()
        network = network.to(device)
        if self.channels_last:
            dims = {p.dim() for p in network.parameters() if p.dim() in (4, 5)}
            if dims == {4}:
                network = network.to(memory_format=torch.channels_last)
            elif dims == {5}:
                network = network.to(memory_format=torch.channels_last_3d)
        current = network.__dict__.get("forward")
        if not (
            isinstance(current, _PolicyForward) and current.settings is self and current.device == device
        ):
            network.forward = _PolicyForward(network, self, device)
        return network

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)


class _PolicyForward:
    """The forward pass of a prepared network (an instance attribute replacing the class's ``forward``)."""

    def __init__(self, module: torch.nn.Module, settings: RunSettings, device: torch.device) -> None:
        self.module = module
        self.settings = settings
        self.device = device
        self.compiled: Any = None
        self.compile_seconds: float | None = None  # the first compiled call (compilation warm-up)

    def eager(self, *args: Any, **kwargs: Any) -> Any:
        return type(self.module).forward(self.module, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(self.settings.to_memory_format(a) for a in args)
        training = self.module.training
        with self.settings.autocast(self.device, training):
            out = self._compiled(*args, **kwargs) if self._compile_wanted() else self.eager(*args, **kwargs)
        return _float_contiguous(out)

    def _compile_wanted(self) -> bool:
        return self.settings.compile and not self.settings._compile_failed

    def _compiled(self, *args: Any, **kwargs: Any) -> Any:
        from monai.data import MetaTensor

        # compiled graphs take plain tensors (MetaTensor's dispatch breaks the graph); meta comes back after
        meta = next((a for a in args if isinstance(a, MetaTensor)), None)
        plain = tuple(a.as_tensor() if isinstance(a, MetaTensor) else a for a in args)
        first = self.compiled is None
        try:
            if first:
                self.compiled = torch.compile(self.eager, **dict(self.settings.compile_kwargs or {}))
            start = time.perf_counter()
            out = self.compiled(*plain, **kwargs)
        except Exception as err:  # no compiler, no inductor backend, unsupported op, ...
            out = self.eager(*args, **kwargs)  # raises itself when the inputs are at fault
            self.settings._compile_failed = True
            self.settings._warn_once(
                f"torch.compile failed, networks run eagerly: {type(err).__name__}: {str(err).splitlines()[0]}"
            )
            return out
        if first:
            self.compile_seconds = time.perf_counter() - start
            logger.info(f"torch.compile warm-up: the first compiled call took {self.compile_seconds:.1f} s")
        if meta is not None and isinstance(out, torch.Tensor):
            out = MetaTensor(out, meta=meta.meta, applied_operations=meta.applied_operations)
        return out


def _float_contiguous(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        out = out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
        return out.contiguous()
    if isinstance(out, (list, tuple)):
        return type(out)(_float_contiguous(o) for o in out)
    if isinstance(out, dict):
        return {k: _float_contiguous(v) for k, v in out.items()}
    return out
