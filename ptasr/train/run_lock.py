"""One writer per run folder: ``<run>/.ptasr.lock``, held while ``train.py`` trains or evaluates into the run.

Two ``fit --ckpt_path last`` of one run would both resume it and both write its ``last.ckpt``, ``config.yaml``
and TensorBoard curves; an evaluation writing into a run that is still training mixes its files in. The second
command is refused in one line that names the holder (pid, host, start time, command).

The lock is ``flock(2)`` on that file, not a pid file created with ``O_EXCL``: the kernel releases it when the
holder ends, however it ends (SIGKILL, the OOM killer), so a live lock always has a live holder, where a pid
file outlives a killed process and leaves a guess (is that pid alive, on this host, still the same program?).
The file's text only names the holder. A lock file found unlocked was left by a process that ended without
removing it: one line says so and the lock is taken over. On NFS, Linux maps ``flock`` to the server's byte-range
locks, so holders on other hosts count too; a file system without locks gets one warning and no lock.

Rank 0 alone holds it under DDP (the other ranks are its helpers). Before a fit starts, with the lock held, the
temporary files that interrupted checkpoint saves left in the run's checkpoint folders are removed: no other
process writes there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

from ptasr.errors import UserError
from ptasr.storage import storage_error
from ptasr.train.checkpoint_io import remove_partial_files

LOCK_NAME = ".ptasr.lock"


class RunFolderInUse(UserError, RuntimeError):
    """Another process trains or evaluates into this run folder; the message names it."""


@contextlib.contextmanager
def run_folder_lock(trainer: L.Trainer, fitting: bool) -> Iterator[None]:
    """Hold the lock of the trainer's run folder for the block (rank 0 only); a fit also removes the leftovers of
    interrupted checkpoint saves first.

    Raises:
        RunFolderInUse: another live process holds it.
        StorageError: the run folder cannot be written (read-only, another user's).
    """
    folder = run_folder(trainer, fitting)
    if folder is None or rank_zero_only.rank != 0:
        yield
        return
    lock = RunLock(folder)
    try:
        if fitting:
            _remove_leftovers(trainer, folder)
        yield
    finally:
        lock.release()


def run_folder(trainer: L.Trainer, fitting: bool) -> Path | None:
    """The folder the trainer's run writes into: the logger's, without an evaluation's sub-folder; without a
    logger ``default_root_dir`` for a fit (its checkpoints go there) and none for an evaluation (it writes
    nothing)."""
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir) if fitting else None
    log_dir = getattr(logger, "log_dir", None) or logger.save_dir
    if log_dir is None:
        return None
    folder = Path(log_dir)
    return folder.parent if getattr(logger, "sub_dir", None) else folder


class RunLock:
    """The lock of one run folder, taken on construction (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._created = _make_folder(folder)
        self._descriptor: int | None = None
        try:
            self._descriptor = self._take()
        except BaseException:
            self._remove_created()
            raise

    def _take(self) -> int | None:
        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise storage_error(self.path.parent, error) from error
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read(descriptor))
                os.close(descriptor)
                raise RunFolderInUse(f"run folder {self.path.parent} is in use by {holder} (it holds "
                                     f"{self.path}): wait for it to end, or write this run elsewhere (another "
                                     f"--trainer.logger.init_args.version or save_dir)") from None
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                os.close(descriptor)
                rank_zero_warn(f"the file system of {self.path.parent} has no locks ({error.strerror}): nothing stops "
                               f"a second run from writing into it")
                return None
            if _same_file(descriptor, self.path):
                break
            os.close(descriptor)  # the holder released and removed it between our open and our lock: again
        left = _read(descriptor)
        if left:
            rank_zero_info(f"[run] {self.path} was left by {_describe(left)}, which ended without releasing it; "
                           f"taking it over")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)
        return descriptor

    def release(self) -> None:
        """Remove the lock file and unlock (closing the file unlocks it); folders it created go if empty."""
        if self._descriptor is not None:
            with contextlib.suppress(FileNotFoundError):
                if _same_file(self._descriptor, self.path):
                    os.remove(self.path)
            os.close(self._descriptor)
            self._descriptor = None
        self._remove_created()

    def _remove_created(self) -> None:
        # A run refused or failed before it wrote anything leaves no empty run folder behind.
        for folder in self._created:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                folder.rmdir()
        self._created = []


def _make_folder(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it created, deepest first."""
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(folder, error) from error
    return missing


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _read(descriptor: int) -> dict[str, object]:
    text = os.pread(descriptor, 65536, 0).decode(errors="replace").strip()
    try:
        holder = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"command": text}
    return holder if isinstance(holder, dict) else {"command": text}


def _describe(holder: dict[str, object]) -> str:
    """``pid 12 on host h since 2026-12-06 12:00:00 UTC (train.py fit ...)``, from what the holder wrote."""
    if not holder:
        return "a process that has not yet written its name"
    started = holder.get("started")
    since = (time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
             if isinstance(started, int | float) else "")
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since} ({holder.get('command', '?')})"


def _remove_leftovers(trainer: L.Trainer, run: Path) -> None:
    """The temporary files of checkpoint saves that a kill interrupted, in the run's checkpoint folders."""
    folders = {run / "checkpoints"}
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and run.resolve() in Path(dirpath).resolve().parents:
            folders.add(Path(dirpath))
    for folder in sorted(folders):
        removed = remove_partial_files(folder)
        if removed:
            rank_zero_info(f"[run] removed {len(removed)} temporary file(s) of interrupted checkpoint saves from "
                           f"{folder}: {', '.join(removed)}")
