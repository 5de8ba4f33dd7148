"""Greedy CTC decoding: known answers, padding independence, and agreement with a plain-Python reference."""

from __future__ import annotations

import itertools

import torch

from ptasr.decoding.greedy import greedy_decode


def _reference_greedy(ids: list[int], blank: int) -> list[int]:
    # The textbook rule: collapse runs, then drop blanks.
    return [token for token, _ in itertools.groupby(ids) if token != blank]


def test_merges_repeats_only_between_blanks() -> None:
    # "a a _ a" is two a's (a blank separates them); "a a a" is one.
    logits = torch.eye(3)[torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]])]
    assert greedy_decode(logits, torch.tensor([4, 3]), blank=0) == [[1, 1], [1]]


def test_matches_reference_on_random_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, 5, generator=generator)
    frame_lengths = torch.tensor([40, 39, 17, 1, 0, 25])
    decoded = greedy_decode(logits, frame_lengths, blank=4)
    for row, length, result in zip(logits.argmax(-1).tolist(), frame_lengths.tolist(), decoded, strict=True):
        assert result == _reference_greedy(row[:length], blank=4)


def test_padding_does_not_change_the_result() -> None:
    generator = torch.Generator().manual_seed(1)
    single = torch.randn(1, 12, 6, generator=generator)
    padded = torch.cat([single, torch.randn(1, 8, 6, generator=generator)], dim=1)  # 8 junk frames
    assert greedy_decode(padded, torch.tensor([12]), blank=5) == greedy_decode(single, torch.tensor([12]), blank=5)
