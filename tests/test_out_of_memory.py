"""A CUDA out-of-memory error in a training or validation step ends with one line naming the batch and the fixes.

Simulated on CPU: a callback raises torch's own ``OutOfMemoryError`` from a hook inside the step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import HANG_S, SMALL_MODEL, SMALL_RUN

from ptasr.errors import UserError
from ptasr.train.cli import cli_main
from ptasr.train.out_of_memory import OutOfMemory

REPO = Path(__file__).resolve().parents[1]
TORCH_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB"


class RaiseOutOfMemory(L.Callback):
    """Raises torch's OutOfMemoryError in the training step of update ``step`` or in the first validation batch."""

    raised_in: torch.Tensor | None = None  # the clip lengths of the batch it raised in

    def __init__(self, stage: str, step: int = 0) -> None:
        self.stage, self.step = stage, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        RaiseOutOfMemory.raised_in = batch["lengths"]

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.stage == "training" and trainer.global_step == self.step:
            raise torch.OutOfMemoryError(TORCH_MESSAGE)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "validation" and not trainer.sanity_checking:
            RaiseOutOfMemory.raised_in = batch["lengths"]
            raise torch.OutOfMemoryError(TORCH_MESSAGE)


def _args(save_dir: Path, stage: str) -> list[str]:
    raiser = {"class_path": "test_out_of_memory.RaiseOutOfMemory", "init_args": {"stage": stage, "step": 2}}
    return ["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
            "--trainer.max_steps=4", "--trainer.max_time=null",
            f"--trainer.callbacks+={yaml.safe_dump(raiser, default_flow_style=True).strip()}"]


def test_a_training_batch_out_of_memory_names_the_batch_and_the_settings(tmp_path: Path) -> None:
    with pytest.raises(OutOfMemory) as caught:
        cli_main([*_args(tmp_path, "training"), "--trainer.accumulate_grad_batches=1"])
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    lengths = RaiseOutOfMemory.raised_in
    assert message.startswith(f"out of memory in a training batch of {len(lengths)} clips, the longest "
                              f"{int(lengths.max()) / 16000:.1f} s, at update 2: ")
    for setting in ("data.batching.max_batch_seconds (now None)", "data.batching.batch_size (now 8)",
                    "trainer.accumulate_grad_batches (now 1)", "model.gradient_checkpointing=true"):
        assert setting in message


def test_a_validation_batch_out_of_memory_names_the_evaluation_settings(tmp_path: Path) -> None:
    with pytest.raises(OutOfMemory, match=r"data.batching.eval_batch_size \(now 10\)$") as caught:
        cli_main(_args(tmp_path, "validation"))
    assert f"in a validation batch of {len(RaiseOutOfMemory.raised_in)} clips" in str(caught.value)
    assert "gradient_checkpointing" not in str(caught.value)  # no backward pass in validation


def test_train_py_prints_it_as_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *_args(tmp_path, "training")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert line.startswith("train.py: error: out of memory in a training batch of ")
    assert "Traceback" not in result.stderr and TORCH_MESSAGE not in result.stderr
