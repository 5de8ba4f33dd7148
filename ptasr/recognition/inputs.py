"""The audio a recognizer takes: paths and encoded bytes (any format soundfile reads), waveforms at 16 kHz, or
samples with their rate; each read into a normalised 16 kHz mono waveform, or the reason it could not be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ptasr.data.audio import AudioDecodeError, load_audio, normalize_waveform, resample

# A path, a 1-D tensor already at 16 kHz, or (samples (S,) or (C, S), sample rate).
AudioInput = str | Path | bytes | torch.Tensor | tuple[np.ndarray | torch.Tensor, int]


def read_input(item: AudioInput) -> torch.Tensor | str:
    """A normalised 16 kHz mono waveform (S,), or the reason it could not be read."""
    try:
        if isinstance(item, (str, Path, bytes)):  # bytes: an encoded file, as Hugging Face datasets hold them
            return load_audio(item)
        if isinstance(item, torch.Tensor):
            return normalize_waveform(item.float())
        samples, sample_rate = item
        waveform = torch.as_tensor(samples, dtype=torch.float32)
        mono = waveform.mean(dim=0) if waveform.ndim == 2 else waveform  # (C, S) -> (S,)
        return normalize_waveform(resample(mono, int(sample_rate)))
    except (AudioDecodeError, OSError) as error:
        return str(error)


def describe_input(item: AudioInput) -> str:
    """How a transcript names its input: the path, or the waveform's size."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, torch.Tensor):
        return f"<waveform of {item.shape[-1]} samples>"
    if isinstance(item, bytes):
        return f"<encoded audio of {len(item)} bytes>"
    return f"<waveform of {np.shape(item[0])[-1]} samples at {item[1]} Hz>"
