"""Where and in which precision a trained model runs: ``--device`` and ``--dtype`` of ``ptasr`` and
:meth:`ptasr.recognition.recognizer.Recognizer.to`."""

from __future__ import annotations

import torch

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
    """``"auto"``: bfloat16 on a CUDA GPU that computes it natively, else float32; a dtype or its name as given.

    On Ampere and later GPUs the matrix products and convolutions that are nearly all of inference move half
    the bytes and run on the wider bf16 units. On a CPU "auto" is float32, even where bf16 is native: there
    bf16 changed 2 of 230 words of a half-trained demo model's transcripts on the bundled test split (its WER
    0.0087 from float32's), and its kernels differ by vendor and ISA (oneDNN's AMX grouped conv is wrong), so
    the speed it buys is not worth a transcript that depends on the machine. ``--dtype bfloat16`` on a CPU
    still works, with the convolutions and linear layers whose bf16 kernel is wrong on this machine run in
    float32 (:mod:`ptasr.precision_probe`, applied by :meth:`ptasr.recognition.recognizer.Recognizer.to`).
    """
    if dtype != "auto":
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float32
