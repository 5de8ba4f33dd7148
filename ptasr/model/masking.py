"""SpecAugment span masks with transformers' ``_compute_mask_indices`` semantics, in torch on the device.

transformers draws the masks with NumPy on the host, one example at a time; here the whole batch is drawn at
once from an explicit ``torch.Generator``, so masking needs no host sync and is reproducible from a seed.

The distribution is the same as transformers':
- one ``epsilon ~ U[0, 1)`` per call, shared by the batch (it rounds the expected span count up or down);
- spans per example ``n = floor(prob * length / span + epsilon)``, at least ``min_masks``, at most
  ``max_length // span`` and at most the number of valid start positions ``length - span + 1``;
- ``n`` distinct start positions drawn uniformly from those valid starts, so a span never covers padding;
- spans may overlap, so fewer than ``n * span`` positions can end up masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw where the generator lives, then move: a CPU generator may drive a CUDA model (copy, no sync).
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device, non_blocking=True)


def span_mask(
    lengths: torch.Tensor,
    max_length: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random spans to mask, per example.

    Args:
        lengths: (B,) int64 valid positions per example; positions at or past it are never masked.
        max_length: padded length of the masked axis.
        mask_prob: expected share of positions that start a span, times ``mask_length``.
        mask_length: positions per span.
        min_masks: spans per example at least (if the example has room for them).
        generator: source of randomness; ``None`` uses torch's default generator.

    Returns:
        (B, max_length) bool, True where masked.

    >>> g = torch.Generator().manual_seed(0)
    >>> mask = span_mask(torch.tensor([50, 20]), 50, mask_prob=0.5, mask_length=5, generator=g)
    >>> mask.shape, bool(mask[1, 20:].any())
    (torch.Size([2, 50]), False)
    """
    device = lengths.device
    epsilon = _uniform((), generator, device)
    num_spans = torch.floor(mask_prob * lengths / mask_length + epsilon).long()
    num_spans = num_spans.clamp(min=min_masks, max=max_length // mask_length)
    num_starts = (lengths - (mask_length - 1)).clamp(min=0)
    num_spans = torch.minimum(num_spans, num_starts)

    # Rank random scores; invalid starts get -1 so they rank after every valid one.
    positions = torch.arange(max_length, device=device)
    scores = _uniform((lengths.shape[0], max_length), generator, device)
    scores = scores.masked_fill(positions >= num_starts[:, None], -1.0)
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    starts = rank < num_spans[:, None]  # (B, max_length)

    # Position t is masked if a span starts in (t - mask_length, t]: a windowed count of starts.
    started = starts.long().cumsum(dim=1)
    ended = F.pad(started, (mask_length, 0))[:, :max_length]
    return (started - ended) > 0
