"""No run folder for a run that fails before it wrote anything of its own (issue 22 j).

Lightning creates the logger's folder (``runs/<name>/version_N`` and TensorBoard's events file in it) before the
data module's ``setup``, so a fit refused there -- a manifest without clips, a vocabulary that does not fit --
used to leave a ``version_N`` holding only that events file: the next run became ``version_N+1``, and every path
the README gives (``version_0/checkpoints/last.ckpt``) pointed at the empty one.

:func:`no_run_folder_on_failure` removes, when the command fails, the folders this command created on the way
to the logger's folder, provided they hold nothing but this process's own events files. A folder that existed
before, or that holds anything else (a config, a checkpoint, another process's events), is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L

EVENTS = "events.out.tfevents."


@contextmanager
def no_run_folder_on_failure(trainer: L.Trainer) -> Iterator[None]:
    """Run the body; if it raises, remove the run folders it created that hold only its own events files."""
    created = _folders_to_create(trainer)
    try:
        yield
    except BaseException:
        for folder in created:  # the deepest first
            _remove_if_only_own_events(folder)
        raise


def _folders_to_create(trainer: L.Trainer) -> list[Path]:
    """The logger's folder and those above it that do not exist yet, deepest first (rank 0 only)."""
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    if log_dir is None or not trainer.is_global_zero:
        return []
    folder, created = Path(log_dir).absolute(), []
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    return created


def _remove_if_only_own_events(folder: Path) -> None:
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    own = f".{os.getpid()}."  # TensorBoard names its file events.out.tfevents.<time>.<host>.<pid>.<n>
    if not all(entry.is_file() and entry.name.startswith(EVENTS) and own in entry.name for entry in entries):
        return
    for entry in entries:
        entry.unlink()
    folder.rmdir()
