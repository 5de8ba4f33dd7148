"""DDP ranks share LayerDrop's draws but not SpecAugment's: each rank masks its own spans, and both are functions
of (seed, update, batch[, rank]) only, so a resumed run draws them again exactly."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import small_module

from ptasr.data.text import Vocabulary
from ptasr.train.module import Wav2Vec2CTCModule

BATCH = {"waveforms": torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)),
         "lengths": torch.tensor([16000, 16000]), "labels": torch.tensor([[1, 2], [2, 1]]),
         "label_lengths": torch.tensor([2, 2]), "texts": ["", ""], "ids": ["a", "b"]}


@pytest.fixture
def module(monkeypatch: pytest.MonkeyPatch) -> Wav2Vec2CTCModule:
    # SpecAugment and LayerDrop on, dropout off: the masks and the dropped layers are the only randomness.
    module = small_module(Vocabulary.build(["ab"]), config_overrides=dict(
        num_hidden_layers=4, layerdrop=0.5, mask_time_prob=0.5, mask_time_length=2, mask_feature_prob=0.3,
        mask_feature_length=4, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0))
    module.trainer = L.Trainer(accelerator="cpu", logger=False)
    module.log = lambda *args, **kwargs: None  # no fit loop here to log into
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    return module


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    monkeypatch.setattr(Wav2Vec2CTCModule, "global_rank", property(lambda self: rank))


def _step(module: Wav2Vec2CTCModule, batch_idx: int) -> tuple[list[int], torch.Tensor]:
    outputs = module.training_step(BATCH, batch_idx)
    return outputs["dropped_layers"], outputs["logits"].detach()


def test_ranks_drop_the_same_layers_but_mask_different_spans(module: Wav2Vec2CTCModule,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    steps = {}
    for rank in (0, 1):
        _as_rank(monkeypatch, rank)
        steps[rank] = [_step(module, batch_idx) for batch_idx in range(6)]
    for (dropped_0, logits_0), (dropped_1, logits_1) in zip(steps[0], steps[1], strict=True):
        assert dropped_0 == dropped_1
        assert not torch.allclose(logits_0, logits_1)  # the same clips, the same layers: only the masks differ
    assert len({tuple(dropped) for dropped, _ in steps[0]}) > 1  # LayerDrop really draws per batch


def test_each_rank_draws_its_masks_again_exactly(module: Wav2Vec2CTCModule, monkeypatch: pytest.MonkeyPatch) -> None:
    _as_rank(monkeypatch, 1)
    first = _step(module, 3)
    _step(module, 4)  # other draws in between, and torch's global generator moved on
    torch.manual_seed(1234)
    again = _step(module, 3)
    assert first[0] == again[0] and torch.equal(first[1], again[1])
