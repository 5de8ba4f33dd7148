"""Frame packing: the transformer layers work on a batch's valid frames only.

Why: every part of a transformer layer but attention treats frames one by one, so padded frames need no
norms, activations or matrix products. The layers work on the N valid frames packed into (N, D); attention
lays its queries, keys and values out as (B, T, ...) again, with padded keys masked.

Notation as in :mod:`ptasr.model.wav2vec2`: B batch, T padded frames, N valid frames, D width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false

from ptasr.lengths import length_mask


class FramePacking(NamedTuple):
    """Where the valid frames of a padded (B, T) batch lie.

    Both directions are gathers (``index_select``), whose backward keeps only the indices: a scatter into a
    zero-filled buffer (``index_copy``) would keep its whole source for the backward pass.
    """

    index: torch.Tensor | None  # (N,) int64 positions of the valid frames among the B * T; None: all B * T rows
    rows: torch.Tensor | None  # (B * T,) int64 packed row each position reads; a padded one reads a neighbour
    valid: torch.Tensor  # (B, T) bool, True at valid frames
    batch: int
    frames: int
    key_mask: torch.Tensor | None  # (B, 1, 1, T) bool, True at valid keys; None: no padding

    @classmethod
    def of(cls, frame_lengths: torch.Tensor, frames: int) -> FramePacking:
        """(B,) frames of a batch padded to ``frames``."""
        batch = frame_lengths.shape[0]
        valid = length_mask(frame_lengths, frames)
        # The number of valid frames sets the packed shapes, so it is read back: one host sync on a GPU.
        index = valid.flatten().nonzero().squeeze(1)
        count = index.shape[0]
        # guard_or_false: where the count is a symbol with no value yet (a fake device, torch.export), decide
        # for the general case, packing, which is right for every count.
        if guard_or_false(count == batch * frames):  # no padding: no gathers, and SDPA may pick any kernel
            return cls(None, None, valid, batch, frames, None)
        # A 0-frame example would mask every key and turn its softmax into NaN; let it see frame 0 instead.
        # Its output is ignored anyway (no valid frame).
        key_mask = length_mask(frame_lengths.clamp(min=1), frames)[:, None, None, :]
        if guard_or_false(count == 0):  # nothing valid to pack: run the padded rows, which unpack zeroes
            return cls(None, None, valid, batch, frames, key_mask)
        # Tells a trace what eager execution knows here; CUDA's dropout kernel branches on N > 0.
        torch._check(count > 0)
        rows = (valid.flatten().cumsum(0) - 1).clamp(min=0)
        return cls(index, rows, valid, batch, frames, key_mask)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (N, C): the valid frames, in order (all B * T rows when ``index`` is None)."""
        flat = padded.reshape(self.batch * self.frames, padded.shape[-1])
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, packed: torch.Tensor, zero_padding: bool = True) -> torch.Tensor:
        """(N, C) -> (B, T, C). Padded frames are zeros, or with ``zero_padding=False`` copies of a valid frame
        (enough for attention's keys and values, which the mask hides, and its queries, whose output is dropped)."""
        shape = (self.batch, self.frames, packed.shape[-1])
        padded = packed if self.index is None else packed.index_select(0, self.rows)
        if zero_padding and self.key_mask is not None:
            padded = padded.masked_fill(~self.valid.view(-1, 1), 0.0)
        return padded.view(shape)
