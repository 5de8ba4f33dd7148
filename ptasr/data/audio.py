"""Audio side of the data: decode any soundfile format, downmix, resample to 16 kHz, normalise.

soundfile (libsndfile >= 1.1) decodes MP3, FLAC, WAV and OGG without FFmpeg; torchaudio 2.9+ has no I/O
of its own, so torchaudio is used only for its resampling kernels. Everything here runs inside DataLoader
workers, which is why the resampler is cached per process and nothing here imports Lightning.
"""

from __future__ import annotations

import io
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from ptasr.errors import UserError

SAMPLE_RATE = 16_000  # wav2vec 2.0 and XLS-R were pre-trained on 16 kHz audio

AudioSource = str | Path | bytes | BinaryIO


class AudioDecodeError(UserError, RuntimeError):
    """A clip that cannot be used: unreadable, empty, truncated, or not finite."""


def _as_file(source: AudioSource) -> str | Path | BinaryIO:
    # soundfile reads paths and file-like objects; Hugging Face datasets hand us raw bytes
    return io.BytesIO(source) if isinstance(source, bytes) else source


def read_audio(source: AudioSource) -> tuple[np.ndarray, int]:
    """Decode a file, bytes or file object to float32 mono ``(S,)`` samples and its sample rate.

    Several channels are averaged, the downmix HF's ``datasets.Audio(mono=True)`` does.

    Raises:
        AudioDecodeError: the data is not audio soundfile can decode, or holds no samples.
    """
    try:
        samples, sample_rate = sf.read(_as_file(source), dtype="float32")
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise _unreadable("cannot decode", source, error) from error
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.shape[0] == 0:
        raise AudioDecodeError(f"{_describe(source)} decodes to 0 samples")
    return samples, sample_rate


def audio_duration(source: AudioSource) -> float:
    """Duration in seconds from the header alone (for MP3, libsndfile scans frame headers, not samples)."""
    try:
        info = sf.info(_as_file(source))
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise _unreadable("cannot read the header of", source, error) from error
    return info.frames / info.samplerate


def _unreadable(what: str, source: AudioSource, error: Exception) -> AudioDecodeError:
    """Why ``source`` could not be read, in words: a missing file, a folder and a path that cannot be opened (a
    symlink loop, a name too long, no permission) are told apart from undecodable data. Asked only on failure
    (no file-system call per clip): libsndfile says "System error" for all of these but the folder, and "Format
    not recognised" for a folder."""
    if isinstance(source, (str, Path)):
        if os.path.isdir(source):
            return AudioDecodeError(f"{source} is a directory, not an audio file")
        try:
            os.stat(source)
        except FileNotFoundError:
            return AudioDecodeError(f"missing file {source}")
        except (OSError, ValueError) as problem:  # ValueError: a NUL byte in the path
            return AudioDecodeError(f"cannot open {source}: {getattr(problem, 'strerror', None) or problem}")
        if not os.access(source, os.R_OK):
            return AudioDecodeError(f"cannot open {source}: permission denied")
    return AudioDecodeError(f"{what} {_describe(source)}: {error}")


@lru_cache(maxsize=16)
def sinc_kernel(orig_sample_rate: int, new_sample_rate: int = SAMPLE_RATE) -> tuple[torch.Tensor, int, int]:
    """torchaudio's windowed-sinc kernel for a rate pair, cached per process (building it costs more than using it).

    Returns:
        ``(kernel (K, new'), stride, width)`` with ``new' = new / gcd`` output phases and ``stride = orig / gcd``.
    """
    transform = torchaudio.transforms.Resample(orig_sample_rate, new_sample_rate)
    divisor = math.gcd(orig_sample_rate, new_sample_rate)
    phases = new_sample_rate // divisor
    return transform.kernel.reshape(phases, -1).T.contiguous(), orig_sample_rate // divisor, transform.width


def resample(waveform: torch.Tensor, orig_sample_rate: int, new_sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample a mono ``(S,)`` waveform to ``ceil(S * new / orig)`` samples; equal to torchaudio's resample.

    torchaudio applies its kernel as a strided conv1d with one input channel, which PyTorch's CPU kernels
    run slowly; the same sums as one matrix product over unfolded windows take half the time.

    >>> resample(torch.zeros(48_000), 48_000).shape
    torch.Size([16000])
    """
    if orig_sample_rate == new_sample_rate:
        return waveform
    kernel, stride, width = sinc_kernel(orig_sample_rate, new_sample_rate)
    padded = F.pad(waveform, (width, width + stride))
    windows = padded.unfold(0, kernel.shape[0], stride)  # (T, K): T windows, one per `stride` input samples
    resampled = (windows @ kernel).reshape(-1)  # (T, new') -> (T * new',), phases interleaved in time order
    return resampled[: math.ceil(new_sample_rate * len(waveform) / orig_sample_rate)]


def normalize_waveform(waveform: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over ``(S,)``, as HF's Wav2Vec2FeatureExtractor (``do_normalize=True``).

    >>> w = normalize_waveform(torch.tensor([1.0, 2.0, 3.0]))
    >>> round(float(w.mean()), 6), round(float(w.var(unbiased=False)), 4)
    (0.0, 1.0)
    """
    # the 1e-7 is HF's: a silent clip stays finite (all zeros) instead of dividing by zero
    mean = waveform.mean()
    var = waveform.var(unbiased=False)
    return (waveform - mean) / torch.sqrt(var + 1e-7)


def load_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode, downmix to mono, resample and normalise: the model's input for one clip, float32 ``(S,)``.

    Raises:
        AudioDecodeError: unreadable or empty data, or samples that are not finite.
    """
    samples, orig_sample_rate = read_audio(source)
    waveform = normalize_waveform(resample(torch.from_numpy(samples), orig_sample_rate, sample_rate))
    if not torch.isfinite(waveform).all():
        raise AudioDecodeError(f"{_describe(source)} holds samples that are not finite")
    return waveform


def _describe(source: AudioSource) -> str:
    if isinstance(source, bytes):
        return f"<{len(source)} bytes of audio>"
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__}>"
