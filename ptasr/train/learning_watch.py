"""A run that is not learning, said once; a run that ends before its schedule, said in one line.

:class:`BlankPlateauWatch` catches a model that outputs (almost) only blanks. A model can fail to learn with a
lower blank share too: stuck at CTC's unigram plateau (train loss flat near 3, a few frequent symbols and blanks,
0.76-0.88 blank), or emitting symbols that do not match the audio (a low-precision kernel that computes wrongly,
labels that belong to other clips). What every such run shares is a validation WER of ~1.0 long after warm-up:
:class:`NotLearningWatch` reads ``val/wer`` and ``val/cer`` (logged by :class:`~ptasr.train.WERMetrics`) and warns
once, in the log and in TensorBoard (text ``val/not_learning``), with the usual causes.

:func:`early_end_line` is what :class:`~ptasr.train.LastCheckpoint` says when ``max_time``, a callback or a signal
ends a fit before its ``max_steps``/``max_epochs``: at which update of how many, and whether the model has learned.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_warn

from ptasr.errors import SettingError
from ptasr.train.blank_watch import run_settings
from ptasr.train.callbacks import add_text

# A validation WER at or above this: the model transcribes (next to) no word right.
NOT_LEARNED_WER = 0.98


class NotLearningWatch(L.Callback):
    """Warns once (log and TensorBoard text ``val/not_learning``) when, after ``after_updates`` updates, a
    validation's WER is still at or above ``threshold``, whatever the share of blank frames.

    Args:
        after_updates: updates before the first check: past the warm-up, where a healthy run of the recipe already
            transcribes some words (the demo: WER 0.95 at update 500, 0.74 at 1000).
        threshold: the validation WER at or above which the model "has not learned".
    """

    def __init__(self, after_updates: int = 5000, threshold: float = NOT_LEARNED_WER) -> None:
        if not 0.0 < threshold <= 1.0:
            raise SettingError(f"threshold={threshold} is not a WER in (0, 1]")
        self.after_updates = after_updates
        self.threshold = threshold
        self.warned_at: int | None = None  # the update of the warning

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or self.warned_at is not None or step < self.after_updates:
            return
        wer = trainer.callback_metrics.get("val/wer")
        if wer is None or float(wer) < self.threshold:
            return
        self.warned_at = step
        text = not_learning_advice(trainer, pl_module, self.after_updates)
        rank_zero_warn(text)
        if trainer.is_global_zero:
            add_text(trainer, "val/not_learning", text, step)

    @property
    def state_key(self) -> str:
        # Several watches (a config's and one added on the command line) each keep their own state.
        return self._generate_state_key(after_updates=self.after_updates, threshold=self.threshold)

    def state_dict(self) -> dict[str, Any]:
        return {"warned_at": self.warned_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warned_at = state_dict.get("warned_at")


def not_learning_advice(trainer: L.Trainer, pl_module: L.LightningModule, after_updates: int) -> str:
    """The warning: the validation's numbers, then the usual causes with the run's own values."""
    metrics, settings = trainer.callback_metrics, run_settings(trainer, pl_module)
    blank = metrics.get("train/blank_share")
    seen = (f"validation WER {_share(metrics.get('val/wer'))} / CER {_share(metrics.get('val/cer'))} at update "
            f"{trainer.global_step}" + (f" (blank share {float(blank):.2f})" if blank is not None else ""))
    low_precision = not str(trainer.precision).startswith(("32", "64"))  # a float32 run has no such kernel
    causes = [
        f"a learning rate too low or too high (model.lr={settings.get('lr')}, now {_number(settings.get('lr_now'))}, "
        f"model.warmup_steps={settings.get('warmup_steps')})",
        *([f"a low-precision kernel that computes wrongly on this machine (trainer.precision={trainer.precision}: "
           f"compare a short run with --trainer.precision 32)"] if low_precision else []),
        "labels that do not match the audio (compare the sample predictions in TensorBoard with their references, "
        "read the alphabet table at start-up, check that each manifest row's text is its own clip's)",
        "too few updates (a small batch can take thousands to leave CTC's plateau, while train/loss falls)",
    ]
    return (f"[not learning] {seen}, past {after_updates} updates (NotLearningWatch after_updates): the model "
            f"has not learned to transcribe. Usual causes: " + "; ".join(causes) + ".")


def early_end_line(trainer: L.Trainer) -> str | None:
    """One line for a fit that ``max_time`` or a callback (``trainer.should_stop``) ended before its schedule
    (``max_steps``, ``max_epochs``); None when it ran it all."""
    progress = schedule_progress(trainer)
    if not progress:
        return None
    cause = "trainer.max_time" if _time_is_up(trainer) else "a callback (trainer.should_stop)"
    return (f"[run] {cause} ended the run early, after update {trainer.global_step}{progress}; `--ckpt_path last` "
            f"continues it")


def schedule_progress(trainer: L.Trainer) -> str:
    """`` of 2000 (6 % of its schedule; validation WER is still 1.000: ...)`` after "update N" when the fit is
    short of its schedule, else ``""``."""
    total, step = _scheduled_updates(trainer), trainer.global_step
    if total is None or step >= total:
        return ""
    wer = trainer.callback_metrics.get("val/wer")
    learned = ("no validation yet" if wer is None else
               f"validation WER is still {float(wer):.3f}: the model has not learned yet"
               if float(wer) >= NOT_LEARNED_WER else f"validation WER {float(wer):.3f}")
    return f" of {total} ({100 * step / total:.0f} % of its schedule; {learned})"


def _scheduled_updates(trainer: L.Trainer) -> int | None:
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        return trainer.max_steps
    total = trainer.estimated_stepping_batches  # max_epochs' updates
    return int(total) if math.isfinite(total) else None


def _time_is_up(trainer: L.Trainer) -> bool:
    remaining = [timer.time_remaining() for timer in trainer.callbacks if isinstance(timer, Timer)]
    return any(seconds is not None and seconds <= 0 for seconds in remaining)


def _number(value: Any) -> str:
    return "?" if value is None else f"{float(value):.3g}"


def _share(value: Any) -> str:
    return "?" if value is None else f"{float(value):.3f}"
