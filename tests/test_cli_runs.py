"""What train.py shows and leaves around a run (issue 22 j, k, n): a resumed run is shown as its version number
without the head carry-over line of a head it replaces; a fit that fails during setup leaves no run folder; a
checkpoint's own vocabulary and normaliser rule when it is evaluated on other data. In-process, on the small
model of the training tests and the bundled corpus."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest

from ptasr.data.text import Vocabulary
from ptasr.train.cli import cli_main
from helpers import SMALL_MODEL, SMALL_RUN, small_module

CARRY_OVER = "CTC head rebuilt for the data's"


def _fit(save_dir: Path, *extra: str) -> L.Trainer:
    args = ["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
            "--trainer.max_time=null", "--trainer.limit_val_batches=1", *extra]
    return cli_main(args).trainer


def test_a_resumed_run_shows_its_version_number_and_no_carry_over_line(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    pretrained = tmp_path / "other-language"  # a model of another vocabulary: its head is rebuilt on the first fit
    small_module(Vocabulary.build(["xyz"])).model.save_pretrained(pretrained)
    Vocabulary.build(["xyz"]).save(pretrained)
    with caplog.at_level(logging.WARNING):
        _fit(tmp_path, f"--model.pretrained={pretrained}", "--trainer.max_steps=2")
    assert CARRY_OVER in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        trainer = _fit(tmp_path, f"--model.pretrained={pretrained}", "--trainer.max_steps=3", "--ckpt_path=last")
    assert trainer.global_step == 3 and trainer.log_dir == str(tmp_path / "demo" / "version_0")
    assert trainer.progress_bar_callback.get_metrics(trainer, trainer.lightning_module)["v_num"] == 0
    assert CARRY_OVER not in caplog.text  # the checkpoint's head was restored: nothing was carried over
