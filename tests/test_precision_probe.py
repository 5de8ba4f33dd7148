"""Low precision on a CPU only where it is right (ptasr.precision_probe): the plain-torch reproduction of the
wrong AMX bf16 conv, and the probe and its float32 fallback against an injected wrong kernel."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL_MODEL, SMALL_RUN
from torch.utils._python_dispatch import TorchDispatchMode  # torch's own tests inject kernels this way

from ptasr import precision_probe
from ptasr.data import BUNDLED_CORPUS
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.evaluation.evaluate import evaluate, load_eval_set
from ptasr.evaluation.scoring import error_rates
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.precision_probe import guard_low_precision
from ptasr.recognition.recognizer import Recognizer
from ptasr.train.cli import cli_main


def relative_error(low: torch.Tensor, reference: torch.Tensor) -> float:
    return ((low.float() - reference.float()).norm() / reference.float().norm()).item()


# --- the kernel itself, without ptasr ------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True], ids=["conv1d", "conv2d-channels-last"])
@pytest.mark.parametrize(("channels", "kernel"), [(64, 128), (64, 16), (192, 128), (256, 128), (1024, 128)])
def test_bf16_grouped_conv_computes_what_float32_does(channels: int, kernel: int, channels_last: bool) -> None:
    # torch 2.14.1's oneDNN on Intel AMX: ~1.05 for 4 channels per group (64 in 16 groups, as the issue measured
    # it with F.conv1d), 0.003 for 16 or 64 (256, 1024: XLS-R's); 192 in 16 groups is the demo's positional conv
    # (12 per group, not measured on AMX), and the model calls it as a channels-last conv2d of height 1. This
    # fails on any CPU whose bf16 kernel is wrong for the shape; the probe is what keeps ptasr right there.
    # Inputs are bf16-rounded on both sides: only the kernel differs, so a right one is off by its output
    # rounding (~0.003).
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 200, generator=generator).bfloat16()
    weight = (torch.randn(channels, channels // 16, kernel, generator=generator) / (channels // 16 * kernel) ** 0.5)
    weight, bias = weight.bfloat16(), torch.randn(channels, generator=generator).bfloat16()

    def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if not channels_last:
            return F.conv1d(x, weight, bias, padding=kernel // 2, groups=16)
        image = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (B, C, 1, T)
        weight = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(image, weight, bias, padding=(0, kernel // 2), groups=16).squeeze(2)

    low = conv(x, weight, bias)
    assert low.dtype == torch.bfloat16
    assert relative_error(low, conv(x.float(), weight.float(), bias.float())) < 0.02


# --- the probe and the fallback, with a wrong kernel injected ------------------------------------------------


class WrongKernel(TorchDispatchMode):
    """A convolution as the AMX kernel computes it: garbage in bf16 when a group has 4 input channels.

    A dispatch mode sits below autocast, so it sees the bf16 tensors autocast made, as the kernel does.
    """

    def __init__(self, channels_per_group: int = 4) -> None:
        super().__init__()
        self.channels_per_group = channels_per_group

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # aten.convolution under autograd; conv1d/conv2d themselves under inference_mode (not decomposed)
        groups = {"aten.convolution.default": 8, "aten.conv1d.default": 6, "aten.conv2d.default": 6}.get(str(func))
        if groups is not None and args[0].dtype == torch.bfloat16 and len(args) > groups and args[groups] > 1 \
                and args[1].shape[1] == self.channels_per_group:
            return torch.randn_like(out)
        return out


@pytest.fixture
def wrong_kernel(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(precision_probe, "_VERDICTS", {})  # verdicts of the real kernel do not count here
    with WrongKernel():
        yield


def demo_shaped_model(vocab_size: int = 12) -> Wav2Vec2CTC:
    """A small random wav2vec2 whose weight-normed positional conv has the demo's 4 channels per group."""
    torch.manual_seed(0)
    config = Wav2Vec2Config.preset("tiny", vocab_size=vocab_size, pad_token_id=0, hidden_size=64,
                                   num_attention_heads=2, intermediate_size=128, num_hidden_layers=2,
                                   conv_dim=[32] * 7, num_conv_pos_embedding_groups=16)
    return Wav2Vec2CTC(config).eval()


def logits(model: torch.nn.Module, waveforms: torch.Tensor, autocast: bool = False) -> torch.Tensor:
    lengths = torch.full((waveforms.shape[0],), waveforms.shape[1])
    dtype = next(model.parameters()).dtype
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(waveforms.to(dtype), lengths)[0].float()


def test_the_probe_finds_the_wrong_kernel_and_its_module_runs_in_float32(
    wrong_kernel: None, capsys: pytest.CaptureFixture[str]
) -> None:
    model = demo_shaped_model()
    waveforms = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    reference = logits(model, waveforms)
    keys = list(model.state_dict())
    bf16_model = copy.deepcopy(model).bfloat16()
    # without the probe, the injected kernel ruins the output, under autocast and with bf16 weights alike
    assert relative_error(logits(model, waveforms, autocast=True), reference) > 0.5
    assert relative_error(logits(bf16_model, waveforms), reference) > 0.5

    described = guard_low_precision(model, torch.bfloat16)
    assert len(described) == 1 and described[0].startswith(
        "conv2d(weight 64x4x1x128, padding (0, 64), groups 16) in wav2vec2.encoder.pos_conv_embed (relative error")
    line = capsys.readouterr().err.strip()
    assert line.startswith("ptasr: this CPU computes conv2d(weight 64x4x1x128")
    assert line.endswith("wrongly in bfloat16, so these run in float32")
    assert guard_low_precision(bf16_model, torch.bfloat16) == described

    # bf16 everywhere else, float32 in the positional conv: the output is float32's within bf16's rounding
    assert relative_error(logits(model, waveforms, autocast=True), reference) < 0.05
    assert relative_error(logits(bf16_model, waveforms), reference) < 0.05
    assert list(model.state_dict()) == keys  # the files and the weight-norm parametrization are untouched
    assert model.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1.dtype == torch.float32
    assert guard_low_precision(demo_shaped_model(), torch.float32) == []  # float32: nothing probed


def test_gradients_flow_through_the_float32_fallback(wrong_kernel: None) -> None:
    model = demo_shaped_model().train()
    guard_low_precision(model, torch.bfloat16)
    waveforms = torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(waveforms, torch.tensor([8000, 6000]))[0]
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    conv = model.wav2vec2.encoder.pos_conv_embed.conv
    assert torch.isfinite(conv.parametrizations.weight.original1.grad).all()
    assert conv.parametrizations.weight.original1.grad.abs().sum() > 0


def test_a_bf16_fit_on_cpu_runs_the_wrong_kernels_module_in_float32(
    wrong_kernel: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [a for a in SMALL_MODEL if "conv_pos_embedding_groups" not in a and "hidden_size" not in a]
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli = cli_main(["fit", *overrides, *SMALL_RUN, "--model.config_overrides.hidden_size=64",
                    "--model.config_overrides.num_conv_pos_embedding_groups=16", "--trainer.precision=bf16-mixed",
                    "--trainer.max_steps=2", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert "in wav2vec2.encoder.pos_conv_embed (relative error" in capsys.readouterr().err
    assert cli.model.model._ptasr_float32_calls.failing  # the mode around the wav2vec2's forward


def test_bf16_evaluation_scores_what_float32_does_where_the_kernel_is_wrong(wrong_kernel: None) -> None:
    # A random model with a sharpened head, so that it writes characters rather than blanks (a briefly trained
    # one says only blanks). Random, it has no margins: bf16's own rounding changes some characters, so the
    # CER bound is loose; the unguarded model (WER 1.035, CER 2.89 against 1.0 and 2.13 here) fails both.
    data = load_eval_set(BUNDLED_CORPUS, "test", TextNormalizer()).take(None)
    vocab = Vocabulary.build(data.references)
    model = demo_shaped_model(len(vocab))
    model.lm_head.weight.data *= 30
    rates = {}
    for dtype in ("float32", "bfloat16"):
        recognizer = Recognizer(copy.deepcopy(model), vocab, TextNormalizer()).to("cpu", dtype)
        scored = evaluate(recognizer, data).scored
        assert all(s.prediction for s in scored)
        rates[dtype] = error_rates(scored)
    assert abs(rates["bfloat16"]["wer"] - rates["float32"]["wer"]) <= 0.005
    assert abs(rates["bfloat16"]["cer"] - rates["float32"]["cer"]) <= 0.1
