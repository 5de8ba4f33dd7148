"""The training step's random streams: LayerDrop's, SpecAugment's and speed perturbation's, functions of
(seed, update, batch[, rank]).

They never come from global RNG state, so a resumed run draws them again exactly. LayerDrop's are the same on
every DDP rank (the ranks' gradients meet in one all-reduce, so they must drop the same layers); SpecAugment's
and the speeds add the rank, so each rank masks its own spans (ranks whose batches have equal lengths would otherwise mask
alike). The generators live on the CPU: the model draws on the generator's device and copies, so no host sync.
The seed is the CLI's ``seed_everything``, which exports ``PL_GLOBAL_SEED`` to every rank.
"""

from __future__ import annotations

import os

import torch


def layerdrop_generator(update: int, batch_idx: int) -> torch.Generator:
    """LayerDrop's randomness for batch ``batch_idx`` of update ``update``: the same on every rank.

    >>> a, b = layerdrop_generator(3, 1), layerdrop_generator(3, 1)
    >>> bool(torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b)))
    True
    """
    return seeded_generator(global_seed(), update, batch_idx)


def spec_augment_generator(update: int, batch_idx: int, rank: int) -> torch.Generator:
    """SpecAugment's randomness for batch ``batch_idx`` of update ``update`` on DDP rank ``rank``.

    >>> r0, r1 = spec_augment_generator(3, 1, 0), spec_augment_generator(3, 1, 1)
    >>> bool(torch.equal(torch.rand(4, generator=r0), torch.rand(4, generator=r1)))
    False
    """
    return seeded_generator(global_seed(), update, batch_idx, rank)


def speed_generator(update: int, batch_idx: int, rank: int) -> torch.Generator:
    """Speed perturbation's randomness for batch ``batch_idx`` of update ``update`` on DDP rank ``rank``.

    >>> a, b = speed_generator(3, 1, 0), spec_augment_generator(3, 1, 0)
    >>> bool(torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b)))
    False
    """
    return seeded_generator(global_seed(), update, batch_idx, rank, _SPEED)


_SPEED = 1  # keys the speed stream apart from SpecAugment's (same update, batch and rank)


def global_seed() -> int:
    """The run's seed as ``seed_everything`` exported it (0 when unset)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of ints (hashing ints is the same in every process)."""
    return torch.Generator().manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)
