"""DDP on CPU: `python train.py fit` with 2 processes (gloo) trains, validates and checkpoints together."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train_fit import SMALL_MODEL, SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    command = [
        sys.executable, str(ROOT / "train.py"), "fit",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *SMALL_MODEL, *SMALL_RUN,
        "--trainer.max_steps=4",  # validation (and checkpoints) after updates 2 and 4
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",  # Lightning re-launches this command for rank 1; gloo on CPU
    ]
    # One thread per process: two ranks share the two cores.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr + result.stdout  # the second process really ran

    run_dir = tmp_path / "demo" / "version_0"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert {"train/loss", "val/wer", "val/cer", "train/audio_seconds_per_second"} <= set(events.Tags()["scalars"])
