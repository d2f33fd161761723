"""Studies spread over processes: one process per GPU (or several on CPU), launched by ``torchrun``.

A :class:`DistributedContext` tells a :class:`~monai_im.selftrain.SelfTrainingStudy` which process it runs in.
The students of a generation are spread over the processes (student ``k`` on rank ``k % world_size``,
with the seed it has in a single process, so with the same weights), each process pseudo-labels a
contiguous shard of the unlabeled set and rank 0 merges the shards; rank 0 alone prepares the output
folder, evaluates the test set, writes the summaries, ``results.json`` and ``model.pt``, and runs the
handlers (MLflow). The processes exchange only small Python objects and files in the shared
``output_dir``: on several nodes that folder must be on a filesystem every node sees.

The processes meet through the key-value store of the ``torchrun`` rendezvous (``MASTER_ADDR``,
``MASTER_PORT``), not through a ``torch.distributed`` process group: every student is trained by one
process alone, and MONAI and ignite handlers change what they do as soon as a default process group
exists (``CheckpointSaver`` saves on rank 0 only, ignite metrics are all-reduced over the processes),
which would drop the other ranks' checkpoints and mix the validation metrics of different students.

The default context is a single process: every method is then a no-op, and a study runs as it always did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "DEFAULT_TIMEOUT"]

logger = logging.getLogger("monai_im")

#: seconds a process waits for the others (a rank may wait for another one's whole student, or the test set)
DEFAULT_TIMEOUT = 24 * 3600.0


class DistributedContext:
    """Which process of a study this is, and how the processes wait for and talk to each other.

    ``DistributedContext()`` is the single-process context (rank 0 of 1): barriers and exchanges do
    nothing. :meth:`from_env` builds the context of a process launched by ``torchrun``.

    Args:
        rank: this process's rank (0 .. world_size - 1); rank 0 is the main process.
        world_size: the number of processes.
        local_rank: this process's rank on its node (its GPU index).
        device: the device of this process; default ``cuda:<local_rank>`` when CUDA is available, else CPU.
        store: the ``torch.distributed.Store`` shared by all processes (required when ``world_size`` > 1);
            barriers and object exchanges go through it, under keys of their own.
    """

    PREFIX = "monai_im/study/"

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        device: str | torch.device | None = None,
        store: Any = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise ValueError(
                f"rank must be in 0..world_size-1 (world_size >= 1), got rank {rank} of {world_size}"
            )
        if world_size > 1 and store is None:
            raise ValueError(f"a context of {world_size} processes needs the store they share")
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.local_rank = int(local_rank)
        if device is None:
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.store = dist.PrefixStore(self.PREFIX, store) if store is not None else None
        self._sequence = 0  # every process makes the same calls in the same order, as with collectives

    @classmethod
    def from_env(
        cls, timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None
    ) -> DistributedContext:
        """The context of this process from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); the single-process context without it.

        The processes connect to the rendezvous store (the ``env://`` rendezvous of
        ``torch.distributed.init_process_group``, without creating a process group). With CUDA each
        process uses ``cuda:LOCAL_RANK``.

        Args:
            timeout: seconds a process waits for the others before the run fails.
            env: the environment to read (default ``os.environ``; the store is always found through it).

        Raises:
            ValueError: ``WORLD_SIZE`` > 1 but ``RANK`` is missing or the variables are not integers, or a
                ``torch.distributed`` process group is already initialised (see the module docstring).
        """
        env = os.environ if env is None else env
        try:
            world_size = int(env.get("WORLD_SIZE", "1"))
            local_rank = int(env.get("LOCAL_RANK", "0"))
            if world_size <= 1:
                return cls(local_rank=local_rank)
            if "RANK" not in env:
                raise ValueError(
                    f"WORLD_SIZE is {world_size} but RANK is not set: launch the run with torchrun"
                )
            rank = int(env["RANK"])
        except ValueError as e:
            if "torchrun" in str(e):
                raise
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {e}") from e
        if dist.is_available() and dist.is_initialized():
            raise ValueError(
                "a torch.distributed process group is initialised: MONAI's CheckpointSaver would keep rank 0's "
                "students only and ignite metrics would mix the ranks' students; do not initialise one for a study"
            )
        cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=float(timeout))))
        store.set_timeout(timedelta(seconds=float(timeout)))
        logger.info(f"process {rank} of {world_size} (local rank {local_rank}) on {device}")
        return cls(rank, world_size, local_rank, device, store=store)

    # ------------------------------------------------------------------ who
    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes the study's summaries and tracks it."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether the study runs in more than one process."""
        return self.world_size > 1

    def owner(self, index: int) -> int:
        """The rank that trains student ``index`` of a generation (``index % world_size``)."""
        return int(index) % self.world_size

    def owns(self, index: int) -> bool:
        """Whether this process trains student ``index`` of a generation."""
        return self.owner(index) == self.rank

    def shard(self, num_items: int, block: int = 1) -> tuple[int, int]:
        """``(start, stop)``: this process's contiguous part of ``num_items`` items, in whole blocks of
        ``block`` items (e.g. batches, so that every batch is the one a single process sees); the parts
        of the ranks follow each other in rank order, and a process may get an empty one."""
        if block < 1 or num_items < 0:
            raise ValueError(f"shard: num_items must be >= 0 and block >= 1, got {num_items} and {block}")
        blocks = -(-int(num_items) // int(block))
        first, last = self.rank * blocks // self.world_size, (self.rank + 1) * blocks // self.world_size
        return min(first * block, num_items), min(last * block, num_items)

    # ------------------------------------------------------------------ waiting and talking
    def _key(self, kind: str) -> str:
        if self.store is None:
            raise RuntimeError(f"process {self.rank}: the distributed context was destroyed")
        self._sequence += 1
        return f"{kind}/{self._sequence}"

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in a single process)."""
        if not self.is_distributed:
            return
        key = self._key("barrier")
        if self.store.add(key, 1) == self.world_size:
            self.store.set(f"{key}/open", b"1")
        self.store.wait([f"{key}/open"])

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
        if not self.is_distributed:
            return [obj]
        key = self._key("gather")
        self.store.set(f"{key}/{self.rank}", pickle.dumps(obj))
        return [
            obj if r == self.rank else pickle.loads(self.store.get(f"{key}/{r}"))
            for r in range(self.world_size)
        ]

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every process (the others' ``obj`` is ignored); ``obj`` in a single process."""
        return self.broadcast_object_list([obj], src=src)[0]

    def broadcast_object_list(self, objects: list[Any], src: int = 0) -> list[Any]:
        """Like ``torch.distributed.broadcast_object_list``: ``objects`` filled in place with rank ``src``'s."""
        if not self.is_distributed:
            return objects
        key = self._key("broadcast")
        if self.rank == src:
            self.store.set(key, pickle.dumps(list(objects)))
        else:
            objects[:] = pickle.loads(self.store.get(key))
        return objects

    def enter_main_first(self) -> None:
        """The first half of :meth:`main_first` for bundle JSON: the other processes wait here."""
        if not self.is_main:
            self.barrier()

    def exit_main_first(self) -> None:
        """The second half of :meth:`main_first` for bundle JSON: the main process lets the others go."""
        if self.is_main:
            self.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (e.g. to make a demo dataset once
        and let the other processes read it)."""
        self.enter_main_first()
        try:
            yield
        finally:
            self.exit_main_first()

    def destroy(self) -> None:
        """Leave the other processes (a bundle's ``finalize``), after a last barrier; the context cannot
        wait or exchange afterwards. No-op in a single process."""
        if self.is_distributed and self.store is not None:
            self.barrier()
            self.store = None

    def describe(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "device": str(self.device),
        }

    def __repr__(self) -> str:
        return f"DistributedContext(rank={self.rank}, world_size={self.world_size}, device={self.device})"
