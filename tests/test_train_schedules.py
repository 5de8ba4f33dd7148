"""Learning-rate schedules: HF's linear schedule reproduced exactly, fairseq's tri-stage by its properties."""

from __future__ import annotations

import math

import pytest
import torch

from ptasr.train.schedules import make_schedule


def _lrs(multiplier, steps: int, peak: float = 1.0) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_linear_equals_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=7.5e-5)
    hf = transformers.get_linear_schedule_with_warmup(optimizer, num_warmup_steps=20, num_training_steps=100)
    expected = []
    for _ in range(110):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        hf.step()
    ours = _lrs(make_schedule("linear", total_steps=100, warmup_steps=20), 110, peak=7.5e-5)
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_tri_stage_shape() -> None:
    lrs = _lrs(make_schedule("tri_stage", total_steps=100, warmup_steps=10, hold_steps=40,
                             init_lr_scale=0.01, final_lr_scale=0.05), 120)
    assert lrs[0] == pytest.approx(0.01)  # starts at init_lr_scale x peak
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # linear rise
    assert lrs[10:50] == [1.0] * 40  # hold at the peak
    decay = lrs[50:101]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly falling
    ratios = [b / a for a, b in zip(decay, decay[1:])]
    assert max(ratios) - min(ratios) < 1e-9  # exponential: a constant ratio per step
    assert lrs[100] == pytest.approx(0.05) and lrs[119] == pytest.approx(0.05)  # then constant at final


def test_tri_stage_rejects_phases_longer_than_training() -> None:
    with pytest.raises(ValueError, match="exceed"):
        make_schedule("tri_stage", total_steps=10, warmup_steps=8, hold_steps=8)


def test_schedule_state_survives_a_checkpoint() -> None:
    # LambdaLR must pickle its multiplier (a partial, not a lambda) for Lightning checkpoints.
    multiplier = make_schedule("tri_stage", total_steps=50, warmup_steps=5, hold_steps=5)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    restored_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    restored = torch.optim.lr_scheduler.LambdaLR(restored_optimizer, multiplier)
    restored.load_state_dict(state)
    assert restored.last_epoch == 7
    assert math.isclose(restored.get_last_lr()[0], scheduler.get_last_lr()[0])
