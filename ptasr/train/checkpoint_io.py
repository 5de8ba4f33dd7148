"""Checkpoint writes that a crash cannot half-finish: write a temporary file beside the target, then rename.

Lightning's ``TorchCheckpointIO`` (2.6, with fsspec 2026.9) serialises into memory and writes through an
fsspec transaction, whose local file lives in the system temp folder (``tempfile.mkstemp()``) and is moved
into place with ``shutil.move``. When the checkpoint folder is on another filesystem than ``/tmp`` (a scratch or network
disk, the usual case on shared machines) that move is a copy into the open target: a kill during it
leaves a truncated ``last.ckpt`` and the previous one is gone. Here the temporary file is in the
checkpoint's own folder, so ``os.replace`` is an atomic rename, and it is fsynced first so that the rename
never publishes data still in flight. Configured in ``configs/*.yaml`` as a trainer plugin.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic: the target holds the old or the new checkpoint.

    Remote paths (``s3://`` ...) keep Lightning's own transaction, where the object store's upload is the
    atomic step.
    """

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
