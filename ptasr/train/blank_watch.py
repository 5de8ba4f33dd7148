"""The CTC blank plateau, watched: a run whose model still outputs (almost) only blanks long after warm-up.

CTC first learns to say nothing: every frame's argmax is the blank, WER is 1.0, and the loss falls slowly. A
healthy run leaves this plateau after some hundreds to a few thousand updates; one that never does is the most
reported wav2vec2 fine-tuning symptom ("the model outputs nothing"). :class:`BlankPlateauWatch` reads the
``train/blank_share`` that :class:`~ptasr.train.CTCHealth` logs, warns once with the usual causes, and can end
the run (cleanly: :class:`~ptasr.train.LastCheckpoint` saves its last update).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from ptasr.compat import should_update_logs
from ptasr.errors import SettingError
from ptasr.train.callbacks import add_text

METRIC = "train/blank_share"


class BlankPlateauWatch(L.Callback):
    """Warns once (log and TensorBoard text ``train/blank_plateau``) when the blank share stays above ``threshold``
    after ``after_updates`` updates; with ``patience``, ends the run once it has stayed there that many updates.

    Checked where Lightning writes its logs (every ``trainer.log_every_n_steps`` updates): the share read is that
    update's training batch, as logged by :class:`~ptasr.train.CTCHealth`, which must come before this callback
    in ``trainer.callbacks``. Under DDP each rank reads its own batch; the ranks stop together.

    Args:
        threshold: share of valid frames whose argmax is the blank above which the model "says nothing".
        after_updates: updates before the first check; set it well past the warm-up (and past
            ``model.freeze_transformer_steps``), where a healthy run of the recipe has left the plateau.
        patience: end the run when every check for this many updates after the warning was above the threshold
            (``trainer.should_stop``: last.ckpt is written, the process exits normally); ``None`` only warns.
    """

    def __init__(self, threshold: float = 0.99, after_updates: int = 5000, patience: int | None = None) -> None:
        if not 0.0 < threshold <= 1.0:
            raise SettingError(f"threshold={threshold} is not a share in (0, 1]")
        self.threshold = threshold
        self.after_updates = after_updates
        self.patience = patience
        self.warned_at: int | None = None  # the update of the warning
        self.plateau_since: int | None = None  # the first update of the current run of checks above threshold
        self._missing_warned = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step < self.after_updates or not should_update_logs(trainer):
            return
        share = trainer.callback_metrics.get(METRIC)
        if share is None:
            if not self._missing_warned:
                rank_zero_warn(f"BlankPlateauWatch reads {METRIC}, which nobody logged: put ptasr.train.CTCHealth "
                               f"before it in trainer.callbacks")
                self._missing_warned = True
            return
        share = float(share)  # host sync, at log points only
        on_plateau = share > self.threshold
        if not on_plateau:
            self.plateau_since = None
        elif self.plateau_since is None:
            self.plateau_since = step
        if on_plateau and self.warned_at is None:
            self.warned_at = step
            self._warn(trainer, pl_module, share)
        if self.patience:
            stuck = self.plateau_since is not None and step - self.plateau_since >= self.patience
            if trainer.strategy.reduce_boolean_decision(stuck, all=False):  # every rank calls it here
                rank_zero_warn(f"[blank plateau] still above {self.threshold:.0%} blank after {self.patience} more "
                               f"updates (BlankPlateauWatch patience): ending the run at update {step}")
                trainer.should_stop = True

    def _warn(self, trainer: L.Trainer, pl_module: L.LightningModule, share: float) -> None:
        text = plateau_advice(share, trainer.global_step, self.threshold, run_settings(trainer, pl_module))
        rank_zero_warn(text)
        if trainer.is_global_zero:
            add_text(trainer, "train/blank_plateau", text, trainer.global_step)

    @property
    def state_key(self) -> str:
        # Several watches (say, a warning one and a stopping one) each keep their own state in a checkpoint.
        return self._generate_state_key(threshold=self.threshold, after_updates=self.after_updates,
                                        patience=self.patience)

    def state_dict(self) -> dict[str, Any]:
        return {"warned_at": self.warned_at, "plateau_since": self.plateau_since}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warned_at = state_dict.get("warned_at")
        self.plateau_since = state_dict.get("plateau_since")


def run_settings(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The run's values the watches' advice quotes (learning rates, warm-up, the blanks of head and data)."""
    hparams = getattr(pl_module, "hparams", {})
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
    data_blank = getattr(getattr(trainer, "datamodule", None), "pad_token_id", None)
    model_blank = getattr(getattr(getattr(pl_module, "model", None), "config", None), "pad_token_id", None)
    return {"lr_now": lr, "lr": hparams.get("lr"), "warmup_steps": hparams.get("warmup_steps"),
            "freeze_transformer_steps": hparams.get("freeze_transformer_steps"),
            "blank_mismatch": data_blank is not None and model_blank is not None and data_blank != model_blank,
            "model_blank": model_blank, "data_blank": data_blank}


def plateau_advice(share: float, step: int, threshold: float, settings: dict[str, Any]) -> str:
    """The warning: what is seen, the usual causes with the run's own values, and what to try.

    >>> print(plateau_advice(0.998, 6000, 0.99, {"lr_now": 1e-6, "lr": 1e-5, "warmup_steps": 500,
    ...       "freeze_transformer_steps": 0, "blank_mismatch": False}).split(": the model")[0])
    [blank plateau] 99.8 % of the frames are blank at update 6000 (threshold 99 %)
    """
    causes = [
        f"a learning rate too low or too high (model.lr={settings.get('lr')}, now {_number(settings.get('lr_now'))}; "
        f"XLS-R fine-tuning uses 3e-5 to 1e-4; too high with a short warm-up, model.warmup_steps="
        f"{settings.get('warmup_steps')}, collapses to blanks too)",
        "too few updates so far (the plateau can last a few thousand updates with a small batch: compare "
        "train/loss, which still falls slowly on a healthy plateau)",
        f"a transformer frozen too long (model.freeze_transformer_steps={settings.get('freeze_transformer_steps')}: "
        f"only the CTC head learns until then)",
        "a vocabulary/blank mismatch (the head's blank must be the data's [PAD]"
        + (f": here the model's blank is {settings.get('model_blank')} and the data's "
           f"{settings.get('data_blank')}" if settings.get("blank_mismatch") else "")
        + "; see the CTC head line at start-up)",
    ]
    tries = ("raise or lower model.lr by 3x, lengthen model.warmup_steps, lower model.freeze_transformer_steps, "
             "check train/infeasible_utterances and val/predictions, or simply train longer")
    return (f"[blank plateau] {share * 100:.1f} % of the frames are blank at update {step} (threshold "
            f"{threshold * 100:.0f} %): the model outputs (almost) nothing. Usual causes: " + "; ".join(causes)
            + f". Try: {tries}.")


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:.3g}"

