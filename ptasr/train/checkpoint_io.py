"""Checkpoint writes that a crash cannot half-finish: write a temporary file beside the target, then rename.

Lightning's ``TorchCheckpointIO`` serialises into memory and writes through an fsspec transaction, whose
local file lives in the system temp folder (``tempfile.mkstemp()``) and is moved into place with
``shutil.move``. When the checkpoint folder is on another filesystem than ``/tmp`` (a scratch or network
disk, the usual case on shared machines) that move is a copy into the open target: a kill during it
leaves a truncated ``last.ckpt`` and the previous one is gone. Here the temporary file is in the
checkpoint's own folder, so ``os.replace`` is an atomic rename, and it is fsynced first so that the rename
never publishes data still in flight. Configured in ``configs/*.yaml`` as a trainer plugin.

A kill during a write (SIGKILL, pre-emption, power loss) leaves its hidden temporary file behind; the next
successful save into the same folder, typically by the resumed run, removes such leftovers.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ptasr.errors import MissingPathError

log = logging.getLogger(__name__)

# ".<checkpoint name>.<12 hex digits>.partial": the temporary files save_checkpoint makes, and nothing else.
_PARTIAL_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.partial")
# A temporary file is left over, not being written, when untouched since before this process began saving
# and for at least this long (the margin absorbs a network filesystem's clock running ahead of ours).
STALE_AFTER_SECONDS = 60.0


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic: the target holds the old or the new checkpoint.

    Remote paths (``s3://`` ...) keep Lightning's own transaction, where the object store's upload is the
    atomic step.
    """

    def __init__(self) -> None:
        super().__init__()
        self._started = time.time()  # temporary files last written before this are not this process's

    def load_checkpoint(self, path: _PATH, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Lightning's FileNotFoundError here is about the user's --ckpt_path: a user error, reported in one line.
        if _is_local(path) and not os.path.exists(path):
            raise MissingPathError(f"no checkpoint at {path}: pass an existing .ckpt file as --ckpt_path, or "
                                   f"--ckpt_path last to resume the newest checkpoint of the run folder")
        return super().load_checkpoint(path, *args, **kwargs)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        # A hidden name that ModelCheckpoint's own file listing ignores (it looks for *.ckpt); created with the
        # umask's permissions like any file (mkstemp would make it private to the user).
        partial = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException:
            os.remove(partial)
            raise
        _fsync_folder(folder)  # make the rename itself durable
        self._remove_leftovers(folder)

    def _remove_leftovers(self, folder: str) -> None:
        """Delete temporary files of writes that were killed before they finished.

        Only the rank that saves gets here (Lightning saves on global rank 0). Another process may be saving
        into the same folder right now; its temporary file is safe: a write in progress keeps changing its
        file, so the file's modification time is recent, while a killed write's file stopped changing before
        this process started. Leftovers of any checkpoint name go, not only this one's: a killed write of
        ``best-step250-wer0.500.ckpt`` will never be retried under that name.
        """
        oldest_live = min(self._started, time.time() - STALE_AFTER_SECONDS)
        for entry in os.scandir(folder):
            if not _PARTIAL_NAME.fullmatch(entry.name):
                continue
            try:
                if entry.stat().st_mtime < oldest_live:
                    os.remove(entry.path)
            except FileNotFoundError:
                continue  # another process cleaned it up first
            except OSError as error:  # e.g. another user's file in a shared folder: not worth failing a save
                log.warning("could not remove the leftover checkpoint file %s: %s", entry.path, error)


def _is_local(path: _PATH) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)


def _fsync_folder(folder: str) -> None:
    if os.name != "posix":  # folders cannot be opened for fsync on Windows
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
