"""The small pieces of the training system, on their own: non-finite update handling, random states in
checkpoints, the step's random streams, gradient clipping and LayerDrop-skipped gradients, the data's and the
checkpoint's match with the model, and the CLI link that gives the data filter the model's conv numbers."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_MODEL, SMALL_RUN

from ptasr.data.filters import FilterSettings
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.errors import DataError, SettingError, UserError
from ptasr.model.config import Wav2Vec2Config
from ptasr.recognition.trained_model import checkpoint_entry
from ptasr.train.cli import cli_main
from ptasr.train.data_match import check_data_fits_model, text_side_after_loading
from ptasr.train.gradients import clip_with_norm, drop_skipped_layer_gradients
from ptasr.train.nonfinite import NonFiniteUpdates, TrainingDiverged, skip_update_if
from ptasr.train.random_state import RandomStateCheckpoint, rng_states, set_rng_states
from ptasr.train.step_randomness import layerdrop_generator, spec_augment_generator


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


def test_an_update_with_a_nonfinite_norm_is_skipped_counted_and_checked() -> None:
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    guard = NonFiniteUpdates(patience=2)
    weight.grad = torch.ones(2)
    guard.update(torch.tensor(float("inf")), 0, optimizer, skip=True, check=True)
    optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(2)) and int(guard.skipped) == 1
    guard.update(torch.tensor(float("nan")), 1, optimizer, skip=False, check=False)  # fp16: the scaler skips
    assert int(guard.skipped) == 2 and int(guard.diverged_at) == 2
    with pytest.raises(TrainingDiverged):
        guard.update(torch.tensor(1.0), 2, optimizer, skip=True, check=True)


def test_step_generators_are_functions_of_seed_update_batch_and_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")

    def draws(generator: torch.Generator) -> torch.Tensor:
        return torch.rand(8, generator=generator)

    # The seed key is part of what a resumed run must draw again: pinned here.
    assert torch.equal(draws(layerdrop_generator(3, 1)),
                       draws(torch.Generator().manual_seed(hash((42, 3, 1)) & 0x7FFF_FFFF_FFFF_FFFF)))
    assert torch.equal(draws(spec_augment_generator(3, 1, 1)),
                       draws(torch.Generator().manual_seed(hash((42, 3, 1, 1)) & 0x7FFF_FFFF_FFFF_FFFF)))
    assert not torch.equal(draws(spec_augment_generator(3, 1, 0)), draws(spec_augment_generator(3, 1, 1)))
    assert not torch.equal(draws(layerdrop_generator(3, 1)), draws(layerdrop_generator(3, 2)))
    assert not torch.equal(draws(layerdrop_generator(3, 1)), draws(layerdrop_generator(4, 1)))
    monkeypatch.setenv("PL_GLOBAL_SEED", "43")
    assert not torch.equal(draws(layerdrop_generator(3, 1)),
                           draws(torch.Generator().manual_seed(hash((42, 3, 1)) & 0x7FFF_FFFF_FFFF_FFFF)))


def test_clipping_with_a_given_norm_and_its_fp16_refusal() -> None:
    weights = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    for weight in weights:
        weight.grad = torch.full_like(weight, 2.0)
    norm = torch.nn.utils.get_total_norm([w.grad for w in weights])
    with pytest.raises(SettingError, match="fused=true cannot clip fp16-scaled gradients"):
        clip_with_norm(weights, torch.optim.AdamW(weights, fused=True), 1.0, norm, scaled=True)
    clip_with_norm(weights, torch.optim.AdamW(weights, fused=False), 1.0, norm, scaled=True)
    assert float(torch.nn.utils.get_total_norm([w.grad for w in weights])) == pytest.approx(1.0, rel=1e-5)


def test_only_the_skipped_layers_lose_their_gradients() -> None:
    layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3))
    for parameter in layers.parameters():
        parameter.grad = torch.ones_like(parameter)
    drop_skipped_layer_gradients(layers, None)  # no LayerDrop in this update
    assert all(p.grad is not None for p in layers.parameters())
    drop_skipped_layer_gradients(layers, {0, 2})
    assert [all(p.grad is None for p in layer.parameters()) for layer in layers] == [True, False, True]


def test_data_that_does_not_fit_the_model_is_refused() -> None:
    vocab = Vocabulary.build(["ab"])
    config = Wav2Vec2Config.preset("tiny", vocab_size=len(vocab))
    check_data_fits_model(vocab, FilterSettings(), config)  # the preset's conv stack is the filter's default
    check_data_fits_model(None, None, config)
    with pytest.raises(SettingError, match="the data's vocabulary has 6 tokens but the CTC head has 5"):
        check_data_fits_model(Vocabulary.build(["abc"]), None, config)
    with pytest.raises(SettingError, match=r"strides \(5, 2, 2, 2, 2, 2, 3\), but the model has"):
        check_data_fits_model(vocab, FilterSettings(conv_stride=(5, 2, 2, 2, 2, 2, 3)), config)


def test_the_text_side_after_loading_a_checkpoint() -> None:
    saved, data = Vocabulary.build(["ab"]), Vocabulary.build(["abc"])
    entry = checkpoint_entry(Wav2Vec2Config.preset("tiny", vocab_size=len(saved)), saved, TextNormalizer())
    vocab, normalizer = text_side_after_loading(entry, None, None)  # inference: the checkpoint's
    assert vocab == saved and isinstance(normalizer, TextNormalizer)
    own = TextNormalizer(lowercase=False)
    assert text_side_after_loading(entry, saved, own) == (saved, own)  # in a Trainer: the data's, same tokens
    with pytest.raises(DataError, match="the checkpoint's vocabulary"):
        text_side_after_loading(entry, data, None)
    assert text_side_after_loading({}, None, None) == (None, None)  # no entry: nothing to take
