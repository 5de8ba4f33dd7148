"""Every fit ends with ``last.ckpt`` at its final update, in process: max_steps between validations, max_epochs,
a callback's stop, and the recipes' use of :class:`~ptasr.train.LastCheckpoint`; and a SIGTERM to a 2-process DDP
fit, which stops every rank at the same update. (Signals sent to a single-process fit are in tests/test_resume.py,
beside the uninterrupted reference run they are compared with.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from helpers import HANG_S, SMALL_MODEL, SMALL_RUN, sigterm_two_ranks

from ptasr.train import LastCheckpoint
from ptasr.train.cli import CONFIG_DIR, cli_main

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



def test_last_in_a_folder_of_its_own_is_found_by_an_evaluation_with_ckpt_path_last(tmp_path: Path) -> None:
    config = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    [last] = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "ptasr.train.LastCheckpoint"]
    last["init_args"] = {"dirpath": str(tmp_path / "my-checkpoints")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    common = ["-c", str(tmp_path / "config.yaml"), "--trainer.logger=false", *SMALL_MODEL, *SMALL_RUN,
              "--trainer.max_time=null", "--trainer.val_check_interval=250"]
    cli_main(["fit", *common, "--trainer.max_steps=2"])
    assert (tmp_path / "my-checkpoints" / "last.ckpt").is_file()
    validated = cli_main(["validate", *common, "--ckpt_path=last"])  # found, not refused
    assert Path(validated.trainer.ckpt_path) == tmp_path / "my-checkpoints" / "last.ckpt"


class TermDuringSanityCheck(L.Callback):
    """Sends SIGTERM to its own process while the sanity check runs (Lightning's handler gets it)."""

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_during_the_sanity_check_ends_the_run_after_the_first_update(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(repo / "train.py"), "fit", f"--trainer.logger.init_args.save_dir={tmp_path}",
               *SMALL_MODEL, *SMALL_RUN, "--trainer.max_steps=10", "--trainer.max_time=null",
               "--trainer.num_sanity_val_steps=1", "--trainer.callbacks+=test_run_end.TermDuringSanityCheck"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_S)
    # Lightning's own handling would raise SIGTERMException (exit status 0) after the first batch, saving nothing.
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    assert _last(tmp_path)["global_step"] == 1

class SlowStepLog(L.Callback):
    """Sleeps before every batch (so that a signal finds the fit running) and appends each finished update to
    ``<folder>/rank<R>.log``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(0.5)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.folder / f"rank{trainer.global_rank}.log", "a") as log:
            log.write(f"{trainer.global_step}\n")


def test_sigterm_stops_every_ddp_rank_at_the_same_update_with_last_ckpt(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(repo / "train.py"), "fit", f"--trainer.logger.init_args.save_dir={tmp_path}",
               *SMALL_MODEL, *SMALL_RUN, "--trainer.max_steps=40", "--trainer.max_time=null",
               "--trainer.val_check_interval=250", "--trainer.precision=32-true",
               "--trainer.callbacks+=test_run_end.SlowStepLog", f"--trainer.callbacks.folder={tmp_path}",
               "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    returncode, updates, stderr = sigterm_two_ranks(command, tmp_path, env, updates_first=2, what="DDP")
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert updates[0] == updates[1]  # both ranks stopped after the same update
    assert 2 <= updates[0][-1] < 40
    saved = torch.load(tmp_path / "demo" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert saved["global_step"] == updates[0][-1]
