"""Speed perturbation: each training clip played a little faster or slower (Ko et al., Interspeech 2015).

A clip at speed ``s`` is its samples read as if recorded at ``s`` x 16 kHz and resampled to 16 kHz: ``1/s`` as
long, pitch and tempo moved together, the text unchanged. Kaldi's, ESPnet's and NeMo's recipes draw ``s`` from
{0.9, 1.0, 1.1} per clip; on a small corpus (few speakers, a few hundred clips) it is the augmentation that
keeps a model from memorising its voices.

It runs in the training step, on the batch's device, with a generator that is a function of (seed, update,
batch, rank) like SpecAugment's (``step_randomness``), so a resumed run draws the same speeds; the new lengths
are computed on the host from the host lengths, so the model never waits for the device to learn them. A clip
that a faster speed would leave too few frames for its text (CTC could not emit it) keeps speed 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio.functional as AF

from ptasr.data.audio import SAMPLE_RATE
from ptasr.data.filters import ctc_frames_needed
from ptasr.errors import SettingError
from ptasr.lengths import conv_output_lengths

__all__ = ["check_speeds", "draw_speeds", "perturb_speed"]


def check_speeds(speeds: Sequence[float] | None) -> tuple[float, ...]:
    """The speeds a config names, checked: each in [0.5, 2] and a whole number of Hz at 16 kHz.

    >>> check_speeds([0.9, 1.0, 1.1])
    (0.9, 1.0, 1.1)
    """
    if not speeds:
        return ()
    for s in speeds:
        if not 0.5 <= s <= 2.0 or abs(s * SAMPLE_RATE - round(s * SAMPLE_RATE)) > 1e-6:
            raise SettingError(f"model.speed_perturbation: speed {s!r} is not a factor in [0.5, 2] that is a whole "
                               f"number of Hz at {SAMPLE_RATE} Hz; use values like [0.9, 1.0, 1.1]")
    return tuple(float(s) for s in speeds)


def draw_speeds(speeds: Sequence[float], texts: Sequence[str], lengths: torch.Tensor, kernels: Sequence[int],
                strides: Sequence[int], generator: torch.Generator) -> list[float]:
    """One speed per clip, drawn uniformly from ``speeds``; 1.0 where the drawn one leaves CTC too few frames.

    Args:
        speeds: the factors to draw from.
        texts: the B normalised transcripts (what CTC must emit).
        lengths: int64 (B,) samples, on the host.
        kernels, strides: the feature encoder's, to count frames.
        generator: a CPU generator (``step_randomness.speed_generator``).
    """
    picks = torch.randint(len(speeds), (len(texts),), generator=generator).tolist()
    drawn = []
    for pick, text, length in zip(picks, texts, lengths.tolist()):
        s = speeds[pick]
        frames = conv_output_lengths(_resampled_length(length, s), kernels, strides)
        drawn.append(s if frames >= ctc_frames_needed(text) else 1.0)
    return drawn


def perturb_speed(waveforms: torch.Tensor, lengths: torch.Tensor, speeds: Sequence[float]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip at its speed.

    Args:
        waveforms: float (B, S) zero-padded, on any device.
        lengths: int64 (B,) samples, on the host.
        speeds: B factors (1.0 leaves a clip as it is).

    Returns:
        float (B, S') zero-padded, on ``waveforms``' device, and int64 (B,) samples on the host.
    """
    new_lengths = torch.tensor([_resampled_length(n, s) for n, s in zip(lengths.tolist(), speeds)],
                               dtype=torch.int64)
    if all(s == 1.0 for s in speeds):
        return waveforms, lengths
    out = waveforms.new_zeros(len(speeds), int(new_lengths.max()))
    for s in sorted(set(speeds)):
        rows = [i for i, si in enumerate(speeds) if si == s]
        width = int(new_lengths[rows].max())
        group = waveforms[rows, : int(lengths[rows].max())]
        if s != 1.0:  # read at s x 16 kHz, resampled to 16 kHz (torchaudio reduces the ratio: 9/10, 11/10)
            # in the waveform's precision: the step runs under bf16/fp16 autocast, whose conv1d would round
            # the samples before the model's first layer sees them
            with torch.autocast(waveforms.device.type, enabled=False):
                group = AF.resample(group, round(s * SAMPLE_RATE), SAMPLE_RATE)
        out[rows, :width] = group[:, :width]
    # the resampling filter spills a few samples past each clip's end; the model reads lengths, but keep the
    # padding zero as the loader makes it
    positions = torch.arange(out.shape[1], device=out.device)
    out.masked_fill_(positions[None, :] >= new_lengths.to(out.device)[:, None], 0.0)
    return out, new_lengths


def _resampled_length(samples: int, speed: float) -> int:
    """Samples after resampling ``samples`` from ``speed`` x 16 kHz to 16 kHz (torchaudio's ceiling)."""
    orig = round(speed * SAMPLE_RATE)
    return -(-samples * SAMPLE_RATE // orig)
