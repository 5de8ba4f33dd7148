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

No launcher ends the ranks of other machines: torchrun's agent ends its own node's workers only, and Lightning's
launcher its own children. Where ranks are not all children of one Lightning launcher (torchrun, SLURM, several
nodes), :class:`PeerFailureWatch` does it through the process group's key-value store: a rank that fails writes
its rank there first, and a thread of every other rank, which looks every :data:`POLL_SECONDS`, ends its
process with one line naming that rank -- also when its main thread is blocked in a collective.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment

from ptasr.compat import process_group_store, take_launched_ranks
from ptasr.errors import TRACEBACK_VARIABLE, UserError, one_line
from ptasr.train.nonfinite import TrainingDiverged

# How long rank 0 lets the other ranks end on their own (an error every rank raises, a signal's coordinated stop)
# before it kills them.
GRACE_SECONDS = 5.0
# How often a rank's PeerFailureWatch asks the store whether another rank failed (one small request).
POLL_SECONDS = 1.0
# The store keys: the rank that failed first; how many other ranks have read it.
FAILED_KEY, READ_KEY = "ptasr/failed_rank", "ptasr/failure_read"


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
    """End the other ranks when this rank's trainer call raises, and name the rank that failed first.

    On rank 0 of Lightning's DDP launcher, the ranks it started and still running after :data:`GRACE_SECONDS`
    are killed (SIGKILL: a process blocked in a collective runs no Python signal handler). Elsewhere the error is
    announced to the other ranks through :class:`PeerFailureWatch`. When another rank had failed first, this rank's
    error (other than a :class:`UserError`, whose line is worth printing too) followed from it, and becomes
    :class:`RankFailed`.
    """
    watch = PeerFailureWatch()
    trainer.callbacks.append(watch)
    try:
        yield
    except BaseException as error:
        # A signal's stop (SystemExit) and a divergence are every rank's at one update: nothing to announce.
        first = watch.failed(trainer.global_rank) if _failure(error) else None
        children = _child_ranks(trainer)
        ended = _end(children) if children else []
        if ended:
            rank, status = ended[0]
            why = f"rank {rank} ended with exit status {status} (its error is above)"
        elif first not in (None, trainer.global_rank):
            why = f"rank {first} failed first (its error is in its own output)"
        else:
            raise
        if isinstance(error, Exception) and not isinstance(error, UserError):
            raise RankFailed(f"{why}, and rank {trainer.global_rank} stopped with the {type(error).__name__} that "
                             f"followed ({TRACEBACK_VARIABLE}=1 shows its traceback)") from error
        raise


def _failure(error: BaseException) -> bool:
    return isinstance(error, Exception) and not isinstance(error, TrainingDiverged)


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


class PeerFailureWatch(L.Callback):
    """Ends this rank within seconds when another rank of the run failed (see the module docstring).

    Active where the process group spans more than one Lightning launcher's children: under torchrun or SLURM,
    or on several nodes. (On one machine, Lightning's launcher and :func:`ranks_end_together` already end its
    ranks together.) :func:`ranks_end_together` adds it to every trainer and calls :meth:`failed` on failure.
    """

    def __init__(self) -> None:
        self._store: torch.distributed.Store | None = None
        self._world_size = 1
        self._stop = threading.Event()
        self._claim = threading.Lock()  # one line per rank: the watcher's, or the failing main thread's

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._store is not None or not _ranks_of_several_launchers(trainer):
            return
        self._store, self._world_size = process_group_store(), trainer.world_size
        rank = trainer.global_rank
        threading.Thread(target=self._watch, args=(rank,), name="ptasr-peer-failure-watch", daemon=True).start()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop.set()

    def failed(self, rank: int) -> int | None:
        """This rank failed: the rank that failed first (``rank`` unless another one wrote its own before), after
        waiting up to 3 polls for the others to read it (the store may live in a process that ends with this one);
        ``None`` where the watch is off or the store is gone."""
        if self._store is None:
            return None
        self._stop.set()
        self._claim.acquire()  # the watcher, if it has already claimed this failure, is ending the process
        try:
            first = int(self._store.compare_set(FAILED_KEY, "", str(rank)))
            if first != rank:
                self._store.add(READ_KEY, 1)
                return first
            deadline = time.monotonic() + 3 * POLL_SECONDS
            while self._store.add(READ_KEY, 0) < self._world_size - 1 and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS / 10)
        except torch.distributed.DistError:  # the store's host (rank 0, or node 0's agent) has ended
            return None
        return first

    def _watch(self, rank: int) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                if not self._store.check([FAILED_KEY]):
                    continue
                first = int(self._store.get(FAILED_KEY))
                self._store.add(READ_KEY, 1)
            except torch.distributed.DistError:  # the store's host has ended: the job ends without this watch
                return
            if not self._claim.acquire(blocking=False):
                return  # this rank failed too, and says so itself
            # The main thread may be blocked in a collective (NCCL waits out the group's timeout): end it here.
            error = RankFailed(f"rank {first} failed (its error is in its own output), and rank {rank} stopped "
                               f"rather than wait for it in its next collective")
            print(one_line(prog_of_rank(Path(sys.argv[0]).name), error), file=sys.stderr, flush=True)
            os._exit(1)


def _ranks_of_several_launchers(trainer: L.Trainer) -> bool:
    """Whether some of the run's ranks are not children of this machine's Lightning launcher."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return distributed and trainer.world_size > 1 and (
        trainer.num_nodes > 1 or not isinstance(environment, LightningEnvironment))
