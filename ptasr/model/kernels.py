"""Drop-in replacements that compute what the plain modules compute, with fewer copies or fewer operations.

The encoder in :mod:`ptasr.model.wav2vec2` reads without them: an :class:`InputDtypeLayerNorm` is an
``nn.LayerNorm``, and :func:`channels_last_conv` and :func:`fft_conv` are
``conv(features.transpose(1, 2)).transpose(1, 2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InputDtypeLayerNorm(nn.LayerNorm):
    """A LayerNorm that, under autocast, returns a bf16 (or fp16) input's own dtype; elsewhere ``nn.LayerNorm``.

    Why: CUDA's autocast runs LayerNorm in float32. It copies a bf16 input to float32 (the copy is what the
    backward pass keeps), and every linear that reads the float32 output casts it back to bf16 on its own
    (three times for q, k and v). The kernel computes in float32 for a bf16 input anyway, so calling it on the
    bf16 input keeps half the bytes for the backward pass and writes one bf16 output that all readers share.
    CUDA's kernel takes gain and bias in the input's dtype, so there they are rounded to it, as autocast rounds
    every linear's weight. CPU's kernel takes them in float32, which is what CPU's autocast (which leaves
    LayerNorm alone) does already.

    Only for norms whose output feeds matrix products; not for post-norm blocks, where the norm's output is the
    residual stream, which autocast keeps in float32.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C), in the input's dtype under autocast."""
        device = features.device.type
        if features.dtype not in (torch.bfloat16, torch.float16) or not torch.is_autocast_enabled(device):
            return super().forward(features)
        weight, bias = self.weight, self.bias
        if device != "cpu":
            weight = None if weight is None else weight.to(features.dtype)
            bias = None if bias is None else bias.to(features.dtype)
        with torch.autocast(device, enabled=False):
            return F.layer_norm(features, self.normalized_shape, weight, bias, self.eps)


def channels_last_conv(conv: nn.Conv1d, features: torch.Tensor) -> torch.Tensor:
    """Apply a Conv1d to time-major features: (B, S, C_in) -> (B, S', C_out), no transposed copies.

    Why: the norms and activations around the feature encoder's convs work on the channel axis, which wants
    (B, S, C); a Conv1d wants (B, C, S), and switching costs two transposed copies per layer. (B, S, C) memory
    is exactly a channels-last (NHWC) image of height 1, so the conv runs as a 2-D channels-last convolution,
    the layout oneDNN and cuDNN prefer, and its output is again (B, S', C) in memory.
    """
    image = features.transpose(1, 2).unsqueeze(2)  # (B, C_in, 1, S), channels-last strides
    # A reshape, not an unsqueeze: its backward gives the weight's gradient the weight's own strides. The
    # conv's weight gradient is channels-last; for C_in = 1 (the first layer) that is the parameter's memory
    # with another stride in the size-1 C_in axis, which squeeze (unsqueeze's backward) would keep. Autograd
    # accepts that; DDP, whose gradient buckets have the parameters' strides, warns at it on every run.
    out_channels, in_channels, kernel = conv.weight.shape
    weight = conv.weight.reshape(out_channels, in_channels, 1, kernel)  # (C_out, C_in/groups, 1, k)
    weight = weight.contiguous(memory_format=torch.channels_last)
    padding = conv.padding if isinstance(conv.padding, str) else (0, conv.padding[0])
    out = F.conv2d(image, weight, conv.bias, stride=(1, conv.stride[0]), padding=padding, groups=conv.groups)
    return out.squeeze(2).transpose(1, 2).contiguous()  # (B, S', C_out): a view, unless a backend chose another layout


def fft_conv(conv: nn.Conv1d, features: torch.Tensor) -> torch.Tensor:
    """A zero-padded (grouped) Conv1d through FFTs: (B, T, C_in) -> (B, T, C_out), the conv's first T frames.

    Why: the positional conv (kernel 128, 16 groups) multiplies each frame by 128 x 64 weights per channel; as
    spectra, the convolution is one (C_in / G) x (C_out / G) complex product per frequency and group, about 25
    times fewer operations at XLS-R's sizes, and grouped-conv kernels are slow on GPUs besides. The result is
    the convolution's exactly, up to float rounding; computed in float32 (FFTs take no bfloat16), returned in
    the input's dtype. Stride 1 and dilation 1 only, which is what the positional conv has.

    >>> conv = nn.Conv1d(4, 4, 5, padding=2, groups=2)
    >>> x = torch.randn(2, 9, 4)
    >>> torch.allclose(fft_conv(conv, x), conv(x.transpose(1, 2)).transpose(1, 2), atol=1e-5)
    True
    """
    batch, frames, in_channels = features.shape
    out_channels, group_in, kernel = conv.weight.shape
    groups, group_out, pad = conv.groups, out_channels // conv.groups, conv.padding[0]
    size = _fft_size(frames + kernel - 1)  # no wrap-around: a linear convolution of T frames and K taps
    bins = size // 2 + 1
    with torch.autocast(features.device.type, enabled=False):
        spectrum = torch.fft.rfft(features.float(), n=size, dim=1)  # (B, F, C_in)
        spectrum = spectrum.view(batch, bins, groups, group_in).permute(1, 2, 0, 3)  # (F, G, B, C_in / G)
        # Conv1d correlates: the flipped kernel convolves.
        taps = torch.fft.rfft(conv.weight.float().flip(-1), n=size, dim=-1)  # (C_out, C_in / G, F)
        taps = taps.view(groups, group_out, group_in, bins).permute(3, 0, 2, 1)  # (F, G, C_in / G, C_out / G)
        product = torch.matmul(spectrum, taps).permute(2, 0, 1, 3).reshape(batch, bins, out_channels)
        # Output frame t is the full convolution's frame t + K - 1 - pad.
        out = torch.fft.irfft(product, n=size, dim=1)[:, kernel - 1 - pad : kernel - 1 - pad + frames]
        if conv.bias is not None:
            out = out + conv.bias.float()
    return out.to(features.dtype)


def _fft_size(length: int) -> int:
    """The smallest size >= ``length`` with no prime factor above 5 (fast for every FFT library).

    >>> _fft_size(527), _fft_size(512)
    (540, 512)
    """
    size = length
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1
