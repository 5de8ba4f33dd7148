"""A run in bf16/fp16 on a CPU probes its model's kernels first: see :mod:`ptasr.precision_probe`."""

from __future__ import annotations

import lightning as L
import torch

from ptasr.precision_probe import guard_low_precision


def precision_dtype(precision: str) -> torch.dtype:
    """The low dtype a Lightning precision setting computes in (``"bf16-mixed"`` -> bfloat16), else float32."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


class LowPrecisionProbe(L.Callback):
    """Before fit, validate, test or predict on a CPU in bf16/fp16: the modules whose low-precision kernel is
    wrong on this machine run in float32, and one line says which (the module adds this callback to every run)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The wav2vec2 itself: its forward is what every step calls (the system's own forward is not).
        guard_low_precision(pl_module.model, precision_dtype(str(trainer.precision)), trainer.strategy.root_device,
                            gradients=stage == "fit")
