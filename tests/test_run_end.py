"""Every fit ends with ``last.ckpt`` at its final update, in process: max_steps between validations, max_epochs,
a callback's stop, and the recipes' use of :class:`~ptasr.train.LastCheckpoint`. (Signals sent to a real
subprocess fit are in tests/test_resume.py, beside the uninterrupted reference run they are compared with.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from ptasr.train import LastCheckpoint
from ptasr.train.cli import CONFIG_DIR, cli_main
from helpers import SMALL_MODEL, SMALL_RUN

# The dev split: 50 clips in batches of 8 are 7 updates per epoch.
EPOCH = 7


def _fit(save_dir: Path, *extra: str) -> L.Trainer:
    # SMALL_RUN validates every 2 batches; the runs below override it where it matters.
    args = ["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
            "--trainer.max_time=null", "--trainer.limit_val_batches=1", *extra]
    return cli_main(args).trainer


def _last(save_dir: Path) -> dict:
    return torch.load(save_dir / "demo" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)


def test_max_steps_between_validations_leaves_last_at_the_final_update(tmp_path: Path) -> None:
    # The demo config's own validation interval (250) is far beyond 7 updates: nothing but LastCheckpoint saves.
    trainer = _fit(tmp_path, "--trainer.max_steps=7", "--trainer.val_check_interval=250")
    assert trainer.global_step == 7
    assert _last(tmp_path)["global_step"] == 7
    assert [p.name for p in (tmp_path / "demo" / "version_0" / "checkpoints").iterdir()] == ["last.ckpt"]


def test_max_steps_on_a_validation_step_saves_after_that_validation(tmp_path: Path) -> None:
    _fit(tmp_path, "--trainer.max_steps=4", "--trainer.val_check_interval=2")
    checkpoint = _last(tmp_path)
    assert checkpoint["global_step"] == 4
    # Written again after the validation at update 4 (the second of one batch each), so the best checkpoint's
    # state saved in it has seen that validation too.
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]["completed"] == 2


def test_max_epochs_leaves_last_at_the_end_of_the_epoch(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, "--trainer.max_steps=-1", "--trainer.max_epochs=1", "--trainer.val_check_interval=5")
    assert trainer.global_step == EPOCH
    assert _last(tmp_path)["global_step"] == EPOCH


class _StopAt(L.Callback):
    """Ends the run at an update, as max_time or a watchdog's patience does (``trainer.should_stop``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_a_callback_stopping_mid_epoch_leaves_last_there_and_it_resumes(tmp_path: Path) -> None:
    stopper = {"class_path": "test_run_end._StopAt", "init_args": {"step": 3}}
    _fit(tmp_path, "--trainer.max_steps=20", "--trainer.val_check_interval=250",
         f"--trainer.callbacks+={yaml.safe_dump(stopper, default_flow_style=True).strip()}")
    checkpoint = _last(tmp_path)
    assert checkpoint["global_step"] == 3
    # Saved mid-epoch, not at the epoch end Lightning runs when it stops: the resume continues the epoch.
    assert checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    resumed = _fit(tmp_path, "--ckpt_path=last", "--trainer.max_steps=5", "--trainer.val_check_interval=250")
    assert resumed.global_step == 5
    loops = _last(tmp_path)["loops"]["fit_loop"]
    assert loops["epoch_progress"]["current"]["completed"] == 0  # still the first epoch,
    assert loops["epoch_loop.batch_progress"]["current"]["ready"] == 5  # at its fifth batch


def test_the_recipes_end_every_run_with_last_checkpoint(recipe_configs: dict[str, dict[str, Any]]) -> None:
    for name, config in recipe_configs.items():
        callbacks = config["trainer"]["callbacks"]
        assert "ptasr.train.LastCheckpoint" in [c["class_path"] for c in callbacks], name
    demo = cli_main(["-c", str(CONFIG_DIR / "demo.yaml")], run=False)
    assert sum(isinstance(c, LastCheckpoint) for c in demo.trainer.callbacks) == 1
