"""SpecAugment span masks: the properties transformers' masks have, drawn in torch."""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from ptasr.model.masking import span_mask


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    lengths, current = [], 0
    for value in row.tolist() + [False]:
        if value:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def test_never_on_padding_and_spans_are_whole() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([200, 120, 37, 9, 0])
    for _ in range(20):
        mask = span_mask(lengths, 200, mask_prob=0.65, mask_length=10, min_masks=2, generator=generator)
        for row, length in enumerate(lengths.tolist()):
            assert not mask[row, length:].any()
            assert all(run >= 10 for run in runs(mask[row]))  # unions of whole 10-frame spans
        assert not mask[3].any() and not mask[4].any()  # shorter than one span: nothing fits


def test_count_follows_the_probability_with_a_shared_epsilon() -> None:
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([100, 100, 100, 60])
    for _ in range(20):
        # span length 1: no overlaps, so the count is exactly floor(prob * length + epsilon)
        counts = span_mask(lengths, 100, mask_prob=0.25, mask_length=1, generator=generator).sum(dim=1).tolist()
        assert counts[0] == counts[1] == counts[2] in (25, 26)
        assert counts[3] in (15, 16)


def test_min_masks() -> None:
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        mask = span_mask(torch.tensor([50, 50]), 50, mask_prob=0.0, mask_length=5, min_masks=2, generator=generator)
        for row in mask:
            assert 5 <= int(row.sum()) <= 10 and len(runs(row)) in (1, 2)


def test_masked_share_matches_transformers() -> None:
    """Same parameters, many draws: our mean masked share equals transformers' within sampling noise."""
    np.random.seed(0)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([250, 180, 90])
    attention = (torch.arange(250) < lengths[:, None]).long()
    ours, theirs = [], []
    for _ in range(300):
        ours.append(span_mask(lengths, 250, 0.65, 10, 2, generator).float().sum(dim=1))
        drawn = _compute_mask_indices((3, 250), 0.65, 10, attention_mask=attention, min_masks=2)
        theirs.append(torch.from_numpy(drawn).float().sum(dim=1))
    torch.testing.assert_close(torch.stack(ours).mean(0), torch.stack(theirs).mean(0), atol=2.0, rtol=0.02)


def test_same_generator_state_same_mask() -> None:
    lengths = torch.tensor([100, 80])
    first = span_mask(lengths, 100, 0.5, 4, generator=torch.Generator().manual_seed(5))
    again = span_mask(lengths, 100, 0.5, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
