"""A GPU out-of-memory error during training or validation, told in one line: which batch, and what to change.

torch's own message names allocator figures; what a user can act on is the batch that did not fit (how many
clips, how long the longest) and the settings that shrink what a step holds: smaller batches
(``data.batching.max_batch_seconds``, ``data.batching.batch_size``), recomputing activations (``model.gradient_checkpointing``),
and accumulation (``trainer.accumulate_grad_batches``) to keep the update's size with smaller batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

from ptasr.data.audio import SAMPLE_RATE
from ptasr.errors import UserError


class OutOfMemory(UserError, MemoryError):
    """A batch did not fit in the accelerator's memory; the message names it and the settings that help."""


class BatchInFlight(L.Callback):
    """Remembers the training or validation batch being processed (its clip lengths, no host sync)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.lengths: torch.Tensor | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.stage, self.lengths = "training", batch["lengths"]

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self.stage, self.lengths = "validation", batch["lengths"]


@contextmanager
def out_of_memory_explained(trainer: L.Trainer, datamodule: Any, module: L.LightningModule) -> Iterator[None]:
    """Turn a ``torch.OutOfMemoryError`` raised inside into :class:`OutOfMemory` naming the batch and the fixes."""
    batch = BatchInFlight()
    trainer.callbacks.append(batch)
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise OutOfMemory(out_of_memory_message(batch, trainer, datamodule, module)) from error
    finally:
        trainer.callbacks.remove(batch)


def out_of_memory_message(batch: BatchInFlight, trainer: L.Trainer, datamodule: Any,
                          module: L.LightningModule) -> str:
    """One line: the batch in flight, then the settings to change, each with its current value."""
    if batch.lengths is None:
        where = "before the first batch (the model and optimiser alone do not fit)"
    else:
        lengths = batch.lengths.detach().cpu()
        where = (f"in a {batch.stage} batch of {len(lengths)} clips, the longest "
                 f"{float(lengths.max()) / SAMPLE_RATE if len(lengths) else 0.0:.1f} s, at update "
                 f"{trainer.global_step}")
    batching = getattr(datamodule, "batching", None)  # the data module's BatchSettings (none without one)
    max_seconds = getattr(batching, "max_batch_seconds", None)
    if batch.stage == "validation":
        fixes = (f"lower data.batching.max_batch_seconds (now {max_seconds}) or data.batching.eval_batch_size "
                 f"(now {getattr(batching, 'eval_batch_size', None)})")
    else:
        checkpointing = bool(getattr(module.hparams, "gradient_checkpointing", False))
        fixes = (f"lower data.batching.max_batch_seconds (now {max_seconds}) or data.batching.batch_size "
                 f"(now {getattr(batching, 'batch_size', None)}) and raise trainer.accumulate_grad_batches "
                 f"(now {trainer.accumulate_grad_batches}) to keep the update's size"
                 + ("" if checkpointing else ", or set model.gradient_checkpointing=true (less memory, one more "
                                              "forward pass per layer)"))
    return f"out of memory {where}: {fixes}"
