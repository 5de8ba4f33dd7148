"""Writing results whole or not at all, and the one line when a write fails.

``ptasr export`` and ``ptasr evaluate`` write folders and files a user keeps. Each is written under a temporary
name on the file system it belongs to and renamed into place only once everything is written
(:func:`staged_folder`, :func:`staged_files`), so a full disk, a read-only folder or an error halfway leaves
nothing new and everything old as it was. :func:`check_writable` asks, before any long work, whether a folder can
be written at all. A write that fails is one line (:func:`storage_error`): the path, the reason, and on a full
disk the space needed and the space free.

Training's caches are optional and never fail a run: ``ptasr.data.cache`` skips them instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ptasr.errors import StorageError, UserError

FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_error(path: str | os.PathLike[str], error: OSError, needed: int | None = None) -> StorageError:
    """The one line for a write that failed: the path, the reason, and on a full disk the space free there and,
    when known, the space the write needs.

    >>> str(storage_error("/ro/out", PermissionError(errno.EACCES, "Permission denied")))
    'cannot write /ro/out: Permission denied; choose a folder you can write'
    """
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno not in FULL:
        return StorageError(f"cannot write {path}: {reason}; choose a folder you can write")
    wanted = f"it needs about {_size(needed)}, " if needed is not None else ""
    return StorageError(f"cannot write {path}: {reason} ({wanted}{_size(free_bytes(Path(path)))} free there); free "
                        f"some space or choose another folder")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing folder)."""
    for folder in (path, *path.absolute().parents):
        with contextlib.suppress(OSError):  # not there (yet): ask its parent
            return shutil.disk_usage(folder).free
    return 0


def _size(count: int) -> str:
    """
    >>> _size(1_234_567), _size(4_000)
    ('1 MB', '4 kB')
    """
    return f"{count / 1e6:,.0f} MB" if count >= 1e6 else f"{count / 1e3:,.0f} kB"


def check_writable(folder: Path) -> None:
    """Refuse a folder that cannot be written (read-only, under a file, full), before any work: a file is made
    and removed in it, or in its nearest existing parent when it does not exist yet (nothing is created).

    Raises:
        StorageError: one line naming ``folder`` and the reason.
    """
    existing = next(p for p in (folder, *folder.absolute().parents) if os.path.lexists(p))
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        probe = existing / f".ptasr-write-check.{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)  # a block: a disk with no room left refuses it
        probe.unlink()
    except OSError as error:
        raise storage_error(folder, error) from error


@contextmanager
def staged_folder(target: Path, needed: int | None = None) -> Iterator[Path]:
    """A new folder to write into; once the block completes, its files take their place in ``target``.

    Absent, ``target`` is the staging folder renamed; present, each of its entries of the same name is replaced,
    and only then (its other files, a ``.git`` say, stay). The staging folder is on the target's file system, so
    every move is a rename: a failure (a full disk, a read-only folder, an error in the block) leaves no staging
    folder and ``target`` as it was, and is one line naming ``target`` and, on a full disk, the space ``needed``
    (bytes, when known) and the space free.
    """
    # inside an existing target (a mount point renames nothing across), else beside it; hidden, named by our pid
    inside = target.is_dir()
    staging = (target / f".ptasr-partial-{os.getpid()}" if inside
               else target.parent / f".{target.name}.ptasr-partial-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed process of the same pid
        staging.mkdir(parents=True)
    except OSError as error:
        raise storage_error(target, error, needed) from error
    try:
        yield staging
        _move_into(staging, target, inside)
    except OSError as error:
        if isinstance(error, UserError):  # a missing input file, said already: not a failure to write
            raise
        raise storage_error(target, error, needed) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(staging: Path, target: Path, inside: bool) -> None:
    """The staged entries into ``target``: a rename of the folder when ``target`` is new, else entry by entry."""
    if not inside:
        os.rename(staging, target)
        return
    replaced = staging / ".replaced"  # the old sub-folders go here, removed with the staging folder
    replaced.mkdir()
    for entry in sorted(staging.iterdir()):
        if entry == replaced:
            continue
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():  # a folder cannot be replaced by a rename
            os.rename(destination, replaced / entry.name)
        os.replace(entry, destination)


@contextmanager
def staged_files(targets: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``targets`` to write; once the block completes, each is renamed to its target.

    A failure in the block (writing them, or anything else) removes them and leaves every target as it was; an
    ``OSError`` is one line naming the target being written.
    """
    staged = [target.with_name(f".{target.name}.ptasr-partial-{os.getpid()}") for target in targets]
    try:
        yield staged
        for path, target in zip(staged, targets, strict=True):
            os.replace(path, target)
    except OSError as error:
        if isinstance(error, UserError):
            raise
        failed = next((t for p, t in zip(staged, targets) if str(p) == error.filename), targets[0])
        raise storage_error(failed, error) from error
    finally:
        for path in staged:
            with contextlib.suppress(OSError):  # not written, or renamed into place already
                path.unlink(missing_ok=True)
