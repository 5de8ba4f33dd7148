"""The global random streams in checkpoints, so a resumed run draws what the uninterrupted one would have.

Lightning saves no RNG state, and resuming re-seeds from ``seed_everything``: without this, the dropout masks
after a resume would differ from those of an uninterrupted run. :class:`RandomStateCheckpoint` writes the
states into the checkpoint's ``"ptasr"`` entry and restores them when a Trainer resumes a fit; the module
adds it to every Trainer it runs in (``configure_callbacks``), so no config has to name it.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from ptasr.recognition.trained_model import ENTRY


def rng_states() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, ``random``, numpy) as tensors, ints and lists only,
    so that the checkpoint still loads with ``torch.load(weights_only=True)``."""
    numpy_state = np.random.get_state(legacy=False)
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                           "pos": numpy_state["state"]["pos"]}},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned.

    >>> saved = rng_states()
    >>> first = (torch.rand(2), random.random(), np.random.rand())
    >>> set_rng_states(saved)
    >>> second = (torch.rand(2), random.random(), np.random.rand())
    >>> torch.equal(first[0], second[0]) and first[1:] == second[1:]
    True
    """
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {"key": key, "pos": numpy_state["state"]["pos"]}})
    # One state per device: restored only onto the same number of GPUs (a resume on other hardware cannot
    # reproduce the GPU streams anyway).
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class RandomStateCheckpoint(L.Callback):
    """Saves the random states in ``checkpoint["ptasr"]["rng"]``; a resumed fit restores them."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault(ENTRY, {})["rng"] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Only a Trainer resuming a fit continues the random streams; validate/test/predict leave them alone.
        saved = (checkpoint.get(ENTRY) or {}).get("rng")
        if trainer.state.fn == "fit" and saved is not None:
            self._to_restore = saved

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # The saved random states are restored just before the first update after a resume, not on loading:
        # between the two, Lightning starts a new iterator over the train loader, and torch's DataLoader
        # draws its worker base seed from the global RNG -- a draw the uninterrupted run made at the start
        # of the epoch, before a mid-epoch checkpoint was taken. (From a checkpoint at the very end of an
        # epoch the uninterrupted run draws again before its next update and the resumed one does not,
        # until the train loader gets a generator of its own; tests/test_resume.py marks that case.)
        if self._to_restore is not None:
            set_rng_states(self._to_restore)
            self._to_restore = None
