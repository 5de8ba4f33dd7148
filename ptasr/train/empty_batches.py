"""Batches with no clip (every clip unreadable, or a spare DDP rank's share): skipped alone, joined under DDP.

Under DDP every rank must take part in the same collectives: the gradient all-reduce of each training step and
the epoch-end all-reduce of each logged, synced metric. A rank with an empty batch therefore still joins them,
with values that change nothing.
"""

from __future__ import annotations

import lightning as L
import torch


def empty_training_loss(module: L.LightningModule) -> torch.Tensor | None:
    """What ``training_step`` returns for an empty batch: ``None`` alone (Lightning skips backward and the
    update); under DDP a zero loss over every trainable parameter, so this rank joins the gradient all-reduce
    with zero gradients."""
    if module.trainer.world_size == 1:
        return None
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


def log_empty_evaluation_loss(module: L.LightningModule, name: str) -> None:
    """Under DDP, log ``name`` with weight 0 (leaving the weighted mean unchanged), so that the epoch-end
    all-reduce of the loss finds it on every rank."""
    if module.trainer.world_size > 1:
        module.log(name, torch.zeros((), device=module.device), batch_size=0, sync_dist=True)
