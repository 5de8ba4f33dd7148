"""The sharded strategy (``ptasr.train.sharding``, FSDP2) on CPU: 2 gloo processes under ``torchrun`` train as
one process does -- the same loss and every gradient within 1e-5 for 10 updates (LayerDrop on in one variant; 3
updates of a 2-layer model of XLS-R 1B's layer shape), a resume from its sharded checkpoint continues as the
uninterrupted run, a kill in the middle of a save leaves the previous last.ckpt whole, 2 "nodes" on localhost give
the 1-node losses, and the sharded checkpoint loads (weight-normed positional conv included) for test and export.

The runs are ``tests/sharded_run.py``: fixed batches, every rank its share of each update's 4 clips.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import HANG_S, SMALL_MODEL, SMALL_RUN, sigterm_two_ranks
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptasr.recognition.trained_model import load_any
from ptasr.train.checkpoint_io import remove_partial_files
from ptasr.train.cli import cli_main

ROOT = Path(__file__).resolve().parent
RUN = str(ROOT / "sharded_run.py")
UPDATES = 10
UPDATES_PER_EPOCH = 5  # sharded_run.py saves a checkpoint and last.ckpt at the end of each epoch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    # One thread per process: the ranks share two cores. sharded_run imports helpers from this folder. A rank
    # that dies of a signal prints every thread's Python stack (faulthandler): _crash_report shows them.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1",
                PYTHONPATH=os.pathsep.join([str(ROOT.parent), str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _torchrun(nodes: int, per_node: int, node_rank: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={per_node}",
            f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]


def _fit(out: Path, *args: str, ranks: int = 1) -> Path:
    """``sharded_run.py`` in one process (``ranks=1``) or under torchrun with ``ranks`` processes; ``out``.

    A torchrun whose rank died of SIGABRT or SIGSEGV runs once more, with a warning that carries the crash report:
    one rank of the 1B-shaped run aborted once in about 45 runs (in a whole-suite run; 0 in 40 runs of it alone),
    cause not found yet. A second such death, or any other failure, fails the test.
    """
    for attempt in (1, 2):
        launcher = [sys.executable] if ranks == 1 else _torchrun(1, ranks, 0, _free_port())
        result = subprocess.run([*launcher, RUN, f"--out={out}", *args], env=_env(), capture_output=True,
                                text=True, timeout=HANG_S)
        crashed = re.search(r"Signal \d+ \((SIGABRT|SIGSEGV)\) received by PID", result.stderr)
        if result.returncode == 0 or attempt == 2 or not crashed:
            break
        warnings.warn(f"{out.name}: a rank died of {crashed[1]}; running it once more. {_crash_report(result.stderr)}",
                      stacklevel=2)
        shutil.rmtree(out, ignore_errors=True)
    assert result.returncode == 0, _crash_report(result.stderr)
    return out


def _crash_report(stderr: str) -> str:
    """A failed run's stderr, short: what a rank that died of a signal printed (a C++ exception's ``what()``,
    faulthandler's stacks), which the tail alone loses behind the other ranks' tracebacks; then the tail."""
    lines = stderr.splitlines()
    crash = next((i for i, line in enumerate(lines) if "terminate called" in line or "Fatal Python error" in line),
                 None)
    head = "\n".join(lines[crash: crash + 40]) + "\n...\n" if crash is not None else ""
    return head + stderr[-3000:]


def _updates(out: Path, mmap: bool = False) -> dict[int, dict]:
    """The run's record; ``mmap``: its tensors read from the file as they are used (a 1B-shaped run's are large)."""
    return torch.load(out / "updates.pt", weights_only=False, mmap=mmap)


def _assert_same_training(single: dict[int, dict], sharded: dict[int, dict], updates: range) -> None:
    """Same mean loss and the same gradient of every parameter (``None`` where neither had one) at each update."""
    assert sorted(sharded) == list(updates)
    for update in updates:
        one, many = single[update], sharded[update]
        assert many["loss"] == pytest.approx(one["loss"], abs=1e-5, nan_ok=True), update
        assert one["dropped"] == many["dropped"]
        assert one["grads"].keys() == many["grads"].keys()
        for name, grad in one["grads"].items():
            if grad is None:
                assert many["grads"][name] is None, (update, name)
            else:
                torch.testing.assert_close(many["grads"][name], grad, rtol=0, atol=1e-5, equal_nan=True,
                                           msg=f"{update} {name}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 1-process and the 2-process (sharded) fit of the same 10 updates."""
    tmp = tmp_path_factory.mktemp("sharded")
    return {"single": _fit(tmp / "single"), "sharded": _fit(tmp / "sharded", ranks=2)}


def test_two_sharded_ranks_train_as_one_process(runs: dict[str, Path]) -> None:
    single, sharded = _updates(runs["single"]), _updates(runs["sharded"])
    _assert_same_training(single, sharded, range(1, UPDATES + 1))
    # A real comparison: the transformer was frozen for 2 updates, then trained (with clipping) and learned.
    assert sum(g is not None for g in single[1]["grads"].values()) == 2  # the CTC head alone
    assert sum(g is not None for g in single[3]["grads"].values()) > 20
    assert single[UPDATES]["loss"] < single[1]["loss"] - 0.3


def test_two_sharded_ranks_train_a_1b_shaped_model_as_one_process(tmp_path: Path) -> None:
    # XLS-R 1B's layer shape (the preset: hidden 1280, 16 heads, FFN 5120, its conv stack and 128-wide positional
    # conv) with 2 transformer layers, 57 M parameters: 2 clips of 0.375 s per update, one per rank. 3 updates,
    # not 10: each of the two runs records 210 MB of gradients per update and takes 20-30 s on 2 loaded cores.
    args = ("--shape=xls-r-1b", "--clips=2", "--updates=3", "--no-checkpoints")
    single = _updates(_fit(tmp_path / "single", *args), mmap=True)
    sharded = _updates(_fit(tmp_path / "sharded", *args, ranks=2), mmap=True)
    _assert_same_training(single, sharded, range(1, 4))
    assert single[1]["grads"]["wav2vec2.encoder.layers.1.feed_forward.output_dense.weight"].shape == (1280, 5120)
    assert sum(g is not None for g in single[1]["grads"].values()) == 43  # all but the frozen conv stack's


def test_layerdrop_and_a_nonfinite_update_under_sharding_as_one_process(tmp_path: Path) -> None:
    args = ("--layers=4", "--layerdrop=0.5", "--nan-update=4")
    single, sharded = _updates(_fit(tmp_path / "single", *args)), _updates(_fit(tmp_path / "sharded", *args, ranks=2))
    _assert_same_training(single, sharded, range(1, UPDATES + 1))
    # Skipped layers got no gradient on the sharded ranks either (their units neither gathered nor reduced).
    assert any(0 < len(update["dropped"]) < 4 for update in single.values())
    # The NaN update was skipped on every rank, as in one process: training went on from finite weights.
    assert sharded[4]["loss"] != sharded[4]["loss"]  # NaN
    assert all(torch.isfinite(torch.tensor(sharded[u]["loss"])) for u in range(5, UPDATES + 1))


def test_sharded_checkpoint_resumes_exactly(runs: dict[str, Path], tmp_path: Path) -> None:
    halfway = runs["sharded"] / "checkpoints" / "epoch=0-step=5.ckpt"
    assert (halfway / "meta.pt").is_file() and len(list(halfway.glob("*.distcp"))) == 2  # one shard per rank
    resumed = _updates(_fit(tmp_path / "resumed", f"--resume={halfway}", ranks=2))
    uninterrupted = _updates(runs["sharded"])
    assert sorted(resumed) == list(range(6, UPDATES + 1))
    for update in resumed:
        assert resumed[update]["loss"] == pytest.approx(uninterrupted[update]["loss"], abs=1e-6), update


def test_a_kill_mid_sharded_save_keeps_the_previous_last_checkpoint(runs: dict[str, Path], tmp_path: Path) -> None:
    # Both ranks have written their shards of the second last.ckpt (update 10) and not finished the save: the
    # job is killed there. last.ckpt is still the whole one of update 5 and resumes as the uninterrupted run.
    out = tmp_path / "killed"
    job = subprocess.Popen([*_torchrun(1, 2, 0, _free_port()), RUN, f"--out={out}", "--stall-in-last-save=2"],
                           env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not all((out / f"in-save-{rank}").exists() for rank in (0, 1)):
            assert job.poll() is None, f"the run ended with status {job.returncode} before its second save"
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        for marker in out.glob("in-save-*"):  # the ranks themselves: torchrun's SIGKILL leaves them sleeping
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(marker.read_text()), signal.SIGKILL)
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == UPDATES_PER_EPOCH
    resumed = _updates(_fit(tmp_path / "resumed", f"--resume={last}", ranks=2))
    uninterrupted = _updates(runs["sharded"])
    assert sorted(resumed) == list(range(UPDATES_PER_EPOCH + 1, UPDATES + 1))
    for update in resumed:
        assert resumed[update]["loss"] == pytest.approx(uninterrupted[update]["loss"], abs=1e-6), update
    [partial] = (out / "checkpoints").glob(".last.ckpt.*.partial")  # the killed save's, for the next start
    assert len(list(partial.glob("*.distcp"))) == 2
    assert remove_partial_files(out / "checkpoints") == [partial.name]  # what RunLock does at the next start


def test_sharded_checkpoint_loads_whole_weight_norm_included(runs: dict[str, Path], tmp_path: Path) -> None:
    trained = torch.load(runs["sharded"] / "weights.pt")  # gathered from the ranks at the end of the fit
    loaded = load_any(runs["sharded"] / "checkpoints" / "epoch=1-step=10.ckpt")  # what export and transcribe read
    weights = dict(loaded.model.named_parameters())
    assert weights.keys() == trained.keys()
    positional = [name for name in trained if "pos_conv_embed.conv.parametrizations.weight.original" in name]
    assert len(positional) == 2  # g and v of the weight norm
    for name, weight in trained.items():
        torch.testing.assert_close(weights[name].detach(), weight, rtol=0, atol=0, msg=name)
    assert loaded.metadata["global_step"] == UPDATES


def test_two_nodes_on_localhost_train_as_one_node(runs: dict[str, Path], tmp_path: Path) -> None:
    port, out = _free_port(), tmp_path / "nodes"
    nodes = [subprocess.Popen([*_torchrun(2, 1, rank, port), RUN, f"--out={out}"], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=HANG_S)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    one_node, two_nodes = _updates(runs["sharded"]), _updates(out)
    assert sorted(two_nodes) == sorted(one_node)
    for update in one_node:
        assert two_nodes[update]["loss"] == pytest.approx(one_node[update]["loss"], abs=1e-6), update


def test_sharded_fit_stops_every_rank_at_one_update_on_sigterm_and_test_reads_it(tmp_path: Path) -> None:
    # `train.py fit` with the strategy from the config line (Lightning launches rank 1), a validation under
    # sharding (WER of both ranks' clips), then SIGTERM to rank 0 only: both ranks save last.ckpt at one update.
    fit_args = [*SMALL_MODEL, *SMALL_RUN, "--trainer.max_steps=40", "--trainer.max_time=null",
                "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.precision=32-true",
                "--trainer.accelerator=cpu"]
    command = [sys.executable, str(ROOT.parent / "train.py"), "fit", f"--trainer.logger.init_args.save_dir={tmp_path}",
               *fit_args, "--trainer.callbacks+=test_run_end.SlowStepLog", f"--trainer.callbacks.folder={tmp_path}",
               "--trainer.devices=2", "--trainer.strategy=ptasr.train.sharding.ShardedStrategy",
               "--trainer.strategy.param_dtype=float32"]
    returncode, updates, stderr = sigterm_two_ranks(command, tmp_path, _env(), updates_first=3, what="sharded")
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert updates[0] == updates[1] and 3 <= updates[0][-1] < 40  # both ranks stopped after the same update
    run = tmp_path / "demo" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert len(list(last.glob("*.distcp"))) == 2  # each rank wrote its shard
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == updates[0][-1]
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    assert "val/wer" in events.Tags()["scalars"]  # validated under sharding, WER summed over the ranks

    # `train.py test` of the sharded checkpoint in one process, without the sharded strategy.
    cli_main(["test", f"--trainer.logger.init_args.save_dir={tmp_path / 'test'}", *fit_args,
              f"--ckpt_path={last}"])
    [test_events] = (tmp_path / "test").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(test_events), size_guidance={"scalars": 0})
    events.Reload()
    assert {"test/wer", "test/loss"} <= set(events.Tags()["scalars"])
