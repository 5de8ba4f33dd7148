"""Faults a run survives (issue 23): signals at any moment, a second writer in a run folder, checkpoints damaged on
disk, a full disk or a read-only folder while saving, a run folder copied elsewhere and resumed.

The fits run ``train.py`` as subprocesses where the exit status, real signals or stderr are the point; small
callbacks of this file, loaded by ``class_path``, send the signals or break the writes from inside the run.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import SMALL_MODEL, SMALL_RUN, fake_checkpoint, train_py_error_line

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
    return train_py_error_line(result)


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


# --- damaged checkpoints ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The save_dir of a 4-update fit validated at updates 2 and 4: last.ckpt and the best checkpoint."""
    from ptasr.train.cli import cli_main

    save_dir = tmp_path_factory.mktemp("trained") / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py"])
        cli_main(["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
                  "--trainer.max_time=null", "--trainer.max_steps=4", "--trainer.limit_val_batches=1"])
    return save_dir


def _copy(save_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(save_dir, copy)
    return copy


def _flip(path: Path, count: int = 200) -> None:
    """Invert ``count`` bytes in the middle of the file, as a failing disk or a bad copy does."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(255 - byte for byte in data[middle:middle + count])
    path.write_bytes(bytes(data))


def _best(folder: Path) -> Path:
    [best] = folder.glob("best-*.ckpt")
    return best


def test_a_resume_from_a_checkpoint_with_flipped_bytes_is_refused_naming_an_intact_one(trained: Path,
                                                                                       tmp_path: Path) -> None:
    save_dir = _copy(trained, tmp_path)
    folder = _checkpoints(save_dir)
    _flip(folder / "last.ckpt")
    damaged = (folder / "last.ckpt").read_bytes()
    # 76ea759 resumed it: NaN losses, exit 0, and a "best" checkpoint saved from the broken weights.
    error = _one_line(_fit(save_dir, "--ckpt_path=last", "--trainer.max_steps=6"))
    assert f"{folder / 'last.ckpt'}" in error and "CRC-32" in error, error
    assert f"the newest intact checkpoint beside it is {_best(folder)}" in error, error
    assert (folder / "last.ckpt").read_bytes() == damaged  # nothing was restored, nothing saved


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty"])
def test_a_damaged_checkpoint_is_refused_by_the_model_loader_naming_an_intact_one(trained: Path, tmp_path: Path,
                                                                                  damage: str) -> None:
    from ptasr.errors import CheckpointError
    from ptasr.recognition.trained_model import load_any

    folder = _checkpoints(_copy(trained, tmp_path))
    last = folder / "last.ckpt"
    if damage == "flipped":
        _flip(last)
    else:
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2 if damage == "truncated" else 0])
    with pytest.raises(CheckpointError) as refused:  # ptasr transcribe/evaluate/export load through it
        load_any(last)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"cannot read {last} (")
    assert f"the newest intact checkpoint beside it is {_best(folder)}" in message
    assert load_any(_best(folder)).metadata["global_step"] > 0  # which is indeed intact


def test_a_checkpoint_saved_without_checksums_still_loads(trained: Path, tmp_path: Path) -> None:
    from ptasr.recognition.trained_model import load_any

    checkpoint = torch.load(_checkpoints(trained) / "last.ckpt", map_location="cpu", weights_only=True)
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)  # as a checkpoint of another tool may be written
    try:
        torch.save(checkpoint, tmp_path / "unchecked.ckpt")
    finally:
        torch.serialization.set_crc32_options(before)
    assert load_any(tmp_path / "unchecked.ckpt").metadata["global_step"] == 4


# --- a full disk or a read-only folder while saving ------------------------------------------------------------


class _FullFile:
    """A file with ``room`` bytes left: a write past it fails as a full disk does."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


class DiskFullAt(L.Callback):
    """From update ``step`` on, every checkpoint write finds the disk full after 100 kB."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer, pl_module, stage) -> None:
        real_save = torch.save

        def save(obj, file, *args, **kwargs):
            if trainer.global_step >= self.step:
                file = _FullFile(file, room=100_000)
            return real_save(obj, file, *args, **kwargs)

        torch.save = save


def test_a_full_disk_while_saving_is_one_line_with_the_space_needed_and_the_previous_checkpoint_intact(
        tmp_path: Path) -> None:
    save_dir = tmp_path / "runs"
    # 76ea759: a traceback of 127 lines, ending in "unexpected pos ... inline_container.cc".
    error = _one_line(_fit(save_dir, "--trainer.max_steps=6", "--trainer.limit_val_batches=1",
                           "--trainer.callbacks+=test_faults.DiskFullAt", "--trainer.callbacks.step=4"))
    folder = _checkpoints(save_dir)
    assert f"cannot write {folder}" in error and "No space left on device (it needs about " in error, error
    assert " free there); free some space or choose another folder" in error, error
    assert _step(folder / "last.ckpt") == 2  # the previous one, intact
    assert not [path for path in folder.iterdir() if path.suffix == ".partial"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 kB tmpfs (a real full disk); skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_real_full_disk_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    from ptasr.errors import StorageError
    from ptasr.train.checkpoint_io import AtomicCheckpointIO

    checkpoint_io, last = AtomicCheckpointIO(), small_disk / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint(fake_checkpoint(1), last)  # 400 kB of the 600
    with pytest.raises(StorageError) as refused:  # the next one needs another 400 kB beside it
        checkpoint_io.save_checkpoint(fake_checkpoint(2), last)
    assert str(refused.value).startswith(f"cannot write {last}: No space left on device (it needs about 40")
    assert str(refused.value).endswith("; last.ckpt as saved before is intact")
    assert checkpoint_io.load_checkpoint(last, weights_only=True)["global_step"] == 1
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


def test_a_read_only_checkpoint_folder_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ptasr.errors import StorageError
    from ptasr.train.checkpoint_io import AtomicCheckpointIO

    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # root writes into any folder a chmod protects: refuse here
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(StorageError) as refused:
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
    assert str(refused.value) == (f"cannot write {tmp_path / 'last.ckpt'}: Read-only file system; choose a folder "
                                  f"you can write")


# --- one writer per run folder ---------------------------------------------------------------------------------


class Slow(L.Callback):
    """Sleeps before every batch, so that the fit is still running when the test starts a second command."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(1.0)


def test_a_second_command_on_a_run_in_progress_is_refused_naming_the_holder(tmp_path: Path) -> None:
    save_dir = tmp_path / "runs"
    first = subprocess.Popen(_fit_command(save_dir, "--trainer.max_steps=200", "--trainer.limit_val_batches=1",
                                          "--trainer.callbacks+=test_faults.Slow"),
                             cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = save_dir / "demo" / "version_0"
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last.ckpt").exists():  # saved after the validation at update 2
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first fit made no progress"
            time.sleep(0.2)
        # 76ea759: the second resumed the same run and both trained to the end, writing the same files.
        seconds = []
        for subcommand in ("fit", "validate"):  # side by side: each is refused once it has parsed its arguments
            command = _fit_command(save_dir, "--ckpt_path=last", "--trainer.max_steps=3")
            command[2] = subcommand
            seconds.append(subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True))
        for second in seconds:
            stdout, stderr = second.communicate(timeout=300)
            error = _one_line(subprocess.CompletedProcess(second.args, second.returncode, stdout, stderr))
            assert f"run folder {run} is in use by pid {first.pid} on host " in error, error
            assert "train.py fit" in error and f"{run / '.ptasr.lock'}" in error, error
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert not (run / ".ptasr.lock").exists()  # released as the run ended
    assert not (run / "validate").exists()  # the refused evaluation wrote nothing


def test_a_lock_is_released_on_every_exit_and_refuses_while_held(tmp_path: Path) -> None:
    from ptasr.train.run_lock import RunFolderInUse, RunLock

    held = RunLock(tmp_path / "run")
    with pytest.raises(RunFolderInUse, match=f"in use by pid {os.getpid()} "):
        RunLock(tmp_path / "run")
    held.release()
    assert not (tmp_path / "run" / ".ptasr.lock").exists()
    RunLock(tmp_path / "run").release()  # free again


TAKE_AND_DIE = '''
import os, signal, sys
from pathlib import Path
from ptasr.train.run_lock import RunLock
RunLock(Path(sys.argv[1]))
os.kill(os.getpid(), signal.SIGKILL)
'''


def test_a_lock_left_by_a_killed_process_is_said_and_taken_over(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from ptasr.train.run_lock import RunLock

    killed = subprocess.Popen([sys.executable, "-c", TAKE_AND_DIE, str(tmp_path / "run")], env=_env(),
                              stderr=subprocess.PIPE, text=True)
    _, stderr = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, stderr
    assert (tmp_path / "run" / ".ptasr.lock").exists()  # left behind; the kernel released the flock
    with caplog.at_level(logging.INFO):
        lock = RunLock(tmp_path / "run")
    [line] = [message for message in caplog.messages if ".ptasr.lock was left by" in message]
    assert f"was left by pid {killed.pid} on host " in line and line.endswith("taking it over"), line
    assert f'"pid": {os.getpid()}' in (tmp_path / "run" / ".ptasr.lock").read_text()  # now this process's
    lock.release()


def test_a_run_folder_holding_only_a_left_lock_is_not_an_occupied_run(tmp_path: Path) -> None:
    from ptasr.train.cli import cli_main

    run = tmp_path / "runs" / "demo" / "pinned"  # a fit of this version was killed while it started
    run.mkdir(parents=True)
    (run / ".ptasr.lock").write_text('{"pid": 1, "host": "elsewhere", "command": "train.py fit"}\n')
    cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
              "--trainer.logger.init_args.version=pinned", *SMALL_MODEL, *SMALL_RUN, "--trainer.max_time=null", "--trainer.max_steps=1",
              "--trainer.limit_val_batches=0"])
    assert _step(run / "checkpoints" / "last.ckpt") == 1 and not (run / ".ptasr.lock").exists()


# --- a run folder copied elsewhere and resumed -----------------------------------------------------------------


def test_a_copied_run_folder_resumes_into_its_own_last_ckpt_and_drops_leftover_partial_files(
        trained: Path, tmp_path: Path) -> None:
    from ptasr.train.cli import cli_main

    save_dir = _copy(trained, tmp_path)  # the restored state names last.ckpt at its old path
    folder = _checkpoints(save_dir)
    leftover = folder / ".last.ckpt.0123456789ab.partial"  # a save killed a moment ago
    leftover.write_bytes(b"\0" * 1000)
    cli_main(["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
              "--trainer.max_time=null", "--trainer.max_steps=6", "--trainer.limit_val_batches=1",
              "--ckpt_path=last"])
    # 76ea759: last-v1.ckpt beside a stale last.ckpt (which the next --ckpt_path last skipped), and the partial kept
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("best-")) == ["last.ckpt"]
    assert _step(folder / "last.ckpt") == 6
    assert _step(_checkpoints(trained) / "last.ckpt") == 4  # the original run untouched
