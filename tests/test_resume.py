"""Exact resume: a fit killed with SIGKILL mid-epoch and resumed from ``last.ckpt`` continues with the same
losses as a run that was never interrupted; and a checkpoint write cut short leaves the previous one usable.

The training runs are subprocesses of ``train.py`` (a SIGKILL must not take pytest with it). Two tiny
callbacks, written into the test's folder and loaded by ``class_path``, record every update's loss with full
precision and kill the process at a given update.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import HANG_S, fake_checkpoint, save_half_then

from ptasr.data import BUNDLED_CORPUS
from ptasr.train.checkpoint_io import (
    STALE_AFTER_SECONDS,
    AtomicCheckpointIO,
    partial_name,
    remove_partial_files,
    replace_folder,
)
from ptasr.train.cli import CONFIG_DIR, cli_main

REPO = Path(__file__).resolve().parents[1]
# The dev split: 50 clips in batches of 8 are 7 updates per epoch. A checkpoint after every update (all kept);
# the kill comes before update 10, 2 updates into the second epoch, whose order the restored sampler decides.
EPOCH = 7
MAX_STEPS = 11
KILL_AT = 9

CALLBACKS = '''
import os
import signal
import time

from lightning.pytorch import Callback


class LossLog(Callback):
    """Appends "<update> <loss>" to a file after every update, the loss as Python's exact repr."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as log:
            log.write(f"{trainer.global_step} {float(outputs['loss'])!r}\\n")


class KillAt(Callback):
    """SIGKILLs its own process once `step` updates are done (a pre-emption: no clean-up, no saving)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class Slow(Callback):
    """Sleeps before every batch, so that a signal sent by the test arrives while the fit is still running."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        time.sleep(self.seconds)
'''


def _config(tmp_path: Path, name: str, loss_log: Path, kill_at: int | None = None,
            slow: float = 0.0) -> Path:
    """The demo config shrunk to seconds on CPU, with dropout and LayerDrop on (so the RNG state matters)."""
    config = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(max_steps=MAX_STEPS, max_time=None, precision="32-true", limit_val_batches=0,
                   val_check_interval=None, check_val_every_n_epoch=1, log_every_n_steps=1,
                   enable_model_summary=False, enable_progress_bar=False)
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path / name)
    trainer["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 1, "save_last": True, "save_top_k": -1}},
        {"class_path": "resume_callbacks.LossLog", "init_args": {"path": str(loss_log)}},
    ]
    if kill_at is not None:
        trainer["callbacks"].append({"class_path": "resume_callbacks.KillAt", "init_args": {"step": kill_at}})
    if slow:  # the recipes' last.ckpt, which a signal ends the run with, instead of a checkpoint every update
        trainer["callbacks"][0] = {"class_path": "ptasr.train.LastCheckpoint"}
        trainer["callbacks"].append({"class_path": "resume_callbacks.Slow", "init_args": {"seconds": slow}})
    model = config["model"]
    model["config_overrides"].update(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[16] * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, feat_proj_dropout=0.1,
        final_dropout=0.1, layerdrop=0.1,
    )
    model.update(schedule="linear", warmup_steps=2, speed_perturbation=[0.9, 1.0, 1.1])  # every random stream on
    config["data"].update(train=[{"path": BUNDLED_CORPUS, "splits": ["dev"]}], loading={"num_workers": 0})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start_fit(tmp_path: Path, config: Path, *extra: str) -> subprocess.Popen:
    # One thread each: two fits run side by side on small machines.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "fit", "-c", str(config), *extra],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(fit: subprocess.Popen) -> tuple[int, str]:
    _, stderr = fit.communicate(timeout=HANG_S)
    return fit.returncode, stderr[-3000:]


def _fit(tmp_path: Path, config: Path, *extra: str) -> tuple[int, str]:
    return _finish(_start_fit(tmp_path, config, *extra))


def _losses(path: Path) -> dict[int, float]:
    return {int(step): float(loss) for step, loss in (line.split() for line in path.read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, float]]:
    """The losses of an uninterrupted fit, and the folder of the same fit SIGKILLed after update `KILL_AT`."""
    tmp_path = tmp_path_factory.mktemp("resume")
    (tmp_path / "resume_callbacks.py").write_text(CALLBACKS)
    # Side by side: the two runs share nothing but the corpus.
    reference = _start_fit(tmp_path, _config(tmp_path, "reference", tmp_path / "reference.log"))
    killed = _start_fit(tmp_path, _config(tmp_path, "run", tmp_path / "killed.log", kill_at=KILL_AT))
    returncode, stderr = _finish(reference)
    assert returncode == 0, stderr
    returncode, stderr = _finish(killed)
    assert returncode == -signal.SIGKILL, stderr
    expected = _losses(tmp_path / "reference.log")
    assert sorted(expected) == list(range(1, MAX_STEPS + 1))
    # Up to the kill both are the same run: the comparisons after the resume are not vacuous.
    assert _losses(tmp_path / "killed.log") == {step: expected[step] for step in range(1, KILL_AT + 1)}
    return tmp_path, expected


def _assert_same_losses(got: dict[int, float], expected: dict[int, float], first: int) -> None:
    assert sorted(got) == list(range(first, MAX_STEPS + 1))
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], abs=1e-6, rel=0), (step, got, expected)


def test_a_killed_fit_resumes_with_the_losses_of_an_uninterrupted_one(runs: tuple[Path, dict[int, float]]) -> None:
    tmp_path, expected = runs
    last = tmp_path / "run" / "demo" / "version_0" / "checkpoints" / "last.ckpt"
    # The RNG states are plain tensors, ints and lists: the checkpoint loads without arbitrary unpickling.
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == KILL_AT and {"torch", "python", "numpy"} <= set(saved["ptasr"]["rng"])
    returncode, stderr = _fit(tmp_path, _config(tmp_path, "run", tmp_path / "resumed.log"), "--ckpt_path", "last")
    assert returncode == 0, stderr
    _assert_same_losses(_losses(tmp_path / "resumed.log"), expected, first=KILL_AT + 1)


def test_a_fit_resumed_from_the_end_of_an_epoch_continues_exactly(runs: tuple[Path, dict[int, float]]) -> None:
    tmp_path, expected = runs
    [end_of_epoch] = (tmp_path / "run" / "demo" / "version_0" / "checkpoints").glob(f"*step={EPOCH}.ckpt")
    returncode, stderr = _fit(tmp_path, _config(tmp_path, "from_epoch_end", tmp_path / "from_epoch_end.log"),
                              "--ckpt_path", str(end_of_epoch))
    assert returncode == 0, stderr
    _assert_same_losses(_losses(tmp_path / "from_epoch_end.log"), expected, first=EPOCH + 1)


def _wait_for_update(loss_log: Path, fit: subprocess.Popen, update: int) -> None:
    deadline = time.monotonic() + HANG_S
    while not (loss_log.exists() and len(loss_log.read_text().splitlines()) >= update):
        assert fit.poll() is None, fit.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the fit made no progress"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_fit_with_last_ckpt_that_resumes_exactly(runs: tuple[Path, dict[int, float]],
                                                                    signum: signal.Signals) -> None:
    tmp_path, expected = runs
    name = f"signal_{signum.name}"
    stopped_log = tmp_path / f"{name}.log"
    fit = _start_fit(tmp_path, _config(tmp_path, name, stopped_log, slow=0.5))
    _wait_for_update(stopped_log, fit, 3)
    fit.send_signal(signum)
    returncode, stderr = _finish(fit)
    # Saved, then ended as the shell reports a process ended by the signal: 128 + its number.
    assert returncode == 128 + signum, stderr
    stopped = _losses(stopped_log)
    last_update = max(stopped)
    assert 3 <= last_update < MAX_STEPS and f"stopped by {signum.name} after update {last_update}" in stderr
    last = tmp_path / name / "demo" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == last_update
    returncode, stderr = _fit(tmp_path, _config(tmp_path, name, tmp_path / f"{name}_resumed.log"), "--ckpt_path", "last")
    assert returncode == 0, stderr
    _assert_same_losses(_losses(tmp_path / f"{name}_resumed.log"), expected, first=last_update + 1)


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path: Path) -> None:
    (tmp_path / "resume_callbacks.py").write_text(CALLBACKS)
    loss_log = tmp_path / "twice.log"
    fit = _start_fit(tmp_path, _config(tmp_path, "twice", loss_log, slow=5.0))
    _wait_for_update(loss_log, fit, 2)
    time.sleep(1.0)  # inside the 5 s before the third batch: the update cannot finish between the two
    fit.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals in quick succession would merge into one
    fit.send_signal(signal.SIGINT)
    returncode, stderr = _finish(fit)
    assert returncode == 128 + signal.SIGINT and "a second SIGINT: stopping now, without saving" in stderr, stderr
    assert not (tmp_path / "twice" / "demo" / "version_0" / "checkpoints" / "last.ckpt").exists()


# --- atomic checkpoint writes ------------------------------------------------------------------------------

def test_a_failed_checkpoint_write_leaves_the_previous_one_loadable(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint_io, last = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint(fake_checkpoint(1), last)

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then(disk_full))
    with pytest.raises(OSError, match="No space left"):
        checkpoint_io.save_checkpoint(fake_checkpoint(2), last)
    monkeypatch.undo()
    assert checkpoint_io.load_checkpoint(last, weights_only=True)["global_step"] == 1
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # the partial file is cleaned up
    checkpoint_io.save_checkpoint(fake_checkpoint(3), last)
    assert checkpoint_io.load_checkpoint(last, weights_only=True)["global_step"] == 3


KILLED_DURING_SAVE = '''
import os, signal, sys
import torch
from ptasr.train.checkpoint_io import STALE_AFTER_SECONDS, AtomicCheckpointIO
from helpers import fake_checkpoint, save_half_then

checkpoint_io, last = AtomicCheckpointIO(), sys.argv[1]
checkpoint_io.save_checkpoint(fake_checkpoint(1), last)
torch.save = save_half_then(lambda: os.kill(os.getpid(), signal.SIGKILL))
checkpoint_io.save_checkpoint(fake_checkpoint(2), last)
'''


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.run([sys.executable, "-c", KILLED_DURING_SAVE, str(last)], env=env, capture_output=True,
                            text=True, timeout=HANG_S)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert AtomicCheckpointIO().load_checkpoint(last, weights_only=True)["global_step"] == 1
    # The half-written file was beside the target (same filesystem, so the rename is atomic), hidden from
    # ModelCheckpoint, which lists *.ckpt.
    [partial] = [p for p in last.parent.iterdir() if p != last]
    assert partial.name.startswith(".last.ckpt.") and partial.suffix == ".partial"
    # The resumed run's first save removes it, once it has been untouched for STALE_AFTER_SECONDS.
    _backdate(partial, 2 * STALE_AFTER_SECONDS)
    AtomicCheckpointIO().save_checkpoint(fake_checkpoint(3), last)
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
    assert AtomicCheckpointIO().load_checkpoint(last, weights_only=True)["global_step"] == 3


def _backdate(path: Path, seconds: float) -> None:
    modified = time.time() - seconds
    os.utime(path, (modified, modified))


def test_a_save_removes_leftovers_of_killed_writes_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as clock:  # a process that started 20 minutes ago
        clock.setattr(time, "time", lambda now=time.time(): now - 1200)
        checkpoint_io = AtomicCheckpointIO()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    files = {  # name -> seconds since it was last written
        ".last.ckpt.0123456789ab.partial": 3600,  # a write killed before this process started
        ".best-step4-wer0.500.ckpt.0123456789ab.partial": 3600,  # one of a name that is never saved again
        ".last.ckpt.ba9876543210.partial": 0,  # another process saving right now
        ".last.ckpt.abcdefabcdef.partial": STALE_AFTER_SECONDS / 2,  # ... or stalled for a moment
        ".last.ckpt.fedcbafedcba.partial": 600,  # ... or stalled for long, but since this process started
        ".notes.partial": 3600,  # not a name this class makes
        "best-step2-wer0.700.ckpt": 3600,
    }
    for name, age in files.items():
        (folder / name).write_bytes(b"x")
        _backdate(folder / name, age)
    checkpoint_io.save_checkpoint(fake_checkpoint(5), folder / "last.ckpt")
    kept = {".last.ckpt.ba9876543210.partial", ".last.ckpt.abcdefabcdef.partial", ".last.ckpt.fedcbafedcba.partial",
            ".notes.partial", "best-step2-wer0.700.ckpt", "last.ckpt"}
    assert {p.name for p in folder.iterdir()} == kept


def _checkpoint_folder(path: Path, step: int) -> Path:
    """A stand-in for a sharded checkpoint folder: two shard files and the step's meta file."""
    path.mkdir(parents=True)
    for name in ("__0_0.distcp", "__1_0.distcp", "meta.pt"):
        (path / name).write_text(str(step))
    return path


def test_a_checkpoint_folder_replaces_the_old_one_whole(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    _checkpoint_folder(folder / "last.ckpt", 5)
    replace_folder(_checkpoint_folder(folder / partial_name("last.ckpt", "0123456789ab"), 10), folder / "last.ckpt")
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]
    assert {p.read_text() for p in (folder / "last.ckpt").iterdir()} == {"10"}


def test_the_next_start_restores_a_folder_moved_aside_and_removes_killed_saves(tmp_path: Path) -> None:
    # Killed between replace_folder's two renames: the old last.ckpt aside, whole; the new one complete but
    # unpublished. Killed mid-write: the partial folder of best-*.ckpt. And an old folder aside after a publish.
    folder = tmp_path / "checkpoints"
    _checkpoint_folder(folder / ".last.ckpt.0123456789ab.replaced", 5)
    _checkpoint_folder(folder / ".last.ckpt.ba9876543210.partial", 10)
    _checkpoint_folder(folder / ".best.ckpt.abcdefabcdef.partial", 10)
    _checkpoint_folder(folder / "epoch=1.ckpt", 10)
    _checkpoint_folder(folder / ".epoch=1.ckpt.fedcbafedcba.replaced", 5)
    removed = remove_partial_files(folder)
    assert sorted(removed) == sorted([".last.ckpt.0123456789ab.replaced (restored as last.ckpt)",
                                      ".last.ckpt.ba9876543210.partial", ".best.ckpt.abcdefabcdef.partial",
                                      ".epoch=1.ckpt.fedcbafedcba.replaced"])
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=1.ckpt", "last.ckpt"]
    assert {p.read_text() for p in (folder / "last.ckpt").iterdir()} == {"5"}
    assert {p.read_text() for p in (folder / "epoch=1.ckpt").iterdir()} == {"10"}


def test_the_configs_write_checkpoints_atomically(recipe_configs: dict[str, dict[str, Any]]) -> None:
    for name, config in recipe_configs.items():
        plugins = config["trainer"]["plugins"]
        assert "ptasr.train.checkpoint_io.AtomicCheckpointIO" in [p["class_path"] for p in plugins], name
    demo = cli_main(["-c", str(CONFIG_DIR / "demo.yaml")], run=False)
    assert isinstance(demo.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
