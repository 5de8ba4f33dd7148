"""The one place that knows how many frames a strided convolution stack makes of a waveform.

Model, CTC loss and data filters all call :func:`conv_output_lengths`, so they can never disagree;
:func:`length_mask` turns lengths into the valid positions of a padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

LengthT = TypeVar("LengthT", int, torch.Tensor)


def conv_output_lengths(lengths: LengthT, kernels: Sequence[int], strides: Sequence[int]) -> LengthT:
    """Frames produced by unpadded 1-D convolutions applied in sequence.

    Each layer maps ``n`` samples to ``floor((n - kernel) / stride) + 1``; an input shorter than the
    receptive field yields 0 frames (never a negative count).

    Args:
        lengths: sample counts, an ``int`` or an int64 tensor of shape (B,).
        kernels: kernel width of each layer.
        strides: stride of each layer.

    >>> conv_output_lengths(16000, [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])
    49
    >>> conv_output_lengths(torch.tensor([400, 399, 0]), [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])
    tensor([1, 0, 0])
    """
    for kernel, stride in zip(kernels, strides, strict=True):
        if isinstance(lengths, torch.Tensor):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
            lengths = lengths.clamp(min=0)
        else:
            lengths = max((lengths - kernel) // stride + 1, 0)
    return lengths


def length_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_length) bool, True at valid positions.

    >>> length_mask(torch.tensor([2, 0]), 3).tolist()
    [[True, True, False], [False, False, False]]
    """
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]
