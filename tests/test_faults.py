"""Faults a run survives (issue 23): signals at any moment, a second writer in a run folder, checkpoints damaged on
disk, a full disk or a read-only folder while saving, a run folder copied elsewhere and resumed.

The fits run ``train.py`` as subprocesses where the exit status, real signals or stderr are the point; small
callbacks of this file, loaded by ``class_path``, send the signals or break the writes from inside the run.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import SMALL_MODEL, SMALL_RUN

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # One thread: several of these fits run side by side on small machines.
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))


def _fit_command(save_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "fit", f"--trainer.logger.init_args.save_dir={save_dir}",
            *SMALL_MODEL, *SMALL_RUN, "--trainer.max_time=null", *extra]


def _fit(save_dir: Path, *extra: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_fit_command(save_dir, *extra), cwd=cwd or save_dir.parent, env=_env(),
                          capture_output=True, text=True, timeout=300)


def _checkpoints(save_dir: Path, version: int = 0) -> Path:
    return save_dir / "demo" / f"version_{version}" / "checkpoints"


def _step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a fit that must fail: exactly one, the last thing on stderr, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("train.py: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    return errors[0]


# --- signals ---------------------------------------------------------------------------------------------------


def _send(times: int) -> None:
    """SIGTERM to this process ``times`` times, 0.1 s apart (the sleep lets each one reach its handler)."""
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)


class TermAt(L.Callback):
    """Sends SIGTERM to its own process ``times`` times at a moment of the fit.

    ``moment``: ``sanity`` (as a sanity check of two batches starts, where Lightning's handler still has SIGTERM),
    ``update`` (before the third batch), ``save`` (half-way through writing last.ckpt after
    update 4).
    """

    def __init__(self, moment: str, times: int = 1) -> None:
        self.moment, self.times = moment, times

    def setup(self, trainer, pl_module, stage) -> None:
        if self.moment == "save":
            torch.save = _save_signalling(trainer, self.times)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        if self.moment == "sanity":
            _send(self.times)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.moment == "update" and batch_idx == 2:
            _send(self.times)


def _save_signalling(trainer: L.Trainer, times: int):
    real_save, checkpoint_io = torch.save, trainer.strategy.checkpoint_io
    real_save_checkpoint, target = checkpoint_io.save_checkpoint, []

    def save_checkpoint(checkpoint, path, *args, **kwargs):
        target[:] = [Path(path).name]
        real_save_checkpoint(checkpoint, path, *args, **kwargs)

    def save(obj, file, *args, **kwargs):
        if trainer.global_step != 4 or target != ["last.ckpt"]:
            return real_save(obj, file, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        _send(times)
        file.write(data[len(data) // 2:])

    checkpoint_io.save_checkpoint = save_checkpoint
    return save


@pytest.mark.parametrize("moment, times, saved_step", [
    ("sanity", 1, 1),  # 76ea759: Lightning's SIGTERMException, exit status 0, nothing saved
    ("update", 2, 2),  # 76ea759: KeyboardInterrupt, exit status 1
    ("save", 2, 2),  # the second one mid-save: the save is dropped, last.ckpt stays at update 2
])
def test_sigterm_at_any_moment_exits_143_with_a_checkpoint(tmp_path: Path, moment: str, times: int,
                                                           saved_step: int) -> None:
    save_dir = tmp_path / "runs"
    result = _fit(save_dir, "--trainer.max_steps=10", "--trainer.num_sanity_val_steps=2",
                  "--trainer.limit_val_batches=2", "--trainer.val_check_interval=2",
                  "--trainer.callbacks+=test_faults.TermAt", f"--trainer.callbacks.moment={moment}",
                  f"--trainer.callbacks.times={times}")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    folder = _checkpoints(save_dir)
    assert _step(folder / "last.ckpt") == saved_step
    assert not [path for path in folder.iterdir() if path.suffix == ".partial"]
