"""One DDP rank fails (out of memory, a bug) in a 2-process ``python train.py fit`` (gloo, CPU): the job ends
within seconds, each rank's line names it, and last.ckpt stays at the last update every rank completed. The same
under the sharded strategy (``ptasr.train.sharding``), and for 2 "nodes" on localhost under ``torchrun`` (one
process each), where no launcher sees the other node's processes (``ptasr.train.rank_failure.PeerFailureWatch``).

NCCL does not notice that a peer is gone: the ranks left wait in their next collective until the process group's
timeout (30 minutes). On CPU a rank that sleeps at the failing update stands in for one blocked that way; under
gloo the rank in the gradient all-reduce gets "Connection closed by peer" as soon as the failed rank's process ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import HANG_S, SMALL_MODEL, SMALL_RUN

REPO = Path(__file__).resolve().parents[1]
TORCH_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB"
FAILING_UPDATE = 2  # raised while the third update is computed (two are complete)
# Seconds from the failure to the end of the job: what the tests prove is that it does not wait for the process
# group's own timeout (30 minutes); the margin is for a machine shared with a competing process, where the
# job's teardown takes several times its idle 5-10 s.
ENDS_WITHIN = 240.0
BLOCKED_FOR = 1800  # a rank blocked in a collective stays there until that timeout


class FailOnRank(L.Callback):
    """On rank ``rank`` at update ``step``, just before the backward pass (and its gradient all-reduce): raises
    torch's OutOfMemoryError (``oom``) or a RuntimeError (``bug``), or blocks (``block``), as a NCCL collective
    whose peer is gone does. Writes ``<folder>/failed`` (the time) or ``<folder>/blocked`` (its process id)."""

    def __init__(self, rank: int, error: str, folder: str, step: int = FAILING_UPDATE) -> None:
        self.rank, self.error, self.folder, self.step = rank, error, Path(folder), step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_rank != self.rank or trainer.global_step != self.step:
            return
        if self.error == "block":
            (self.folder / "blocked").write_text(str(os.getpid()))
            time.sleep(BLOCKED_FOR)
            return
        (self.folder / "failed").write_text(str(time.time()))
        if self.error == "oom":
            raise torch.OutOfMemoryError(TORCH_MESSAGE)
        raise RuntimeError(f"a bug on rank {trainer.global_rank}")


def _fit_args(folder: Path, failures: tuple[dict, ...], strategy: str) -> list[str]:
    """``train.py fit`` arguments of the small 6-update run, with the given FailOnRank arguments."""
    callbacks = [yaml.safe_dump({"class_path": "test_ddp_failure.FailOnRank",
                                 "init_args": {**failure, "folder": str(folder)}}, default_flow_style=True).strip()
                 for failure in failures]
    return [f"--trainer.logger.init_args.save_dir={folder}", *SMALL_MODEL, *SMALL_RUN, "--trainer.max_steps=6",
            "--trainer.max_time=null", "--trainer.limit_val_batches=1", "--trainer.precision=32-true",
            "--trainer.accelerator=cpu", *STRATEGIES[strategy],
            *(f"--trainer.callbacks+={callback}" for callback in callbacks)]


STRATEGIES = {"ddp": ["--trainer.strategy=ddp"],
              "sharded": ["--trainer.strategy=ptasr.train.sharding.ShardedStrategy",
                          "--trainer.strategy.param_dtype=float32"]}


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))


def _fit(folder: Path, *failures: dict, strategy: str = "ddp") -> tuple[int, str, float]:
    """Run the 2-rank fit with the given FailOnRank arguments; its exit status, stderr, and the seconds from
    the failure to the end of every process of the job (infinite if one was left running)."""
    command = [sys.executable, str(REPO / "train.py"), "fit", *_fit_args(folder, failures, strategy),
               "--trainer.devices=2"]
    # stderr into a file: a rank left running keeps a pipe open. Its own session, so that whatever is left of the
    # job can be ended here.
    with open(folder / "stderr.txt", "w") as stderr:
        job = subprocess.Popen(command, cwd=folder, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr,
                               start_new_session=True)
    try:
        job.wait(timeout=HANG_S)  # rank 0
        blocked = folder / "blocked"  # the rank that sleeps, rank 0 or not
        deadline = _failed_at(folder) + ENDS_WITHIN
        while blocked.exists() and _alive(int(blocked.read_text())) and time.time() < deadline:
            time.sleep(0.2)
        left_running = blocked.exists() and _alive(int(blocked.read_text()))
        seconds = float("inf") if left_running else time.time() - _failed_at(folder)
    finally:
        if _group_alive(job.pid):
            os.killpg(job.pid, signal.SIGKILL)
    return job.returncode, (folder / "stderr.txt").read_text(), seconds


def _failed_at(folder: Path) -> float:
    return float((folder / "failed").read_text())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; its parent (or init) has not reaped it yet


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _errors(stderr: str) -> list[str]:
    # A line printed while rank 0's progress bar is drawn follows the bar on its line.
    return [line[line.index("train.py"):] for line in stderr.splitlines()
            if "train.py" in line and ": error: " in line]


def _last_step(folder: Path) -> int:
    checkpoint = torch.load(folder / "demo" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=True)
    return checkpoint["global_step"]


def test_rank_1_out_of_memory_ends_the_job_with_its_line_and_last_at_the_last_complete_update(tmp_path: Path) -> None:
    status, stderr, seconds = _fit(tmp_path, {"rank": 1, "error": "oom"})
    assert seconds < ENDS_WITHIN, stderr[-3000:]
    errors = _errors(stderr)
    assert errors[0].startswith("train.py (rank 1): error: out of memory in a training batch of "), stderr[-3000:]
    # Rank 0, in the gradient all-reduce, gets gloo's "Connection closed by peer" and prints one line for it,
    # unless Lightning's watcher of the child processes kills it first (SIGKILL), which it may within 5 s.
    if status == 1:
        assert errors[1:] == ["train.py (rank 0): error: rank 1 ended with exit status 1 (its error is above), and "
                              "rank 0 stopped with the RuntimeError that followed (PTASR_TRACEBACK=1 shows its "
                              "traceback)"]
        assert "Traceback" not in stderr
    else:
        assert status == -signal.SIGKILL and errors[1:] == [], stderr[-3000:]
    # SMALL_RUN validates (and LastCheckpoint saves) every 2 updates; the failed third update is in no checkpoint.
    assert _last_step(tmp_path) == FAILING_UPDATE


def test_rank_0_out_of_memory_ends_a_rank_blocked_in_a_collective(tmp_path: Path) -> None:
    status, stderr, seconds = _fit(tmp_path, {"rank": 0, "error": "oom"}, {"rank": 1, "error": "block"})
    assert seconds < ENDS_WITHIN, stderr[-3000:]
    assert status == 1, stderr[-3000:]
    [line] = _errors(stderr)
    assert line.startswith("train.py (rank 0): error: out of memory in a training batch of ")
    assert "Traceback" not in stderr


def test_a_bug_on_rank_1_ends_rank_0_blocked_in_a_collective(tmp_path: Path) -> None:
    # Lightning's watcher of the child processes kills rank 0 (SIGKILL) within 5 s of rank 1's end.
    status, stderr, seconds = _fit(tmp_path, {"rank": 1, "error": "bug"}, {"rank": 0, "error": "block"})
    assert seconds < ENDS_WITHIN, stderr[-3000:]
    assert status == -signal.SIGKILL, stderr[-3000:]
    assert "[rank1]: RuntimeError: a bug on rank 1" in stderr  # a bug keeps its traceback, torch names the rank
    assert "Child process with PID" in stderr and "terminated with code 1" in stderr


def test_sharded_rank_1_out_of_memory_ends_the_job_with_its_line(tmp_path: Path) -> None:
    status, stderr, seconds = _fit(tmp_path, {"rank": 1, "error": "oom"}, strategy="sharded")
    assert seconds < ENDS_WITHIN, stderr[-3000:]
    errors = _errors(stderr)
    assert errors[0].startswith("train.py (rank 1): error: out of memory in a training batch of "), stderr[-3000:]
    # Rank 0 gets gloo's "Connection closed by peer" in its next collective, unless Lightning's watcher kills it.
    assert status == 1 and errors[1].startswith("train.py (rank 0): error: rank 1 ended with exit status 1") \
        or status == -signal.SIGKILL and errors[1:] == [], stderr[-3000:]


def _fit_on_two_nodes(folder: Path, *failures: dict) -> tuple[list[int], list[str], float]:
    """The sharded fit on 2 "nodes" of localhost: a ``torchrun --nnodes 2`` of one process per node, each in its
    own session. Each node's exit status and output, and the seconds from the failure to the end of both."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nodes = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", str(REPO / "train.py"),
                   "fit", *_fit_args(folder, failures, "sharded"), "--trainer.devices=1", "--trainer.num_nodes=2",
                   "--trainer.logger.init_args.version=0"]
        with open(folder / f"node{node}.txt", "w") as output:
            nodes.append(subprocess.Popen(command, cwd=folder, env=_env(), stdout=output, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    try:
        deadline = time.time() + HANG_S
        while not (folder / "failed").exists() and time.time() < deadline:
            assert all(node.poll() is None for node in nodes), "a node ended before the failure"
            time.sleep(0.2)
        deadline = _failed_at(folder) + ENDS_WITHIN
        while any(node.poll() is None for node in nodes) and time.time() < deadline:
            time.sleep(0.2)
        left_running = any(node.poll() is None for node in nodes)
        seconds = float("inf") if left_running else time.time() - _failed_at(folder)
    finally:
        for node in nodes:
            if _group_alive(node.pid):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    return [node.returncode for node in nodes], [(folder / f"node{n}.txt").read_text() for n in (0, 1)], seconds


@pytest.mark.parametrize(("failing", "blocked"), [(1, 0), (0, 1)])
def test_a_failing_node_ends_the_other_blocked_in_a_collective(tmp_path: Path, failing: int, blocked: int) -> None:
    # The other node's rank sleeps at the failing update, as one blocked in a NCCL collective does: nothing of
    # its own would end it. Node 0 holds the job's store (torchrun's agent), node 1 reaches it over TCP.
    statuses, outputs, seconds = _fit_on_two_nodes(tmp_path, {"rank": failing, "error": "oom"},
                                                   {"rank": blocked, "error": "block"})
    assert seconds < ENDS_WITHIN, outputs[0][-3000:] + outputs[1][-3000:]
    assert statuses == [1, 1]
    assert _errors(outputs[failing])[0].startswith(f"train.py (rank {failing}): error: out of memory in a training ")
    assert _errors(outputs[blocked]) == [f"train.py (rank {blocked}): error: rank {failing} failed (its error is in "
                                         f"its own output), and rank {blocked} stopped rather than wait for it in its "
                                         f"next collective"]
