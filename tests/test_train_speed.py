"""Speed perturbation (ptasr.train.speed): what a sped-up clip sounds like, its lengths, the clips it must leave
alone, the settings it refuses, and the training step that uses it (on the batch's device, from its own stream)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import small_module

from ptasr.data.audio import SAMPLE_RATE
from ptasr.data.text import Vocabulary
from ptasr.errors import SettingError
from ptasr.lengths import conv_output_lengths
from ptasr.train.speed import check_speeds, draw_speeds, perturb_speed
from ptasr.train.step_randomness import speed_generator

KERNELS, STRIDES = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)


def _tone(hz: float, samples: int) -> torch.Tensor:
    return torch.sin(2 * math.pi * hz * torch.arange(samples) / SAMPLE_RATE)


def _peak_hz(waveform: torch.Tensor) -> float:
    return float(torch.fft.rfft(waveform).abs().argmax()) * SAMPLE_RATE / len(waveform)


@pytest.mark.parametrize("speed", [0.9, 1.1, 0.95])
def test_a_faster_clip_is_shorter_and_higher_by_the_speed(speed: float) -> None:
    samples = 16000
    out, lengths = perturb_speed(_tone(440.0, samples)[None], torch.tensor([samples]), [speed])
    assert int(lengths[0]) == math.ceil(samples / speed)
    assert out.shape == (1, int(lengths[0]))
    assert _peak_hz(out[0]) == pytest.approx(440.0 * speed, abs=2.0)
    # as loud as before (the resampler's low-pass sits well above 440 Hz)
    assert float(out[0, 1000:-1000].abs().max()) == pytest.approx(1.0, abs=0.02)


def test_each_clip_gets_its_own_speed_and_padding_stays_zero() -> None:
    lengths = torch.tensor([16000, 12000, 8000])
    waveforms = torch.zeros(3, 16000)
    for i, n in enumerate(lengths.tolist()):
        waveforms[i, :n] = _tone(300.0 + 100 * i, n)
    out, new = perturb_speed(waveforms, lengths, [1.1, 1.0, 0.9])
    assert new.tolist() == [math.ceil(16000 / 1.1), 12000, math.ceil(8000 / 0.9)]
    assert new.device.type == "cpu"
    assert out.shape == (3, int(new.max()))
    assert torch.equal(out[1, :12000], waveforms[1, :12000])  # speed 1 is the clip itself
    for i, n in enumerate(new.tolist()):
        assert not out[i, n:].any(), f"clip {i}: the padding after its {n} samples is not zero"
        assert _peak_hz(out[i, :n]) == pytest.approx((300.0 + 100 * i) * [1.1, 1.0, 0.9][i], abs=3.0)


def test_under_autocast_the_samples_keep_their_precision() -> None:
    waveforms, lengths = torch.randn(2, 4000), torch.tensor([4000, 3000])
    expected, _ = perturb_speed(waveforms, lengths, [0.9, 1.1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = perturb_speed(waveforms, lengths, [0.9, 1.1])
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_a_batch_at_speed_one_is_returned_as_it_is() -> None:
    waveforms, lengths = torch.randn(2, 100), torch.tensor([100, 80])
    out, new = perturb_speed(waveforms, lengths, [1.0, 1.0])
    assert out is waveforms and new is lengths


def test_a_speed_that_leaves_ctc_too_few_frames_is_not_drawn() -> None:
    # 16000 samples give 49 frames; at speed 1.1, 44. A text needing 46 frames fits only at speeds <= 1.
    assert conv_output_lengths(16000, KERNELS, STRIDES) == 49
    text = "ab" * 23  # 46 labels, no repeats
    drawn = set()
    for seed in range(40):
        drawn.update(draw_speeds([0.9, 1.0, 1.1], [text], torch.tensor([16000]), KERNELS, STRIDES,
                                 torch.Generator().manual_seed(seed)))
    assert drawn == {0.9, 1.0}
    # a short text draws all three, in roughly equal shares
    many = draw_speeds([0.9, 1.0, 1.1], ["ab"] * 3000, torch.full((3000,), 16000), KERNELS, STRIDES,
                       torch.Generator().manual_seed(0))
    assert {s: many.count(s) for s in (0.9, 1.0, 1.1)} == pytest.approx({0.9: 1000, 1.0: 1000, 1.1: 1000}, abs=100)


@pytest.mark.parametrize("speeds", [[0.3], [1.1, 2.5], [1.00001]])
def test_impossible_speeds_are_refused_in_one_line(speeds: list[float]) -> None:
    with pytest.raises(SettingError, match=r"model.speed_perturbation: speed .* \[0.9, 1.0, 1.1\]"):
        check_speeds(speeds)
    assert check_speeds(None) == () and check_speeds([]) == ()


def test_the_training_step_hears_the_drawn_speeds_and_validation_does_not() -> None:
    vocab = Vocabulary.build(["abc"])
    module = small_module(vocab, speed_perturbation=[0.9, 1.1])
    seen: list[torch.Tensor] = []
    forward = module.model.forward

    def spy(waveforms, lengths, *args, **kwargs):
        seen.append(torch.as_tensor(lengths).clone())
        return forward(waveforms, lengths, *args, **kwargs)

    module.model.forward = spy
    batch = {"waveforms": torch.randn(4, 16000), "lengths": torch.tensor([16000, 16000, 12000, 8000]),
             "labels": torch.tensor([[1, 2, 3]] * 4), "label_lengths": torch.tensor([3] * 4),
             "texts": ["abc"] * 4, "ids": ["a", "b", "c", "d"]}
    module.training_step(batch, 0)
    expected = draw_speeds([0.9, 1.1], batch["texts"], batch["lengths"], KERNELS, STRIDES, speed_generator(0, 0, 0))
    assert seen[0].tolist() == [math.ceil(n / s) for n, s in zip(batch["lengths"].tolist(), expected)]
    assert 1.0 not in expected  # drawn from the two given speeds (the texts fit at both)
    module.vocab = vocab
    module.validation_step(batch, 0)
    assert seen[1].tolist() == batch["lengths"].tolist()
