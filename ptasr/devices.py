"""Where and in which precision a trained model runs: ``--device`` and ``--dtype`` of ``ptasr`` and
:meth:`ptasr.inference.Recognizer.to`."""

from __future__ import annotations

import torch

from ptasr.compat import cpu_has_native_bf16
from ptasr.errors import SettingError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` or None: CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:  # "Expected one of cpu, cuda, ... device type at start of device string: gpu"
        raise SettingError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from error
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SettingError(f"device {device!r}: no CUDA GPU is visible here (torch.cuda.is_available() is "
                               f"False); use cpu, or auto to take a GPU only where there is one")
        if resolved.index is not None and resolved.index >= count:
            raise SettingError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return resolved


def resolve_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 where ``device`` computes it natively, else float32; a dtype or its name as given.

    Native bf16 means CUDA GPUs from Ampere on and CPUs with AVX512-BF16 or AMX units. There the matrix
    products and convolutions that are nearly all of inference move half the bytes and run on the wider bf16
    units, and greedy transcripts score the WER of float32 (measured by ``benchmarks/transcribe_rtf.py``).
    Elsewhere bf16 is emulated and slower than float32, so "auto" stays in float32. On a CPU, a model moved to
    bf16 by :meth:`ptasr.inference.Recognizer.to` runs the convolutions and linear layers whose bf16 kernel is
    wrong on this machine in float32 (:mod:`ptasr.precision_probe`), so "auto" does not change the transcript.
    """
    if dtype != "auto":
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    elif device.type == "cpu":
        native = cpu_has_native_bf16()
    else:
        native = False
    return torch.bfloat16 if native else torch.float32
