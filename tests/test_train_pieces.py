"""The small pieces of the training system, on their own: non-finite update handling, random states in
checkpoints, and the CLI link that gives the data filter the model's conv numbers."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ptasr.errors import UserError
from ptasr.train.cli import cli_main
from ptasr.train.nonfinite import NonFiniteUpdates, TrainingDiverged, skip_update_if
from ptasr.train.random_state import RandomStateCheckpoint, rng_states, set_rng_states
from helpers import SMALL_MODEL, SMALL_RUN


def test_a_streak_that_reaches_the_patience_diverges_at_its_update() -> None:
    guard = NonFiniteUpdates(patience=3)
    for update, finite in enumerate([True, False, False, True, False, False, False, False]):
        guard.record(torch.tensor(not finite), update)
        if update < 6:
            guard.check()  # streaks of 2 and of 2 so far: not diverged
    assert int(guard.skipped) == 6 and int(guard.diverged_at) == 7  # the 3rd of the second streak, 1-based
    with pytest.raises(TrainingDiverged, match=r"the 3 updates up to update 7 .*\(6 skipped in all\)") as error:
        guard.check()
    assert isinstance(error.value, UserError)


def test_no_patience_counts_but_never_diverges() -> None:
    guard = NonFiniteUpdates(patience=None)
    for update in range(5):
        guard.record(torch.tensor(True), update)
    guard.check()
    assert int(guard.skipped) == 5 and int(guard.diverged_at) == -1


@pytest.mark.parametrize("fused", [True, False])
def test_skip_update_if_leaves_the_weights(fused: bool) -> None:
    for nonfinite in (True, False):
        weight = torch.nn.Parameter(torch.ones(2))
        optimizer = torch.optim.AdamW([weight], lr=0.1, fused=fused)
        weight.grad = torch.ones(2)
        skip_update_if(torch.tensor(nonfinite), optimizer)
        optimizer.step()
        assert torch.equal(weight.detach(), torch.ones(2)) == nonfinite


class _Trainer:
    """What RandomStateCheckpoint reads of a Trainer: the running stage."""

    def __init__(self, fn: str) -> None:
        self.state = type("State", (), {"fn": fn})()


def test_saved_random_states_replay_the_same_draws_in_a_resumed_fit() -> None:
    callback = RandomStateCheckpoint()
    checkpoint: dict = {}
    callback.on_save_checkpoint(_Trainer("fit"), None, checkpoint)  # type: ignore[arg-type]
    draws = (torch.rand(3), random.random(), np.random.rand())
    callback.on_load_checkpoint(_Trainer("fit"), None, checkpoint)  # type: ignore[arg-type]
    torch.rand(5), random.random(), np.random.rand()  # what happens between loading and the first update
    callback.on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]
    callback.on_train_batch_start(None, None, None, 1)  # type: ignore[arg-type]
    assert not torch.equal(torch.rand(3), draws[0])  # restored once only


def test_validate_from_a_checkpoint_leaves_the_random_streams() -> None:
    callback = RandomStateCheckpoint()
    checkpoint: dict = {}
    callback.on_save_checkpoint(_Trainer("fit"), None, checkpoint)  # type: ignore[arg-type]
    draws = torch.rand(3)
    callback.on_load_checkpoint(_Trainer("validate"), None, checkpoint)  # type: ignore[arg-type]
    callback.on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    assert not torch.equal(torch.rand(3), draws)


def test_random_states_survive_weights_only_loading(tmp_path: Path) -> None:
    path = tmp_path / "states.pt"
    torch.save({"rng": rng_states()}, path)
    expected = torch.rand(2), random.random(), np.random.rand()
    set_rng_states(torch.load(path, weights_only=True)["rng"])
    assert torch.equal(torch.rand(2), expected[0]) and (random.random(), np.random.rand()) == expected[1:]


def test_the_data_filter_counts_frames_with_the_models_conv_stack(tmp_path: Path) -> None:
    # The CLI links the model's conv numbers into the data module: one source, even when they are overridden.
    cli = cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path}", *SMALL_MODEL, *SMALL_RUN,
                    "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                    "--model.config_overrides.conv_stride=[5,2,2,2,2,2,3]"])
    config = cli.model.model.config
    assert config.conv_stride == (5, 2, 2, 2, 2, 2, 3)
    assert (cli.datamodule.filters.conv_kernel, cli.datamodule.filters.conv_stride) == (config.conv_kernel,
                                                                                         config.conv_stride)
