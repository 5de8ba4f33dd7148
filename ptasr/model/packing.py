"""Frame packing: after the positional conv, the transformer layers work on a batch's valid frames only.

Why: every part of a transformer layer treats frames one by one except attention, and attention can take the
sequences back to back as well (``varlen_attn``, with each sequence's offsets). So the encoder packs the N valid
frames into (N, D) once, after the positional conv (which needs the padded layout), and unpacks them once,
before the CTC head: padded frames cost no norms, activations, matrix products or attention.

Where attention cannot take packed sequences (on the CPU, with attention dropout, on an older torch), it lays
its queries, keys and values out as (B, T, ...) again, with padded keys masked: the same function.

The plan (which frame goes where) is built on the host from the lengths, when they are on the host: then the
device never has to report how many frames are valid, and the forward pass never waits for it. Built from
lengths on the device (inference, or an exported graph), the count is read back once (a host sync on a GPU).

Every gather has a gather for its backward pass (:class:`_Gather`): the pack index is a bijection between the
valid positions of the padded batch and the packed rows, so each direction's backward is the other direction.
``index_select``'s own backward is an ``index_add_``, which on a GPU accumulates with atomics.

Notation as in :mod:`ptasr.model.wav2vec2`: B batch, T padded frames, N valid frames, D width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false

from ptasr.lengths import length_mask


class FramePacking(NamedTuple):
    """Where the valid frames of a padded (B, T) batch lie, and each sequence's span among the packed rows."""

    index: torch.Tensor | None  # (N,) int64 positions of the valid frames among the B * T; None: all B * T rows
    rows: torch.Tensor | None  # (B * T,) int64 packed row each position reads; a padded one reads a neighbour
    valid: torch.Tensor  # (B, T) bool, True at valid frames
    lengths: torch.Tensor  # (B,) int64 valid frames per example, on the device
    offsets: torch.Tensor | None  # (B + 1,) int32: example b is packed rows offsets[b]:offsets[b + 1]; None: unknown
    longest: int | None  # the longest example's frames, known on the host; None: unknown (lengths on the device)
    batch: int
    frames: int
    key_mask: torch.Tensor | None  # (B, 1, 1, T) bool, True at valid keys; None: no padding

    @classmethod
    def planned(cls, frame_lengths: Sequence[int], frames: int, device: torch.device) -> FramePacking:
        """The packing of frame counts known on the host: built there, copied to ``device`` without waiting.

        >>> p = FramePacking.planned([3, 1], 3, torch.device("cpu"))
        >>> p.index.tolist(), p.rows.tolist(), p.offsets.tolist(), p.longest
        ([0, 1, 2, 3], [0, 1, 2, 3, 3, 3], [0, 3, 4], 3)
        """
        batch, count = len(frame_lengths), sum(frame_lengths)
        host = dict(device="cpu", dtype=torch.int64)
        counts = torch.tensor(frame_lengths, **host)
        starts = torch.tensor([0, *frame_lengths], **host).cumsum(0)  # (B + 1,)
        # Position b * T + t holds packed row starts[b] + t; a padded one reads its example's last valid row
        # (or, for a 0-frame example, the row before it), which attention's mask and the unpack's zeros hide.
        within = torch.minimum(torch.arange(frames, **host), (counts - 1)[:, None])  # (B, T)
        rows = (starts[:-1, None] + within).clamp(min=0).flatten()
        shift = torch.arange(batch, **host) * frames - starts[:-1]  # position minus packed row, per example
        index = torch.arange(count, **host) + shift.repeat_interleave(counts, output_size=count)
        # One copy for all four: a copy from the host does not make the host wait when it is non-blocking.
        uploaded = torch.cat([counts, starts, index, rows]).to(device, non_blocking=True)
        lengths, offsets, index, rows = uploaded.split([batch, batch + 1, count, batch * frames])
        return cls._of(lengths, frames, index, rows, offsets.to(torch.int32), max(frame_lengths, default=0), count)

    @classmethod
    def of(cls, frame_lengths: torch.Tensor, frames: int) -> FramePacking:
        """The packing of (B,) frame counts on the device, padded to ``frames``: the one host sync on a GPU."""
        valid = length_mask(frame_lengths, frames)
        # The number of valid frames sets the packed shapes, so it is read back: one host sync on a GPU.
        index = valid.flatten().nonzero().squeeze(1)
        rows = (valid.flatten().cumsum(0) - 1).clamp(min=0)
        return cls._of(frame_lengths, frames, index, rows, None, None, index.shape[0])

    @classmethod
    def padded(cls, frame_lengths: torch.Tensor, frames: int) -> FramePacking:
        """No packing: every layer runs on all B * T rows, padded keys masked (transformers' way). For
        comparisons (``tests/test_packing.py``, ``benchmarks/train_throughput.py``'s ``ptasr-padded``)."""
        key_mask = length_mask(frame_lengths.clamp(min=1), frames)[:, None, None, :]
        valid = length_mask(frame_lengths, frames)
        return cls(None, None, valid, frame_lengths, None, None, frame_lengths.shape[0], frames, key_mask)

    @classmethod
    def _of(cls, lengths: torch.Tensor, frames: int, index: torch.Tensor, rows: torch.Tensor,
            offsets: torch.Tensor | None, longest: int | None, count: int | torch.SymInt) -> FramePacking:
        batch = lengths.shape[0]
        valid = length_mask(lengths, frames)
        # guard_or_false: where the count is a symbol with no value yet (a fake device, torch.export), decide
        # for the general case, packing, which is right for every count.
        if guard_or_false(count == batch * frames):  # no padding: no gathers, and SDPA may pick any kernel
            return cls(None, None, valid, lengths, offsets, longest, batch, frames, None)
        # A 0-frame example would mask every key and turn its softmax into NaN; let it see frame 0 instead.
        # Its output is ignored anyway (no valid frame).
        key_mask = length_mask(lengths.clamp(min=1), frames)[:, None, None, :]
        if guard_or_false(count == 0):  # nothing valid to pack: run the padded rows, which unpack zeroes
            return cls(None, None, valid, lengths, None, None, batch, frames, key_mask)
        # Tells a trace what eager execution knows here; CUDA's dropout kernel branches on N > 0.
        torch._check(count > 0)
        return cls(index, rows, valid, lengths, offsets, longest, batch, frames, key_mask)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (N, C): the valid frames, in order (all B * T rows when ``index`` is None)."""
        flat = padded.reshape(self.batch * self.frames, padded.shape[-1])
        if self.index is None:
            return flat
        return _Gather.apply(flat, self.index, self.rows, ~self.valid.view(-1, 1))

    def unpack(self, packed: torch.Tensor, zero_padding: bool = True) -> torch.Tensor:
        """(N, C) -> (B, T, C). Padded frames are zeros, or with ``zero_padding=False`` copies of a valid frame.

        The backward pass reads the gradient at the valid frames only: right when the padded frames do not
        reach the result, as zeros do not, nor attention's masked keys and values or its queries whose output
        the pack drops (the only use of ``zero_padding=False``).
        """
        shape = (self.batch, self.frames, packed.shape[-1])
        if self.index is None:
            padded = packed
        else:
            padded = _Gather.apply(packed, self.rows, self.index, None)
        if zero_padding and self.key_mask is not None:
            padded = padded.masked_fill(~self.valid.view(-1, 1), 0.0)
        return padded.view(shape)


class _Gather(torch.autograd.Function):
    """``source.index_select(0, index)``, whose backward pass is the gather by the inverse index.

    ``inverse`` maps each source row to the output row that holds it, and rows no output holds (padding) get a
    zero gradient through ``unheld``; ``None`` where every source row is held (unpacking the packed frames).
    """

    @staticmethod
    def forward(source: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor,
                unheld: torch.Tensor | None) -> torch.Tensor:
        return source.index_select(0, index)

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
        _, _, inverse, unheld = inputs
        ctx.save_for_backward(inverse, unheld)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inverse, unheld = ctx.saved_tensors
        grad_source = grad.index_select(0, inverse)
        if unheld is not None:
            grad_source = grad_source.masked_fill(unheld, 0.0)
        return grad_source, None, None, None
