"""The packed encoder computes the padded encoder's function, with gathers for backward passes and no wait.

The reference here is the padded path: every transformer layer runs on all B * T rows, with padded keys masked
(what transformers does), selected by handing the encoder a packing without an index. Logits and the gradient
of every parameter must agree within 1e-5 (fp32), with SpecAugment and LayerDrop on (the same draws for both:
they depend on the lengths only). Dropout is off: its draws depend on how many rows a layer sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from test_model import batch, small_config
from torch.utils._python_dispatch import TorchDispatchMode

import ptasr.model.wav2vec2 as wav2vec2
from ptasr import Wav2Vec2CTC
from ptasr.lengths import length_mask
from ptasr.model.kernels import fft_conv
from ptasr.model.loss import ctc_loss
from ptasr.model.packing import FramePacking

ATOL = 1e-5
CASES = {
    "uneven": [4000, 2500, 1200],
    "no-padding": [3000, 3000],
    "one-frame-clip": [3000, 400, 2000],  # 400 samples: one frame
}


def training_model(layout: str, **overrides: object) -> Wav2Vec2CTC:
    torch.manual_seed(0)
    config = small_config(layout, num_hidden_layers=4, layerdrop=0.5, mask_time_prob=0.5, mask_time_length=2,
                          mask_time_min_masks=1, mask_feature_prob=0.3, mask_feature_length=4, **overrides)
    return Wav2Vec2CTC(config).train()


def padded_packing(self: wav2vec2.Wav2Vec2Model, lengths: torch.Tensor, frame_lengths: torch.Tensor,
                   frames: int, device: torch.device) -> FramePacking:
    """The padded path: no index, so every layer runs on all B * T rows; padded keys masked, as transformers."""
    return FramePacking.padded(frame_lengths.to(device), frames)


def step(model: Wav2Vec2CTC, lengths: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and every parameter's gradient of a CTC loss, with LayerDrop and SpecAugment drawn from seed 1."""
    model.zero_grad()
    waveforms, lengths_t = batch(lengths)
    generator = torch.Generator().manual_seed(1)
    layers = model.draw_layers(generator)
    assert not all(layers) and any(layers)  # LayerDrop did drop a layer
    logits, frame_lengths = model(waveforms, lengths_t, generator, layers=layers)
    labels = torch.tensor([[1, 2, 3], [4, 5, -100], [6, -100, -100]])[: len(lengths)]
    label_lengths = (labels >= 0).sum(1).clamp(max=frame_lengths)
    ctc_loss(logits, frame_lengths, labels, label_lengths, blank=11, zero_infinity=True).backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_step(ours: tuple[torch.Tensor, dict[str, torch.Tensor]],
                     reference: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> None:
    torch.testing.assert_close(ours[0], reference[0], atol=ATOL, rtol=0)
    assert ours[1].keys() == reference[1].keys() and len(ours[1]) > 20
    for name, grad in ours[1].items():
        torch.testing.assert_close(grad, reference[1][name], atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.parametrize("layout", ["xls-r", "base"])
@pytest.mark.parametrize("case", list(CASES))
def test_packed_encoder_equals_the_padded_path(layout: str, case: str) -> None:
    model = training_model(layout)
    packed = step(model, CASES[case])
    with mock.patch.object(wav2vec2.Wav2Vec2Model, "packing", padded_packing):
        padded = step(model, CASES[case])
    assert_same_step(packed, padded)


def reference_varlen_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seq_q: torch.Tensor,
                          cu_seq_k: torch.Tensor, max_q: int, max_k: int) -> torch.Tensor:
    """``varlen_attn``'s definition, one sequence at a time: (N, H, Dh) -> (N, H, Dh)."""
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k) and max_q == max_k
    assert max_q == int((cu_seq_q[1:] - cu_seq_q[:-1]).max())
    bounds = cu_seq_q.tolist()
    out = [F.scaled_dot_product_attention(*(x[start:end].transpose(0, 1) for x in (q, k, v))).transpose(0, 1)
           for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.cat(out)


@contextmanager
def varlen_on_the_cpu() -> Iterator[list[int]]:
    """Attention through the varlen path on the CPU, with the kernel replaced by its definition; yields calls."""
    calls: list[int] = []

    def counted(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[0].shape[0])
        return reference_varlen_attn(*args)

    with (mock.patch.object(wav2vec2, "varlen_attn", counted),
          mock.patch.object(wav2vec2.Transformer, "varlen_attention", lambda self, packed, packing: True)):
        yield calls


@pytest.mark.parametrize("case", ["uneven", "one-frame-clip"])
def test_varlen_path_equals_the_padded_path(case: str) -> None:
    # The layout varlen_attn receives (rows, offsets, longest) computes the padded path's function.
    model = training_model("xls-r")
    with varlen_on_the_cpu() as calls:
        varlen = step(model, CASES[case])
    assert calls and set(calls) == {sum(int(model.frame_lengths(torch.tensor(n))) for n in CASES[case])}
    with mock.patch.object(wav2vec2.Wav2Vec2Model, "packing", padded_packing):
        padded = step(model, CASES[case])
    assert_same_step(varlen, padded)


def test_the_attention_path_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    model = Wav2Vec2CTC(small_config("xls-r")).eval()
    wav2vec2._LOGGED.clear()
    with caplog.at_level("INFO", logger="ptasr.model.wav2vec2"), torch.no_grad():
        model(*batch([3000, 2000]))
        model(*batch([3000, 2000]))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attention:")]
    assert lines == ["attention: scaled_dot_product_attention on the padded layout, padded keys masked"]


class Operators(TorchDispatchMode):
    """The aten operators run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("varlen", [False, True], ids=["padded-attention", "varlen"])
def test_the_backward_pass_gathers_and_never_accumulates_by_index(varlen: bool) -> None:
    # index_select's own backward is index_add_ (atomics on a GPU, as padded rows shared a packed row);
    # the packing's gathers have gathers for their backward instead.
    model = training_model("xls-r")
    waveforms, lengths = batch(CASES["uneven"])
    with varlen_on_the_cpu() if varlen else nullcontext():
        logits, frame_lengths = model(waveforms, lengths, torch.Generator().manual_seed(1))
        loss = (logits.float().log_softmax(-1) * length_mask(frame_lengths, logits.shape[1])[..., None]).sum()
        with Operators() as backward:
            loss.backward()
    assert "aten.index_select" in backward.names
    assert not {"aten.index_add", "aten.index_add_", "aten.index_put", "aten.index_put_", "aten.scatter_add",
                "aten._index_put_impl_"} & backward.names, backward.names


def test_gathers_pack_and_unpack_by_a_bijection() -> None:
    packing = FramePacking.planned([3, 0, 2], 4, torch.device("cpu"))
    padded = torch.arange(12.0).view(3, 4, 1).requires_grad_()
    packed = packing.pack(padded)
    assert packed.flatten().tolist() == [0.0, 1.0, 2.0, 8.0, 9.0]
    # gradient of the pack: each valid frame's own, zero at padding
    packed.backward(torch.arange(1.0, 6.0).view(5, 1))
    assert padded.grad.flatten().tolist() == [1, 2, 3, 0, 0, 0, 0, 0, 4, 5, 0, 0]
    # the unpack's: the valid frames' gradient back to their packed rows
    rows = torch.arange(5.0).view(5, 1).requires_grad_()
    unpacked = packing.unpack(rows)
    assert unpacked.flatten().tolist() == [0, 1, 2, 0, 0, 0, 0, 0, 3, 4, 0, 0]
    unpacked.backward(torch.arange(12.0).view(3, 4, 1))
    assert rows.grad.flatten().tolist() == [0, 1, 2, 8, 9]
    assert packing.offsets.tolist() == [0, 3, 3, 5] and packing.longest == 3
    # the host plan and the device plan agree
    on_device = FramePacking.of(torch.tensor([3, 0, 2]), 4)
    assert torch.equal(on_device.index, packing.index) and torch.equal(on_device.rows, packing.rows)


@pytest.mark.parametrize("frames", [1, 7, 40])
def test_fft_positional_conv_equals_the_grouped_conv(frames: int) -> None:
    torch.manual_seed(0)
    for kernel, groups in [(16, 4), (15, 2), (128, 16)]:
        width = 64
        conv = torch.nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=groups)
        x = torch.randn(3, frames, width, requires_grad=True)
        direct = conv(x.transpose(1, 2)).transpose(1, 2)[:, :frames]
        (grad_direct,) = torch.autograd.grad(direct.square().sum(), conv.weight)
        fft = fft_conv(conv, x)
        (grad_fft,) = torch.autograd.grad(fft.square().sum(), conv.weight)
        torch.testing.assert_close(fft, direct, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(grad_fft, grad_direct, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["uneven", "one-frame-clip"])
def test_fft_positional_conv_gives_the_same_training_step(case: str) -> None:
    direct = training_model("xls-r")
    fft = training_model("xls-r", positional_conv="fft")
    fft.load_state_dict(direct.state_dict())  # the same state dict keys: one checkpoint for both
    assert fft.wav2vec2.encoder.pos_conv_embed.conv.__class__.__name__.startswith("ParametrizedConv1d")
    assert_same_step(step(fft, CASES[case]), step(direct, CASES[case]))


def test_fft_positional_conv_under_bf16_autocast_tracks_float32() -> None:
    model = training_model("xls-r", positional_conv="fft").eval()
    waveforms, lengths = batch(CASES["uneven"])
    with torch.no_grad():
        full, frames = model(waveforms, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = model(waveforms, lengths)
    valid = length_mask(frames, full.shape[1])
    assert half.dtype == torch.bfloat16
    assert float((half.float() - full)[valid].norm() / full[valid].norm()) < 3e-2
