"""A run whose updates keep coming out non-finite ends with one line; a few non-finite updates do not end it.

Non-finite updates are skipped and counted on device (``train/skipped_steps``); ``model.nonfinite_patience``
consecutive ones end the run with :class:`TrainingDiverged`, read lazily at Lightning's log points.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import HANG_S, SMALL_MODEL, SMALL_RUN, dev_split_data, small_module

from ptasr.data.datamodule import SpeechDataModule
from ptasr.train.module import TrainingDiverged, Wav2Vec2CTCModule

REPO = Path(__file__).resolve().parents[1]


class _NaNLossAt(Wav2Vec2CTCModule):
    """Poisons the loss of the updates in ``nan_at`` (values of ``global_step``), as diverging batches would."""

    nan_at: set[int] = set()

    def training_step(self, batch, batch_idx):
        outputs = super().training_step(batch, batch_idx)
        if self.global_step in self.nan_at:
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs


def _setup_fit(nan_at: set[int], max_steps: int, log_every_n_steps: int,
         **hparams: object) -> tuple[L.Trainer, Wav2Vec2CTCModule, SpeechDataModule]:
    """Trainer, small model and data to fit: the dev split, 50 clips in batches of 8, so 7 updates per epoch."""
    data = dev_split_data()
    module = small_module(data.vocab, lr=1e-3, **hparams)
    module.__class__ = _NaNLossAt  # same weights and hparams, poisoned updates
    module.nan_at = nan_at
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, limit_val_batches=0, logger=False,
                        log_every_n_steps=log_every_n_steps, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    return trainer, module, data


def test_non_finite_updates_below_the_patience_do_not_end_the_run() -> None:
    # Runs of 2 and 2 non-finite updates, patience 3, checked after every update.
    trainer, module, data = _setup_fit({1, 2, 4, 5}, max_steps=8, log_every_n_steps=1, nonfinite_patience=3)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 8 and int(module.skipped_steps) == 4
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_no_patience_never_ends_the_run() -> None:
    trainer, module, data = _setup_fit(set(range(1, 6)), max_steps=6, log_every_n_steps=1, nonfinite_patience=None)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 6 and int(module.skipped_steps) == 5


def test_patience_ends_the_run_at_the_next_log_point_naming_the_update() -> None:
    # Updates 2, 3, 4 (global_step 1, 2, 3) are non-finite: the patience of 3 runs out at update 4. The count
    # is read only at log points (updates 3, 6, ...), so the run stops during update 6 and names update 4.
    trainer, module, data = _setup_fit(set(range(1, 100)), max_steps=20, log_every_n_steps=3, nonfinite_patience=3)
    with pytest.raises(TrainingDiverged, match=r"the 3 updates up to update 4 all had non-finite") as error:
        trainer.fit(module, datamodule=data)
    assert "model.lr" in str(error.value) and "bf16-mixed" in str(error.value)  # the way out
    assert trainer.global_step == 5


def test_a_diverging_ddp_fit_ends_on_every_rank_with_one_line(tmp_path: Path) -> None:
    """An infinite learning rate turns the weights into NaN at the first update; every later one is skipped."""
    command = [
        sys.executable, str(REPO / "train.py"), "fit",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *SMALL_MODEL, *SMALL_RUN,
        "--model.lr=.inf",  # YAML's infinity
        "--model.nonfinite_patience=3",
        "--trainer.max_steps=20",
        "--trainer.limit_val_batches=0",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two ranks share the two cores
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr + result.stdout  # it really ran on two ranks
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("train.py: error:")]
    # one line for both ranks (each raised at the same update), the last one, and no traceback
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    assert "training diverged: the 3 updates up to update 4" in errors[0]
    assert "Traceback" not in result.stderr


def test_a_resumed_fit_whose_first_update_is_non_finite_stops_at_once(tmp_path: Path) -> None:
    trainer, module, data = _setup_fit(set(), max_steps=2, log_every_n_steps=50)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    # Every update after the restore is non-finite, as from a broken state; the patience (100) is far off and the
    # counts are read at update 50 only. 76ea759 trained on, skipping every update, and validated and saved.
    resumed, module, data = _setup_fit(set(range(2, 100)), max_steps=10, log_every_n_steps=50)
    with pytest.raises(TrainingDiverged, match=r"the first update after resuming \(update 3\) had non-finite"):
        resumed.fit(module, datamodule=data, ckpt_path=tmp_path / "step2.ckpt")
    assert resumed.global_step == 2


def test_a_checkpoint_with_non_finite_weights_is_refused_before_it_is_restored(tmp_path: Path) -> None:
    from ptasr.errors import CheckpointError

    trainer, module, data = _setup_fit(set(), max_steps=1, log_every_n_steps=50)
    trainer.fit(module, datamodule=data)
    with torch.no_grad():
        module.model.lm_head.weight[0, 0] = float("nan")
    trainer.save_checkpoint(tmp_path / "broken.ckpt")
    resumed, fresh, data = _setup_fit(set(), max_steps=3, log_every_n_steps=50)
    before = {name: p.detach().clone() for name, p in fresh.named_parameters()}
    with pytest.raises(CheckpointError, match=r"broken.ckpt holds non-finite \(inf/NaN\) weights in 1 tensors "
                                              r"\(model.lm_head.weight\)"):
        resumed.fit(fresh, datamodule=data, ckpt_path=tmp_path / "broken.ckpt")
    assert all(torch.equal(p, before[name]) for name, p in fresh.named_parameters())  # nothing restored
