"""The blank-plateau watchdog: one warning (log and TensorBoard) past ``after_updates`` when nearly every frame is
blank, and with ``patience`` a clean end of the run with last.ckpt at its final update."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from helpers import SMALL_MODEL, SMALL_RUN
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptasr.train.cli import cli_main


class BlankBias(L.Callback):
    """Sets the head's blank bias at the start: +100 makes every frame blank, -100 none."""

    def __init__(self, value: float) -> None:
        self.value = value

    def on_train_start(self, trainer, pl_module) -> None:
        with torch.no_grad():
            pl_module.model.lm_head.bias[pl_module.model.config.pad_token_id] = self.value


def _callback(class_path: str, **init_args: object) -> str:
    return "--trainer.callbacks+=" + yaml.safe_dump({"class_path": class_path, "init_args": init_args},
                                                    default_flow_style=True).strip()


def _fit(save_dir: Path, bias: float, patience: int | None) -> L.Trainer:
    args = ["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
            "--trainer.max_steps=10", "--trainer.max_time=null", "--trainer.val_check_interval=250",
            _callback("test_blank_watch.BlankBias", value=bias),
            _callback("ptasr.train.BlankPlateauWatch", threshold=0.99, after_updates=3, patience=patience)]
    return cli_main(args).trainer


def test_a_run_stuck_on_blanks_is_warned_once_then_ended_by_the_patience(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"\[blank plateau\]") as warned:
        trainer = _fit(tmp_path, bias=100.0, patience=4)
    plateau = [str(w.message) for w in warned if "[blank plateau]" in str(w.message)]
    # The warning at the first check (update 3), with the causes; then the patience's end 4 updates later.
    assert len(plateau) == 2
    assert plateau[0].startswith("[blank plateau] 100.0 % of the frames are blank at update 3 (threshold 99 %)")
    for cause in ("model.lr=", "too few updates", "model.freeze_transformer_steps=", "vocabulary/blank mismatch"):
        assert cause in plateau[0]
    assert "ending the run at update 7" in plateau[1]
    assert trainer.global_step == 7
    run = tmp_path / "demo" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 7
    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    [text] = events.Tensors("train/blank_plateau/text_summary")
    assert text.step == 3 and b"Usual causes" in text.tensor_proto.string_val[0]


def test_a_run_that_outputs_symbols_is_left_alone(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    trainer = _fit(tmp_path, bias=-100.0, patience=2)
    assert trainer.global_step == 10
    assert not [w for w in recwarn if "blank plateau" in str(w.message)]


def test_the_recipes_watch_the_plateau_after_ctc_health(recipe_configs: dict[str, dict[str, Any]]) -> None:
    for name, config in recipe_configs.items():
        names = [c["class_path"] for c in config["trainer"]["callbacks"]]
        assert names.index("ptasr.train.CTCHealth") < names.index("ptasr.train.BlankPlateauWatch"), name
