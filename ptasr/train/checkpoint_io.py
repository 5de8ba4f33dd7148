"""Checkpoint writes that a crash cannot half-finish: write a temporary file beside the target, then rename.

Lightning's ``TorchCheckpointIO`` serialises into memory and writes through an fsspec transaction, whose
local file lives in the system temp folder (``tempfile.mkstemp()``) and is moved into place with
``shutil.move``. When the checkpoint folder is on another filesystem than ``/tmp`` (a scratch or network
disk, the usual case on shared machines) that move is a copy into the open target: a kill during it
leaves a truncated ``last.ckpt`` and the previous one is gone. Here the temporary file is in the
checkpoint's own folder, so ``os.replace`` is an atomic rename, and it is fsynced first so that the rename
never publishes data still in flight. Configured in ``configs/*.yaml`` as a trainer plugin.

A kill during a write (SIGKILL, pre-emption, power loss) leaves its hidden temporary file behind; the next
start of a run in that folder (``RunLock``) and the next successful save into it remove such leftovers.

A sharded checkpoint is a folder (one file per rank, ``ptasr.train.sharding``), which no single rename can put
over an older folder: :func:`replace_folder` moves the old one aside, the new one in, then deletes the old one.
A kill between those two renames leaves the old one aside, whole, under a hidden ``.replaced`` name: the next
start puts it back (:func:`remove_partial_files`).

Every record of the archive carries its CRC-32 (torch's default, held on here), and a local checkpoint is checked
against them before Lightning restores anything (:func:`ptasr.recognition.trained_model.verify_checkpoint`). A write that fails
for want of space or permission is one line naming the checkpoint, with the space it needs and the space free;
the previous checkpoint under that name stays as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ptasr.compat import is_sharded_checkpoint, load_sharded_checkpoint
from ptasr.errors import MissingPathError, StorageError
from ptasr.recognition.trained_model import verify_checkpoint
from ptasr.storage import storage_error

log = logging.getLogger(__name__)

# ".<checkpoint name>.<12 hex digits>.partial": the temporary files (or folders) a save writes into, and nothing
# else; ".<checkpoint name>.<12 hex digits>.replaced": a whole checkpoint folder that replace_folder moved aside.
_PARTIAL_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.partial")
_REPLACED_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.replaced")
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
        if _is_local(path) and is_sharded_checkpoint(Path(path)):
            # a sharded run's folder, read by a run that does not shard (`train.py test` on one device)
            return load_sharded_checkpoint(Path(path))
        if _is_local(path):
            verify_checkpoint(path)
        return super().load_checkpoint(path, *args, **kwargs)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        folder = os.path.dirname(os.path.abspath(path))
        # A hidden name that ModelCheckpoint's own file listing ignores (it looks for *.ckpt); created with the
        # umask's permissions like any file (mkstemp would make it private to the user).
        partial = os.path.join(folder, partial_name(os.path.basename(path), uuid.uuid4().hex[:12]))
        try:
            os.makedirs(folder, exist_ok=True)
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as error:  # a read-only or another user's folder: the run cannot save anything
            raise storage_error(path, error) from error
        try:
            with os.fdopen(descriptor, "wb") as file, _checksums_on():
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException as error:
            written = os.path.getsize(partial) if os.path.exists(partial) else 0
            with contextlib.suppress(FileNotFoundError):  # renamed into place just before a second signal
                os.remove(partial)
            cause = _os_error(error)
            if cause is None:
                raise
            # The checkpoint's size is not known before it is written whole: the one it replaces (or the largest
            # beside it) tells, else at least what was written.
            before = ([os.path.getsize(path)] if os.path.exists(path)
                      else [p.stat().st_size for p in Path(folder).glob("*.ckpt")])
            line = str(storage_error(path, cause, max([written, *before])))
            intact = f"; {os.path.basename(path)} as saved before is intact" if os.path.exists(path) else ""
            raise StorageError(line + intact) from error
        _fsync(folder)  # make the rename itself durable
        self._remove_leftovers(folder)

    def _remove_leftovers(self, folder: str) -> None:
        """Delete temporary files of writes that were killed before they finished (and not being written now).

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
                    _remove(entry.path)
            except FileNotFoundError:
                continue  # another process cleaned it up first
            except OSError as error:  # e.g. another user's file in a shared folder: not worth failing a save
                log.warning("could not remove the leftover checkpoint file %s: %s", entry.path, error)


def partial_name(name: str, token: str) -> str:
    """The hidden name a checkpoint ``name`` is written under until it is whole; ``token``: 12 hex digits.

    >>> partial_name("last.ckpt", "0123456789ab")
    '.last.ckpt.0123456789ab.partial'
    """
    return f".{name}.{token}.partial"


def replace_folder(partial: Path, path: Path) -> None:
    """Put the whole checkpoint folder ``partial`` in the place of ``path`` (a folder, a file, or nothing).

    Its files are fsynced first, so that no rename publishes data still in flight. An old ``path`` is renamed
    aside before ``partial`` is renamed in, and deleted after: at every moment a whole checkpoint exists, under
    ``path`` or (between the renames) under the ``.replaced`` name that :func:`remove_partial_files` restores.
    """
    for file in partial.iterdir():
        _fsync(str(file))
    _fsync(str(partial))
    if not os.path.lexists(path):
        os.rename(partial, path)
        _fsync(str(path.parent))
        return
    aside = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.replaced"
    os.rename(path, aside)
    os.rename(partial, path)
    _fsync(str(path.parent))
    _remove(str(aside))


def remove_partial_files(folder: str | os.PathLike[str]) -> list[str]:
    """Delete every temporary file or folder of an interrupted save in ``folder`` (by its name pattern only), and
    put back a checkpoint :func:`replace_folder` had moved aside when it was killed; the caller knows that no
    other process writes there (``RunLock``). Returns the names removed or restored."""
    removed = []
    with contextlib.suppress(FileNotFoundError):  # no checkpoint folder yet
        for entry in os.scandir(folder):
            replaced = _REPLACED_NAME.fullmatch(entry.name)
            target = os.path.join(folder, replaced["name"]) if replaced else None
            if target is not None and not os.path.lexists(target):
                os.rename(entry.path, target)  # killed between replace_folder's renames: the old one is whole
                removed.append(f"{entry.name} (restored as {replaced['name']})")
            elif replaced or _PARTIAL_NAME.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    _remove(entry.path)
                    removed.append(entry.name)
    return removed


def _remove(path: str) -> None:
    """Delete a file, or a folder with everything in it (a sharded checkpoint's)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


@contextlib.contextmanager
def _checksums_on() -> Iterator[None]:
    """torch.save with every record's CRC-32 computed (torch's default, which a user may have turned off)."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind a failed write: torch's writer reports the file's own error as a RuntimeError
    ("unexpected pos ...") whose context it is."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _is_local(path: _PATH) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)


def _fsync(path: str) -> None:
    """Flush a file's data, or a folder's entries (a rename in it), to the disk."""
    if os.name != "posix" and os.path.isdir(path):  # folders cannot be opened for fsync on Windows
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
