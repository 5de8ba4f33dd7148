"""Length-bucketed batches: fixed clip count or padded-seconds budget, reshuffled per epoch, DDP shards, resumable.

Why buckets: a batch is padded to its longest clip, so mixing 1 s and 20 s clips wastes most of the compute.
For training, clips are sorted by duration and cut into ``num_buckets`` equal buckets; every batch is drawn
from one bucket. Which clips share a batch and the batch order change every epoch (seeded by ``seed`` and
the epoch); how many batches each bucket yields does not, so ``len()`` is the same every epoch — Lightning
reads it once. For evaluation (``shuffle=False``) batches are cut from the sorted order, longest first.

Largest first: every epoch starts with its largest batch (in padded seconds, clips x longest clip), for
training and evaluation alike, so a batch that does not fit in memory fails in the first minute of a run,
not hours into it. The order stays a function of (seed, epoch), so resuming is still exact.

Weights (several corpora): a clip of weight ``w`` fills ``w`` places of its bucket per epoch on average --
2.0 draws it twice, 0.5 draws a random half of the clips of that weight (another half each epoch). The
places per bucket are fixed, so ``len()`` stays constant and the budget per batch holds.

Why a ``DistributedSampler`` subclass: it yields whole batches (the DataLoader runs with ``batch_size=None``),
already sharded by rank. Lightning sees a ``DistributedSampler`` as the loader's sampler, so it neither
injects its own under DDP nor needs ``use_distributed_sampler=False``, and it calls our ``set_epoch``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ptasr.errors import DataError, SettingError

log = logging.getLogger(__name__)


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is outside [0, {num_replicas}) for num_replicas={num_replicas}")
    return num_replicas, rank


class BucketBatchSampler(DistributedSampler):
    """Batches of clip indices drawn from duration buckets.

    Args:
        durations: seconds per clip, (N,).
        batch_size: most clips per batch (``None``: no clip cap, the budget alone decides).
        max_batch_seconds: most padded audio seconds per batch, i.e. clips x the bucket's longest clip
            (``None``: fixed clip count). A clip longer than the budget still gets a batch of its own.
        num_buckets: duration buckets for training batches (more: less padding, less varied batches).
        shuffle: training order (reshuffled per epoch) if True; else longest batches first, same every epoch.
        seed: with the epoch, decides the order; must be equal on all ranks.
        num_replicas: DDP world size (default: torch.distributed's, else 1).
        rank: this process's rank (default: torch.distributed's, else 0).
        weights: (N,) how often each clip is drawn per epoch relative to once (training only; ``None``: once).

    Every epoch each clip is in exactly one batch of one rank, and every rank gets the same number of
    batches: where the batch count does not divide by the world size, the largest batches are halved
    (no clip repeated or dropped). With fewer clips than ranks, the spare ranks get an empty batch rather
    than a repeated one (as ``DistributedSampler`` pads), so that validation counts every clip once.

    >>> sampler = BucketBatchSampler([1.0, 2.0, 3.0, 4.0, 5.0], batch_size=2, num_buckets=1, shuffle=False)
    >>> list(sampler)
    [[4, 3], [2, 1], [0]]
    """

    def __init__(self, durations: Sequence[float] | np.ndarray, batch_size: int | None = 16,
                 max_batch_seconds: float | None = None, num_buckets: int = 10, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None,
                 weights: Sequence[float] | np.ndarray | None = None) -> None:
        if batch_size is None and max_batch_seconds is None:
            raise SettingError("set batch_size (clips per batch), max_batch_seconds (padded seconds), or both")
        if batch_size is not None and batch_size < 1:
            raise SettingError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_seconds is not None and max_batch_seconds <= 0:
            raise SettingError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        durations = np.asarray(durations, dtype=np.float64)
        if len(durations) == 0:
            raise DataError("no clips to batch: every clip was filtered out or the split is empty")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != durations.shape or not (weights > 0).all():
                raise SettingError(f"weights must be positive, one per clip ({len(durations)}); got shape "
                                 f"{weights.shape}, smallest {weights.min() if len(weights) else None}")
            if not shuffle:
                raise SettingError("weights apply to training (shuffle=True); evaluation counts every clip once")
            if (weights == 1.0).all():
                weights = None
        num_replicas, rank = _distributed_defaults(num_replicas, rank)
        # DistributedSampler's own state (epoch, rank, num_replicas, seed, shuffle) is what we use; its
        # per-sample iteration is replaced below
        super().__init__(range(len(durations)), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.durations = durations
        self.batch_size, self.max_batch_seconds = batch_size, max_batch_seconds
        self.num_buckets = num_buckets
        self.weights = weights
        self._groups: list[list[tuple[np.ndarray, int]]] = []  # per bucket: (clips of one weight, their places)
        self._buckets, self._sizes = self._plan()
        self._start = 0  # batches of this epoch to skip on the next iteration (set by load_state_dict)
        self._yielded = 0  # batches of the current epoch handed out so far, skipped ones included

    # -- the plan: which clips form a bucket and the sizes of its batches, fixed for the sampler's life --------

    def _cap(self, longest: float) -> int:
        """Most clips in a batch whose longest clip lasts ``longest`` seconds."""
        cap = self.batch_size if self.batch_size is not None else len(self.durations)
        if self.max_batch_seconds is not None:
            cap = min(cap, max(1, math.floor(self.max_batch_seconds / longest)))
        return cap

    def _plan(self) -> tuple[list[np.ndarray], list[list[int]]]:
        # stable sort: equal durations keep file order, so the plan does not depend on the platform
        order = np.argsort(self.durations, kind="stable")
        if not self.shuffle:
            # evaluation: one pass, longest first (a batch that does not fit in memory fails at once), each
            # batch as full as its first, longest clip allows
            order = order[::-1]
            sizes, i = [], 0
            while i < len(order):
                sizes.append(min(self._cap(self.durations[order[i]]), len(order) - i))
                i += sizes[-1]
            return [order], self._even_out([sizes])
        # training: equal buckets of whole batches when the clip count is fixed, so only the last bucket has
        # a partial batch; a bucket's longest clip sets its budget cap, so no batch in it exceeds the budget
        unit = self.batch_size if self.max_batch_seconds is None else 1
        bucket_len = unit * math.ceil(len(order) / (self.num_buckets * unit))
        buckets = [order[i: i + bucket_len] for i in range(0, len(order), bucket_len)]
        sizes = []
        for bucket in buckets:
            cap = self._cap(self.durations[bucket[-1]])
            places = len(bucket)
            if self.weights is not None:
                weights = self.weights[bucket]
                self._groups.append([(bucket[weights == w], round(w * int((weights == w).sum())))
                                     for w in np.unique(weights)])
                places = sum(n for _, n in self._groups[-1])
            sizes.append([cap] * (places // cap) + ([places % cap] if places % cap else []))
        return buckets, self._even_out(sizes)

    def _padded_seconds(self, batch: list[int]) -> float:
        return len(batch) * float(self.durations[batch].max()) if batch else 0.0

    def _draw(self, rng: np.random.Generator, b: int) -> np.ndarray:
        """Bucket ``b``'s clips for one epoch, shuffled: each once, or as often as their weights say."""
        if self.weights is None:
            return rng.permutation(self._buckets[b])
        drawn = []
        for clips, places in self._groups[b]:
            if places == 0:  # a weight too small for this bucket's few clips of it
                continue
            rounds = -(-places // len(clips))  # whole passes over the group, the last one cut short
            drawn += [rng.permutation(clips) for _ in range(rounds)]
            drawn[-1] = drawn[-1][: places - (rounds - 1) * len(clips)]
        return rng.permutation(np.concatenate(drawn)) if drawn else np.zeros(0, dtype=np.int64)

    def _even_out(self, sizes: list[list[int]]) -> list[list[int]]:
        """Halve the largest batches until every rank can get as many (halving never breaks the budget)."""
        while sum(map(len, sizes)) % self.num_replicas and max(max(s) for s in sizes) > 1:
            bucket = max(range(len(sizes)), key=lambda b: max(sizes[b]))
            i = sizes[bucket].index(max(sizes[bucket]))
            # in place: in an evaluation plan each batch's size was set by the clip it starts with
            sizes[bucket][i: i + 1] = [sizes[bucket][i] - sizes[bucket][i] // 2, sizes[bucket][i] // 2]
        return sizes

    # -- one epoch -----------------------------------------------------------------------------------------

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of ``epoch``, in order; rank ``r`` takes every ``num_replicas``-th from ``r``."""
        rng = np.random.default_rng([self.seed, epoch])
        per_bucket: list[list[list[int]]] = []
        for b, (bucket, sizes) in enumerate(zip(self._buckets, self._sizes)):
            members = self._draw(rng, b) if self.shuffle else bucket
            bounds = np.cumsum([0] + sizes)
            per_bucket.append([members[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])])
        if self.shuffle:
            # Shuffle steps, not batches: the num_replicas batches that the ranks take at one step come from
            # one bucket, so they are about as long and no rank waits long for another at the all-reduce.
            # A bucket's last few batches, too few for a step, form steps with the next bucket's leftovers.
            # With one rank every batch is a step of its own, in the same order as a plain shuffle.
            steps: list[list[list[int]]] = []
            leftovers: list[list[int]] = []
            for batches_of_bucket in per_bucket:
                whole = len(batches_of_bucket) - len(batches_of_bucket) % self.num_replicas
                steps += [batches_of_bucket[i: i + self.num_replicas] for i in range(0, whole, self.num_replicas)]
                leftovers += batches_of_bucket[whole:]
            steps += [leftovers[i: i + self.num_replicas] for i in range(0, len(leftovers), self.num_replicas)]
            order = rng.permutation(len(steps)).tolist()
            # the step holding the epoch's largest batch goes first (order otherwise unchanged)
            largest = max(order, key=lambda i: max(map(self._padded_seconds, steps[i])))
            order.remove(largest)
            batches = [batch for i in [largest, *order] for batch in steps[i]]
        else:
            batches = [batch for batches_of_bucket in per_bucket for batch in batches_of_bucket]
            # longest clips first is not always largest first: under a budget a batch of shorter clips can
            # hold more padded seconds; sorted (stably) by size, every rank's first batch is its largest
            batches.sort(key=self._padded_seconds, reverse=True)
        if len(batches) % self.num_replicas:
            # fewer clips than ranks (halving stopped at single clips): an empty batch keeps every rank in step
            # with the others' collectives; the module skips it, without a clip counted twice in val/wer
            batches += [[] for _ in range(self.num_replicas - len(batches) % self.num_replicas)]
        return batches

    def __len__(self) -> int:
        """Batches per epoch on this rank (equal on every rank, constant across epochs)."""
        return math.ceil(sum(map(len, self._sizes)) / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)[self.rank:: self.num_replicas]
        start, self._start = self._start, 0
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch; a resumed position survives only for its own epoch."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    # -- resuming --------------------------------------------------------------------------------------------

    @property
    def resume_batch(self) -> int:
        """Batches the next iteration skips (non-zero only after :meth:`load_state_dict`)."""
        return self._start

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Position in the epoch: epoch, and how many of this rank's batches were consumed.

        Args:
            batches_done: consumed batches as the caller counts them; by default the batches this sampler
                handed out, which runs ahead of training when DataLoader workers prefetch (the loader passes
                its own count, see :class:`ptasr.data.dataset.ClipLoader`).
        """
        return {"epoch": self.epoch, "batches_done": self._yielded if batches_done is None else batches_done,
                "num_batches": len(self), "num_replicas": self.num_replicas, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue ``state``'s epoch after its ``batches_done`` batches on the next iteration."""
        if state["seed"] != self.seed:
            raise SettingError(f"the checkpoint's sampler seed {state['seed']} differs from this run's {self.seed}; "
                             f"resume with the same data.batching.seed to continue the same epoch order")
        done = state["batches_done"]
        if state["num_replicas"] != self.num_replicas or state["num_batches"] != len(self):
            # different world size or data: the batch plan differs, so continue at the same fraction of the epoch
            done = round(done / state["num_batches"] * len(self)) if state["num_batches"] else 0
            log.warning("resuming on %d ranks with %d batches per rank, saved with %d ranks and %d batches: the "
                        "epoch continues at batch %d, not exactly where it stopped", self.num_replicas, len(self),
                        state["num_replicas"], state["num_batches"], done)
        self.epoch = state["epoch"]
        self._start = min(done, len(self))
