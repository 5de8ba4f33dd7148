"""CTC decoding of model logits into token ids.

Greedy (best-path) decoding; beam search with an n-gram LM is in :mod:`ptasr.decoding.lm`.
"""

from __future__ import annotations

import torch


def greedy_decode(logits: torch.Tensor, frame_lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks, ignore padded frames.

    Args:
        logits: (B, T, V) scores (log-probabilities or raw logits; only the argmax matters).
        frame_lengths: int64 (B,) valid frames per utterance.
        blank: the CTC blank id (ptasr's vocabulary uses ``[PAD]``, the last id, like the HF script).

    Returns:
        One list of token ids per utterance, ready for ``Vocabulary.decode``.

    >>> logits = torch.eye(3)[torch.tensor([[1, 1, 2, 1, 0, 0], [2, 2, 1, 1, 1, 1]])]  # (B=2, T=6, V=3)
    >>> greedy_decode(logits, torch.tensor([6, 3]), blank=2)
    [[1, 1, 0], [1]]
    """
    ids = logits.argmax(dim=-1)  # (B, T)
    # A frame emits a token when it is not blank, differs from the frame before it, and is not padding.
    keep = ids != blank
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    keep &= torch.arange(ids.shape[1], device=ids.device) < frame_lengths.to(ids.device)[:, None]
    ids, keep = ids.cpu(), keep.cpu()  # one device-to-host copy per batch
    return [row[mask].tolist() for row, mask in zip(ids, keep, strict=True)]
