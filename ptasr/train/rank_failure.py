"""Under DDP, a failure on one rank ends every rank within seconds, and its one line names the rank.

Lightning's DDP launcher (``--trainer.strategy=ddp`` without torchrun or SLURM) runs ranks 1..N-1 as child
processes of rank 0, the process the user started. A thread of rank 0 watches them: when a child ends with an
error, it kills every process, rank 0 included, within 5 s (SIGKILL, so the job's exit status is 137). Nothing
watches the other way: when rank 0 fails, the children wait in their next collective (the gradient all-reduce)
until the process group's timeout -- 30 minutes, holding their GPUs, under NCCL, which does not notice that a
peer is gone (gloo does, by its closed connection). :func:`ranks_end_together` ends them from rank 0, as torchrun
ends the other workers of a failed one.

Under gloo, the failure of a child reaches rank 0 as an error of its own ("Connection closed by peer", a long
traceback printed after the child's line); rank 0 then prints one line naming the rank that failed instead,
unless Lightning's watcher has killed it first.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch

from ptasr.compat import take_launched_ranks
from ptasr.errors import TRACEBACK_VARIABLE, UserError

# How long rank 0 lets the other ranks end on their own (an error every rank raises, a signal's coordinated stop)
# before it kills them.
GRACE_SECONDS = 5.0


class RankFailed(UserError, RuntimeError):
    """Rank 0 stopped because another rank ended with an error; that rank's own message says why."""


def prog_of_rank(prog: str) -> str:
    """``prog``, with the rank when this process is one of several DDP ranks: every rank prints its own error.

    >>> prog_of_rank("train.py")  # no process group here
    'train.py'
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size() > 1:
        return f"{prog} (rank {torch.distributed.get_rank()})"
    return prog


@contextmanager
def ranks_end_together(trainer: L.Trainer) -> Iterator[None]:
    """On rank 0 of Lightning's DDP launcher, end the other ranks of this machine when the trainer call raises.

    The ranks still running after :data:`GRACE_SECONDS` are killed (SIGKILL: a process blocked in a collective
    runs no Python signal handler). When one of them had ended with an error on its own, rank 0's error (other
    than a :class:`UserError`, whose line is worth printing too) followed from it, and becomes :class:`RankFailed`.
    """
    try:
        yield
    except BaseException as error:
        children = _child_ranks(trainer)
        if not children:
            raise
        failed = _end(children)
        if failed and isinstance(error, Exception) and not isinstance(error, UserError):
            rank, status = failed[0]
            raise RankFailed(f"rank {rank} ended with exit status {status} (its error is above), and rank "
                             f"{trainer.global_rank} stopped with the {type(error).__name__} that followed "
                             f"({TRACEBACK_VARIABLE}=1 shows its traceback)") from error
        raise


def _child_ranks(trainer: L.Trainer) -> dict[int, subprocess.Popen]:
    """The processes Lightning's launcher started from this one, by global rank: none on the ranks it started,
    nor under torchrun (which ends the other workers itself) or SLURM (``srun --kill-on-bad-exit=1`` does)."""
    processes = take_launched_ranks(trainer)
    return {trainer.global_rank + local_rank: process for local_rank, process in enumerate(processes, 1)}


def _end(children: dict[int, subprocess.Popen]) -> list[tuple[int, int]]:
    """Wait up to GRACE_SECONDS for the children to end, kill the rest; (rank, exit status) of those that
    ended with an error on their own."""
    deadline = time.monotonic() + GRACE_SECONDS
    while any(child.poll() is None for child in children.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    failed = [(rank, child.returncode) for rank, child in children.items() if child.returncode]
    for child in children.values():
        if child.poll() is None:
            child.kill()
    return failed
