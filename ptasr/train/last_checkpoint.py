"""``last.ckpt`` after every validation and at whatever ends a fit, so that no run ends empty-handed.

Lightning writes a checkpoint when a ``ModelCheckpoint`` is due (after a validation, every N updates ...), so a
fit that stops in between -- ``max_steps`` not a multiple of ``val_check_interval``, ``max_time``, Ctrl-C,
the SIGTERM with which SLURM and cloud schedulers pre-empt a job -- loses every update since the last one.
:class:`LastCheckpoint` also writes ``last.ckpt`` at each of those ends, from the same consistent place
Lightning saves a mid-epoch checkpoint (the end of a finished update, before the loop moves on), so
``--ckpt_path last`` resumes it exactly, sampler position and random streams included.

Signals: the first SIGINT (Ctrl-C) or SIGTERM lets the update in progress finish, writes ``last.ckpt`` and
ends the process with status 128 + the signal number (130, 143), as a shell reports a process ended by that
signal; a scheduler sees a pre-empted job, not a finished one. A second SIGINT or SIGTERM stops at once,
without saving, with the same status. A signal that arrives during a validation takes effect when the validation
ends (its metrics and the best checkpoint stay consistent with last.ckpt); one during the start (checkpoint
restore, sanity check) after the first update. The handlers replace Lightning's as the sanity check starts:
Lightning's would end a sanity check of several batches with ``SIGTERMException``, exit status 0.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from ptasr.compat import last_saved_step, save_checkpoint_now, take_over_sigterm
from ptasr.train.learning_watch import early_end_line, schedule_progress

# The signals that end a run with a checkpoint: Ctrl-C, and what schedulers and `kill` send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(SystemExit):
    """A fit ended by a signal after saving ``last.ckpt``; the exit status is 128 + the signal number."""

    def __init__(self, signum: signal.Signals, message: str) -> None:
        super().__init__(128 + int(signum))
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every validation and at the end of every fit, however it ends.

    Written at the end of the update that ends the run: the ``max_steps``-th, the one after which ``max_time``
    or another callback (``trainer.should_stop``) stops it, or the one in progress when SIGINT/SIGTERM came
    (see the module docstring); and at the end of the last epoch of ``max_epochs``. When a validation follows at
    the same update (Lightning validates before it stops), last.ckpt is written again after it, so that it
    also holds the callbacks' state after that validation (the best checkpoint's score).

    Under DDP every rank stops at the same update: at the end of each update the ranks agree on whether any of
    them got a signal (one all-reduce of a flag; none on a single device).

    Args:
        dirpath: the checkpoint folder; ``None`` is ``<run folder>/checkpoints``, as for ``ModelCheckpoint``.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        # No monitor, one file: the newest checkpoint, overwritten. (ModelCheckpoint's own `save_last` writes
        # last.ckpt only beside a new best checkpoint, so a run whose WER stopped improving would resume from
        # its best step.) No version counter: in a run folder that was moved or copied, the restored state names
        # last.ckpt at its old path, and ModelCheckpoint would write last-v1.ckpt beside the stale last.ckpt.
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, save_top_k=1,
                         enable_version_counter=False)
        self._signal: signal.Signals | None = None
        self._previous_handlers: dict[signal.Signals, Any] = {}
        self._seen_step = -1  # the update whose end was last looked at
        self._end_step = -1  # the update at which this run was saved for ending

    # --- the ends of a run ---------------------------------------------------------------------------------

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over_signals(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen_step = trainer.global_step
        self._end_step = -1
        self._take_over_signals(trainer)

    def _take_over_signals(self, trainer: L.Trainer) -> None:
        # Installed after Lightning's own SIGTERM handler (registered just before the sanity check), which they
        # replace: Lightning's raises SIGTERMException at the next batch end (exit status 0, no checkpoint).
        if self._previous_handlers:
            return  # already installed at the sanity check
        # A SIGTERM between Lightning's registration and now reached Lightning's handler: it counts as ours, so
        # the first update ends the run with last.ckpt (and Lightning's loops no longer end the run for it).
        self._signal = signal.SIGTERM if trainer.received_sigterm else None
        take_over_sigterm(trainer)
        self._install_handlers()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == self._seen_step:
            return  # an accumulating (or skipped empty) batch: the update is not finished
        self._seen_step = trainer.global_step
        if trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False):
            self._stop_for_signal(trainer)
        # Timer (max_time) and other callbacks run before any ModelCheckpoint (Lightning orders them last).
        reached_max_steps = 0 <= trainer.max_steps <= trainer.global_step
        if trainer.should_stop or reached_max_steps:
            self._save(trainer)
            self._end_step = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.global_step == self._end_step:
            self._save(trainer)  # again, after the validation that followed the end-of-run save
        else:
            super().on_validation_end(trainer, pl_module)
        if trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False):
            if last_saved_step(self) != trainer.global_step:
                self._save(trainer)
            self._stop_for_signal(trainer, saved=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The end of the last epoch (max_epochs), or of a stop that came at an epoch's end: the epoch is complete,
        # so this checkpoint resumes with the next one.
        if last_saved_step(self) != trainer.global_step:
            self._save(trainer)
        self._restore_handlers()
        if (line := early_end_line(trainer)) is not None:  # max_time or a callback, short of max_steps/max_epochs
            rank_zero_info(line)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _save(self, trainer: L.Trainer) -> None:
        save_checkpoint_now(self, trainer)

    def _stop_for_signal(self, trainer: L.Trainer, saved: bool = False) -> None:
        if not saved:
            self._save(trainer)
        signum = self._signal or signal.SIGTERM  # a rank that got no signal itself follows the one that did
        message = (f"stopped by {signum.name} after update {trainer.global_step}{schedule_progress(trainer)}; saved "
                   f"{self.best_model_path} "
                   f"(`--ckpt_path last` resumes it)")
        rank_zero_info(f"[LastCheckpoint] {message}")
        raise RunStopped(signum, message)

    # --- signals -------------------------------------------------------------------------------------------

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:
            # The second one: stop at once, wherever the process is (a save in progress leaves the previous
            # checkpoint, see AtomicCheckpointIO). A SystemExit goes through Lightning's teardown and keeps its
            # status; KeyboardInterrupt would become exit status 1.
            self._restore_handlers()
            second = signal.Signals(signum)
            rank_zero_info(f"\n[LastCheckpoint] a second {second.name}: stopping now, without saving")
            raise RunStopped(second, f"stopped at once by a second {second.name}, without saving; last.ckpt is "
                                     f"the one saved before")
        self._signal = signal.Signals(signum)
        rank_zero_info(f"\n[LastCheckpoint] {self._signal.name}: saving last.ckpt at the end of this update, then "
                       f"stopping; send it again to stop at once without saving")
