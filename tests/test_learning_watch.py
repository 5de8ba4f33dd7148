"""A run that is not learning is said once, whatever its blank share (issue 22 o); a fit ended before its schedule
says at which update of how many, and whether the model has learned (issue 21 item 4). In-process fits of the
small model of the training tests."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml
from helpers import SMALL_MODEL, SMALL_RUN
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptasr.train.cli import cli_main


def _callback(class_path: str, **init_args: object) -> str:
    return "--trainer.callbacks+=" + yaml.safe_dump({"class_path": class_path, "init_args": init_args},
                                                    default_flow_style=True).strip()


def _fit(save_dir: Path, *extra: str) -> L.Trainer:
    args = ["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
            "--trainer.max_time=null", "--trainer.limit_val_batches=1", *extra]
    return cli_main(args).trainer


def _messages(warned: pytest.WarningsRecorder, start: str) -> list[str]:
    return [str(w.message) for w in warned if str(w.message).startswith(start)]


def _lines(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith(start)]


def test_a_model_that_emits_symbols_but_no_words_is_said_to_be_not_learning_once(
        tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    # The blank's bias at -100: no frame is blank (BlankPlateauWatch stays silent), and no word comes out right.
    _fit(tmp_path, "--trainer.max_steps=6", "--trainer.val_check_interval=2", "--trainer.precision=bf16-mixed",
         _callback("test_blank_watch.BlankBias", value=-100.0),
         _callback("ptasr.train.BlankPlateauWatch", after_updates=1),
         _callback("ptasr.train.NotLearningWatch", after_updates=3))
    [warning] = _messages(recwarn, "[not learning]")  # once, at the first validation past update 3
    assert re.match(r"\[not learning\] validation WER \d+\.\d{3} / CER \d+\.\d{3} at update 4 \(blank share 0\.00\), "
                    r"past 3 updates", warning), warning
    for cause in ("model.lr=", "trainer.precision=bf16-mixed", "labels that do not match the audio",
                  "too few updates"):
        assert cause in warning
    assert not _messages(recwarn, "[blank plateau]")
    events = EventAccumulator(str(tmp_path / "demo" / "version_0"), size_guidance={"tensors": 0})
    events.Reload()
    [text] = events.Tensors("val/not_learning/text_summary")
    assert text.step == 4 and b"Usual causes" in text.tensor_proto.string_val[0]


def test_the_recipes_watch_whether_the_model_learns(recipe_configs: dict[str, dict[str, Any]]) -> None:
    for name, config in recipe_configs.items():
        watches = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "ptasr.train.NotLearningWatch"]
        assert len(watches) == 1 and watches[0]["init_args"]["after_updates"] > config["model"]["warmup_steps"], name


def test_a_callback_stop_before_the_schedule_says_where_and_that_nothing_is_learned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a stop at update 3, as a watch's patience makes one
    with caplog.at_level(logging.INFO):
        trainer = _fit(tmp_path, "--trainer.max_steps=20", "--trainer.val_check_interval=2",
                       _callback("test_run_end._StopAt", step=3))
    assert trainer.global_step == 3
    [line] = _lines(caplog, "[run]")
    assert re.match(r"\[run\] a callback \(trainer.should_stop\) ended the run early, after update 3 of 20 \(15 % of "
                    r"its schedule; validation WER is still \d+\.\d{3}: the model has not learned yet\)", line), line


class _SlowUpdates(L.Callback):
    """Makes every update last a second more, so that a max_time of 1 s ends the run after one or two."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(1.0)


def test_max_time_before_the_schedule_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        trainer = _fit(tmp_path, "--trainer.max_steps=20", "--trainer.val_check_interval=250",
                       "--trainer.max_time=00:00:00:01", _callback("test_learning_watch._SlowUpdates"))
    assert 1 <= trainer.global_step < 20
    [line] = _lines(caplog, "[run]")
    assert line.startswith(f"[run] trainer.max_time ended the run early, after update {trainer.global_step} of 20"), line
    assert "the model has not learned yet" in line  # Lightning validates once more as a run stops


def test_a_run_that_completes_its_schedule_says_nothing_of_an_early_end(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, "--trainer.max_steps=3", "--trainer.val_check_interval=250")
    assert not _lines(caplog, "[run]")
