"""A CPU run whose cores get busy after it started: fewer intra-op threads while other processes use them.

:mod:`ptasr.threads` chooses spinning OpenMP threads when a run starts on free CPUs (the fastest there). When
another process comes later, a spinning team of one thread per core waits at every parallel region for the
member the kernel has descheduled; a team no larger than the CPUs left free does not. The OpenMP wait policy is
fixed once torch has loaded, but the team's size is not: every ``every_seconds`` this callback measures other
processes' CPU use (:class:`~ptasr.threads.OtherProcessesMeter`) and sets torch's intra-op threads to what
:func:`~ptasr.threads.threads_beside` allows, back to the full team when they are gone, saying so in one line
each time. It does nothing on an accelerator, or where the user chose the threads or their wait policy
(``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` and the like), or where the run started on busy CPUs (sleeping threads
then). Figures: ``benchmarks/README.md`` (``cpu_under_load.py``, "load that comes later").
"""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ptasr import threads


class CPUThreadsUnderLoad(L.Callback):
    """Shrinks and restores torch's intra-op thread team of a CPU fit as other processes come and go (the
    module adds it to every run; see the module docstring)."""

    def __init__(self, every_seconds: float = 10.0, enabled: bool | None = None) -> None:
        self.every_seconds = every_seconds
        self.enabled = enabled  # None: as ptasr.threads decided when the entry point ran
        self._meter: threads.OtherProcessesMeter | None = None
        self._base = self._threads = 0
        self._checked = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        enabled = threads.adapts_to_load() if self.enabled is None else self.enabled
        if not enabled or trainer.strategy.root_device.type != "cpu":
            return
        self._meter = threads.OtherProcessesMeter()
        self._base = self._threads = torch.get_num_threads()
        self._checked = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self._meter is None or time.monotonic() - self._checked < self.every_seconds:
            return
        self._checked = time.monotonic()
        busy = self._meter.sample()
        if busy is None:
            return
        wanted = threads.threads_beside(busy, self._base)
        if wanted != self._threads:
            torch.set_num_threads(wanted)
            why = (f"other processes keep {busy:.1f} of {self._meter.cpus} CPUs busy" if wanted < self._base
                   else "the CPUs are free again")
            rank_zero_info(f"CPU threads: {self._threads} -> {wanted} at update {trainer.global_step} ({why})")
            self._threads = wanted

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._meter is not None and self._threads != self._base:
            torch.set_num_threads(self._base)  # what follows in this process (a test, an export) gets its team back
        self._meter = None
