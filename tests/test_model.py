"""The model computes transformers' and torchaudio's function, loads and saves their checkpoints, fails clearly.

Every comparison builds small random models on both sides (no hub, no network) and compares fp32 outputs.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from ptasr import Wav2Vec2Config, Wav2Vec2CTC
from ptasr.model.convert import CheckpointError, read_fairseq
from ptasr.model.loss import ctc_loss

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
ATOL = 1e-5


def small_config(layout: str, **overrides: object) -> Wav2Vec2Config:
    """A few-thousand-parameter model in the XLS-R layout (layer-norm conv, pre-norm) or base's (group, post)."""
    preset = "xls-r-300m" if layout == "xls-r" else "wav2vec2-base"
    fields = dict(
        conv_dim=(16, 24, 24, 24, 24, 24, 32),  # unequal widths catch a wrong layer index
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_conv_pos_embeddings=16,  # even: exercises SamePad's dropped frame
        num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        vocab_size=12,
        pad_token_id=11,
    )
    fields.update(overrides)
    return Wav2Vec2Config.preset(preset, **fields)


def hf_config(config: Wav2Vec2Config) -> transformers.Wav2Vec2Config:
    theirs = transformers.Wav2Vec2Config(**config.to_hf_dict())
    theirs._attn_implementation = "eager"  # the plain-matmul reference
    return theirs


def hf_model(config: Wav2Vec2Config) -> transformers.Wav2Vec2ForCTC:
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(hf_config(config)).eval()
    with torch.no_grad():  # random, non-trivial norms and biases, so a swapped or skipped one shows
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def ours_from(hf: transformers.Wav2Vec2ForCTC, tmp_path: Path) -> Wav2Vec2CTC:
    hf.save_pretrained(tmp_path / "hf")
    return Wav2Vec2CTC.from_pretrained(tmp_path / "hf").eval()


def batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    waveforms = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        waveforms[row, :length] = torch.randn(length, generator=generator)
    return waveforms, torch.tensor(lengths)


def hf_logits(hf: transformers.Wav2Vec2ForCTC, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    mask = (torch.arange(waveforms.shape[1]) < lengths[:, None]).long()
    with torch.no_grad():
        return hf(waveforms, attention_mask=mask).logits


def assert_valid_frames_close(ours: torch.Tensor, theirs: torch.Tensor, frame_lengths: torch.Tensor) -> None:
    for row, frames in enumerate(frame_lengths.tolist()):
        torch.testing.assert_close(ours[row, :frames], theirs[row, :frames], atol=ATOL, rtol=0)


# --- parity with transformers --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["xls-r", "base"])
def test_against_hf_components(layout: str, tmp_path: Path) -> None:
    hf = hf_model(small_config(layout))
    ours = ours_from(hf, tmp_path)
    waveforms, lengths = batch([4000])
    with torch.no_grad():
        frames, _ = ours.wav2vec2.feature_extractor(waveforms, lengths)  # (B, T, C); transformers': (B, C, T)
        torch.testing.assert_close(frames, hf.wav2vec2.feature_extractor(waveforms).transpose(1, 2), atol=ATOL, rtol=0)
        projected = ours.wav2vec2.feature_projection(frames)
        torch.testing.assert_close(projected, hf.wav2vec2.feature_projection(frames)[0], atol=ATOL, rtol=0)
        frame_lengths = torch.tensor([projected.shape[1]])
        encoded = ours.wav2vec2.encoder(projected, frame_lengths)
        theirs = hf.wav2vec2.encoder(projected.clone()).last_hidden_state
        torch.testing.assert_close(encoded, theirs, atol=ATOL, rtol=0)
        positions = ours.wav2vec2.encoder.pos_conv_embed(projected)
        torch.testing.assert_close(positions, hf.wav2vec2.encoder.pos_conv_embed(projected), atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["xls-r", "base"])
@pytest.mark.parametrize("lengths", [[4000], [4000, 2500, 1200]], ids=["single", "padded"])
def test_against_hf_logits(layout: str, lengths: list[int], tmp_path: Path) -> None:
    hf = hf_model(small_config(layout))
    ours = ours_from(hf, tmp_path)
    waveforms, lengths_t = batch(lengths)
    with torch.no_grad():
        logits, frame_lengths = ours(waveforms, lengths_t)
    expected = hf_logits(hf, waveforms, lengths_t)
    assert logits.shape == expected.shape
    assert frame_lengths.tolist() == hf.wav2vec2._get_feat_extract_output_lengths(lengths_t).tolist()
    assert_valid_frames_close(logits, expected, frame_lengths)


def test_odd_positional_kernel_against_hf(tmp_path: Path) -> None:
    hf = hf_model(small_config("xls-r", num_conv_pos_embeddings=15, num_conv_pos_embedding_groups=2))
    ours = ours_from(hf, tmp_path)
    waveforms, lengths = batch([3000, 2000])
    with torch.no_grad():
        logits, frame_lengths = ours(waveforms, lengths)
    assert_valid_frames_close(logits, hf_logits(hf, waveforms, lengths), frame_lengths)


def test_full_xls_r_300m_config_against_hf(tmp_path: Path) -> None:
    """The real XLS-R 300m architecture (random weights): what proves the published checkpoint will load."""
    published = json.loads((FIXTURES / "wav2vec2-xls-r-300m.json").read_text())
    config = Wav2Vec2Config.from_hf_dict(published).replace(vocab_size=40, pad_token_id=39)
    assert config == Wav2Vec2Config.preset("xls-r-300m").replace(
        **{k: getattr(config, k) for k in ("hidden_dropout", "attention_dropout", "activation_dropout",
                                           "feat_proj_dropout", "final_dropout", "layerdrop", "mask_time_prob",
                                           "vocab_size", "pad_token_id", "ctc_loss_reduction")}
    )
    hf = transformers.Wav2Vec2ForCTC(hf_config(config))
    hf.eval().save_pretrained(tmp_path / "hf")
    ours = Wav2Vec2CTC.from_pretrained(tmp_path / "hf").eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    waveforms, lengths = batch([8000, 6000])
    with torch.no_grad():
        logits, frame_lengths = ours(waveforms, lengths)
    assert_valid_frames_close(logits, hf_logits(hf, waveforms, lengths), frame_lengths)  # measured: 1.7e-6


def test_ctc_loss_against_hf(tmp_path: Path) -> None:
    hf = hf_model(small_config("xls-r", ctc_loss_reduction="mean"))
    ours = ours_from(hf, tmp_path)
    waveforms, lengths = batch([4000, 3000])
    labels = torch.tensor([[1, 2, 2, 3, 4], [5, 6, -100, -100, -100]])
    mask = (torch.arange(waveforms.shape[1]) < lengths[:, None]).long()
    for reduction in ("mean", "sum"):
        hf.config.ctc_loss_reduction = reduction
        with torch.no_grad():
            expected = hf(waveforms, attention_mask=mask, labels=labels).loss
            logits, frame_lengths = ours(waveforms, lengths)
        loss = ctc_loss(logits, frame_lengths, labels, torch.tensor([5, 2]), blank=11, reduction=reduction)
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-6)


def test_ctc_loss_is_float32_under_half_logits() -> None:
    logits = torch.randn(2, 20, 6).half()
    loss = ctc_loss(logits, torch.tensor([20, 15]), torch.tensor([[1, 2], [3, -100]]), torch.tensor([2, 1]), blank=0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# --- parity with torchaudio ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["xls-r", "base"])
def test_against_torchaudio(layout: str, tmp_path: Path) -> None:
    from torchaudio.models.wav2vec2.utils import import_huggingface_model

    hf = hf_model(small_config(layout))
    ours = ours_from(hf, tmp_path)
    theirs = import_huggingface_model(hf).eval()
    waveforms, lengths = batch([4000, 2600])
    with torch.no_grad():
        logits, frame_lengths = ours(waveforms, lengths)
        expected, expected_lengths = theirs(waveforms, lengths)
    assert frame_lengths.tolist() == expected_lengths.tolist()
    assert_valid_frames_close(logits, expected, frame_lengths)


# --- behaviour of our own model ------------------------------------------------------------------------------


def test_padded_batch_equals_single_examples() -> None:
    torch.manual_seed(0)
    model = Wav2Vec2CTC(small_config("xls-r")).eval()
    waveforms, lengths = batch([4000, 2500, 1200])
    with torch.no_grad():
        logits, frame_lengths = model(waveforms, lengths)
        for row, length in enumerate(lengths.tolist()):
            single, single_frames = model(waveforms[row : row + 1, :length], lengths[row : row + 1])
            assert single_frames.item() == frame_lengths[row].item() == single.shape[1]
            torch.testing.assert_close(logits[row, : single.shape[1]], single[0], atol=ATOL, rtol=0)


def test_layers_compute_valid_frames_only() -> None:
    # Padded frames cost (almost) no matrix products: the q/k/v and feed-forward linears see the valid frames only.
    from ptasr.model.wav2vec2 import FramePacking

    model = Wav2Vec2CTC(small_config("xls-r")).eval()
    rows: list[int] = []
    for layer in model.wav2vec2.encoder.layers:
        for linear in (layer.attention.q_proj, layer.feed_forward.intermediate_dense, layer.feed_forward.output_dense):
            linear.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    waveforms, lengths = batch([4000, 2500, 1200])
    with torch.no_grad():
        logits, frame_lengths = model(waveforms, lengths)
    assert rows == [int(frame_lengths.sum())] * 6 and int(frame_lengths.sum()) < logits.shape[0] * logits.shape[1]

    frame_lengths = torch.tensor([3, 0, 2])
    packing = FramePacking.of(frame_lengths, 4)
    padded = torch.arange(12.0).view(3, 4, 1)
    assert packing.pack(padded).flatten().tolist() == [0.0, 1.0, 2.0, 8.0, 9.0]
    assert packing.unpack(packing.pack(padded)).flatten().tolist() == [0, 1, 2, 0, 0, 0, 0, 0, 8, 9, 0, 0]
    # without zeroing, a padded frame repeats a valid one (attention masks it) and never reads out of range
    assert packing.unpack(packing.pack(padded), zero_padding=False).flatten().tolist() == [0, 1, 2, 2, 2, 2, 2, 2,
                                                                                          8, 9, 9, 9]
    # the backward pass of both directions keeps indices and masks, never a (N, C) or (B, T, C) activation
    kept: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(tuple(t.shape)) or t, lambda t: t):
        packing.unpack(packing.pack(padded.requires_grad_()) * 2, zero_padding=True)
        packing.unpack(packing.pack(padded) * 2, zero_padding=False)
    assert all(shape in {(5,), (12,), (12, 1)} for shape in kept), kept
    assert packing.key_mask[:, 0, 0].tolist() == [[True, True, True, False], [True, False, False, False],
                                                  [True, True, False, False]]  # a 0-frame row sees frame 0
    full = FramePacking.of(torch.tensor([4, 4]), 4)  # no padding: no index and no mask, the fastest SDPA
    assert full.index is None and full.key_mask is None and full.pack(padded[:2]).shape == (8, 1)
    empty = FramePacking.of(torch.tensor([0, 0]), 4)  # nothing valid: all rows run, masked, and come back zero
    assert empty.index is None and empty.pack(padded[:2]).shape == (8, 1)
    assert not empty.unpack(empty.pack(padded[:2]) + 1).any()


def test_too_short_input_gives_zero_frames() -> None:
    model = Wav2Vec2CTC(small_config("xls-r")).eval()
    with torch.no_grad():
        logits, frame_lengths = model(torch.randn(2, 300), torch.tensor([300, 120]))
        assert logits.shape == (2, 0, 12) and frame_lengths.tolist() == [0, 0]
        # a short example inside a normal batch: zero frames, and no NaN leaking into anything
        logits, frame_lengths = model(*batch([3000, 200]))
    assert frame_lengths.tolist() == [model.frame_lengths(torch.tensor(3000)).item(), 0]
    assert torch.isfinite(logits).all()
    # a batch padded past every example's length: frames, but no valid one; the layers run on the padded rows
    waveforms, lengths = batch([300, 120])
    logits, frame_lengths = model(torch.nn.functional.pad(waveforms, (0, 3000)), lengths)
    assert logits.shape[1] > 0 and frame_lengths.tolist() == [0, 0] and torch.isfinite(logits).all()


def test_masking_is_reproducible_and_only_in_training() -> None:
    model = Wav2Vec2CTC(small_config("xls-r", mask_time_prob=0.5, mask_time_length=2, mask_feature_prob=0.3,
                                     mask_feature_length=4, layerdrop=0.5, num_hidden_layers=4))
    waveforms, lengths = batch([4000, 3000])
    model.train()
    first = model(waveforms, lengths, generator=torch.Generator().manual_seed(7))[0]
    again = model(waveforms, lengths, generator=torch.Generator().manual_seed(7))[0]
    other = model(waveforms, lengths, generator=torch.Generator().manual_seed(8))[0]
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(waveforms, lengths, torch.Generator().manual_seed(7))[0],
                                   model(waveforms, lengths, torch.Generator().manual_seed(8))[0])


def test_layerdrop_draws_the_same_layers_for_the_same_seed() -> None:
    model = Wav2Vec2CTC(small_config("xls-r", layerdrop=0.5, num_hidden_layers=8)).train()
    encoder = model.wav2vec2.encoder
    draws = [encoder.draw_layers(torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert draws[0] == draws[1] != draws[2]
    assert 0 < sum(draws[0]) < 8  # some layers run, some are dropped
    model.eval()
    assert encoder.draw_layers(torch.Generator().manual_seed(3)) == [True] * 8


def test_a_dropped_layer_gets_zero_gradients() -> None:
    # DDP without find_unused_parameters needs a gradient for every parameter at every step.
    model = Wav2Vec2CTC(small_config("xls-r", layerdrop=0.5, num_hidden_layers=8)).train()
    generator = torch.Generator().manual_seed(3)
    layers = model.draw_layers(generator)
    logits, frame_lengths = model(*batch([4000, 3000]), generator, layers=layers)
    dropped = [index for index, runs in enumerate(layers) if not runs]
    assert 0 < len(dropped) < 8
    ctc_loss(logits, frame_lengths, torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), blank=11).backward()
    for index, layer in enumerate(model.wav2vec2.encoder.layers):
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None for g in grads)
        assert all(not g.any() for g in grads) == (index in dropped)


def test_compiled_blocks_compute_the_same_and_compile_once_for_any_dropped_layers() -> None:
    eager = Wav2Vec2CTC(small_config("xls-r", layerdrop=0.5, num_hidden_layers=4)).train()
    compiled = Wav2Vec2CTC(small_config("xls-r", layerdrop=0.5, num_hidden_layers=4)).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names
    patterns = set()
    for seed in range(4):
        # After the first forward pass compiled the blocks, any recompilation raises: the layers share one
        # graph (a layer first run under a later pattern finds it compiled) and no pattern needs its own.
        with torch.compiler.set_stance("default" if seed == 0 else "fail_on_recompile"):
            outputs = [model(*batch([4000, 3000]), torch.Generator().manual_seed(seed))[0]
                       for model in (eager, compiled)]
        torch.testing.assert_close(outputs[1], outputs[0], atol=ATOL, rtol=0)
        patterns.add(tuple(compiled.draw_layers(torch.Generator().manual_seed(seed))))
    assert len(patterns) > 1 and set().union(*(set(p) for p in patterns)) == {True, False}


def test_frozen_feature_encoder_gets_no_gradient() -> None:
    model = Wav2Vec2CTC(small_config("xls-r")).train()
    model.freeze_feature_encoder()
    logits, frame_lengths = model(*batch([4000, 3000]))
    ctc_loss(logits, frame_lengths, torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), blank=11).backward()
    assert all(p.grad is None for p in model.wav2vec2.feature_extractor.parameters())
    assert model.lm_head.weight.grad is not None


@pytest.mark.parametrize("layout", ["xls-r", "base"])
@pytest.mark.parametrize("autocast", [False, True])
def test_every_gradient_has_its_parameters_strides(layout: str, autocast: bool) -> None:
    # DDP lays each gradient bucket out with its parameter's strides and warns at a gradient with other
    # strides, although autograd's layout contract only asks them to agree in axes longer than one.
    model = Wav2Vec2CTC(small_config(layout)).train()  # the conv stack trains too, as in configs/demo.yaml
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        logits, frame_lengths = model(*batch([4000, 3000]))
    ctc_loss(logits, frame_lengths, torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), blank=11).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert {name: (p.grad.stride(), p.stride()) for name, p in model.named_parameters()
            if p.grad.stride() != p.stride()} == {}


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = Wav2Vec2CTC(small_config("xls-r")).train()
    waveforms, lengths = batch([4000, 3000])

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        logits, frame_lengths = model(waveforms, lengths, generator=torch.Generator().manual_seed(0))
        ctc_loss(logits, frame_lengths, torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), blank=11).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = gradients()
    model.set_gradient_checkpointing(True)
    for a, b in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_pre_norms_keep_bf16_under_autocast_and_match_float32() -> None:
    # Under autocast a pre-norm LayerNorm runs on its bf16 input and returns bf16 (CUDA's autocast would copy
    # the input to float32 and return float32); the values are float32's rounded to bf16.
    from ptasr.model.wav2vec2 import InputDtypeLayerNorm

    torch.manual_seed(0)
    norm = InputDtypeLayerNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.add_(0.1 * torch.randn(64))
        norm.bias.add_(0.1 * torch.randn(64))
    features = (3 * torch.randn(8, 64) + 1).bfloat16().requires_grad_()
    reference = torch.nn.functional.layer_norm(features.float(), (64,), norm.weight, norm.bias, 1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(features)
        # On CPU, exactly what autocast does with an ordinary LayerNorm (float32 gain and bias).
        assert torch.equal(out, torch.nn.functional.layer_norm(features, (64,), norm.weight, norm.bias, 1e-5))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.03, rtol=0.01)
    out.float().sum().backward()
    assert norm.weight.grad.dtype == torch.float32 and features.grad.dtype == torch.bfloat16
    # Outside autocast, and for float32 input, it is nn.LayerNorm.
    assert norm(features).dtype == torch.bfloat16 and norm(features.float()).dtype == torch.float32
    torch.testing.assert_close(norm(features.detach().float()), reference.detach(), atol=0, rtol=0)

    # Post-norm blocks keep nn.LayerNorm: there the norm's output is the residual stream, float32 under autocast.
    base, xls_r = Wav2Vec2CTC(small_config("base")), Wav2Vec2CTC(small_config("xls-r"))
    assert type(base.wav2vec2.encoder.layers[0].layer_norm) is torch.nn.LayerNorm
    assert type(xls_r.wav2vec2.encoder.layers[0].layer_norm) is InputDtypeLayerNorm
    # And a bf16 training step of the whole model runs and learns in every layer.
    xls_r.train().freeze_feature_encoder()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, frame_lengths = xls_r(*batch([4000, 3000]))
    ctc_loss(logits, frame_lengths, torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), blank=11).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in xls_r.wav2vec2.encoder.parameters())


# --- checkpoints ---------------------------------------------------------------------------------------------


def test_save_pretrained_loads_in_transformers_with_the_same_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = Wav2Vec2CTC(small_config("xls-r")).eval()
    ours.save_pretrained(tmp_path / "export")
    theirs, info = transformers.Wav2Vec2ForCTC.from_pretrained(
        tmp_path / "export", output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    waveforms, lengths = batch([4000, 2000])
    with torch.no_grad():
        logits, frame_lengths = ours(waveforms, lengths)
    assert_valid_frames_close(logits, hf_logits(theirs.eval(), waveforms, lengths), frame_lengths)
    again = Wav2Vec2CTC.from_pretrained(tmp_path / "export")
    assert again.config == ours.config


def test_loads_old_weight_norm_names_and_pytorch_bin(tmp_path: Path) -> None:
    hf = hf_model(small_config("xls-r"))
    expected = ours_from(hf, tmp_path)
    state = load_file(tmp_path / "hf" / "model.safetensors")
    old = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                              "weight_v"): v for k, v in state.items()}
    assert any(k.endswith("weight_g") for k in old)
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save(old, folder / "pytorch_model.bin")
    (folder / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    loaded = Wav2Vec2CTC.from_pretrained(folder)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), expected.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_headless_pretrained_checkpoint_needs_vocab_size(tmp_path: Path) -> None:
    config = small_config("xls-r")
    pretrained = transformers.Wav2Vec2ForPreTraining(
        transformers.Wav2Vec2Config(**config.to_hf_dict(), codevector_dim=16, proj_codevector_dim=16)
    )
    pretrained.save_pretrained(tmp_path / "pre")
    with pytest.raises(CheckpointError, match="vocab_size"):
        Wav2Vec2CTC.from_pretrained(tmp_path / "pre")
    model = Wav2Vec2CTC.from_pretrained(tmp_path / "pre", vocab_size=30, pad_token_id=29, mask_time_prob=0.75)
    assert model.lm_head.out_features == 30 and model.config.mask_time_prob == 0.75
    torch.testing.assert_close(
        model.wav2vec2.encoder.layers[1].feed_forward.output_dense.weight,
        pretrained.wav2vec2.encoder.layers[1].feed_forward.output_dense.weight,
    )


def test_new_vocabulary_replaces_the_head(tmp_path: Path) -> None:
    hf = hf_model(small_config("xls-r"))
    hf.save_pretrained(tmp_path / "hf")
    model = Wav2Vec2CTC.from_pretrained(tmp_path / "hf", vocab_size=20, pad_token_id=19)
    assert model.lm_head.weight.shape == (20, 32)
    torch.testing.assert_close(model.wav2vec2.encoder.layer_norm.weight, hf.wav2vec2.encoder.layer_norm.weight)


def test_bad_checkpoints_name_the_problem(tmp_path: Path) -> None:
    hf = hf_model(small_config("xls-r"))
    hf.save_pretrained(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    config_text = (tmp_path / "hf" / "config.json").read_text()

    def folder(name: str, tensors: dict[str, torch.Tensor], config: str = config_text) -> Path:
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text(config)
        return tmp_path / name

    missing = {k: v for k, v in state.items() if "layers.1.attention.q_proj" not in k}
    with pytest.raises(CheckpointError, match=r"missing keys \(2\).*layers\.1\.attention\.q_proj"):
        Wav2Vec2CTC.from_pretrained(folder("missing", missing))
    extra = {**state, "wav2vec2.encoder.layers.9.fc.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected keys.*layers\.9\.fc"):
        Wav2Vec2CTC.from_pretrained(folder("extra", extra))
    wider = json.loads(config_text) | {"intermediate_size": 65}
    with pytest.raises(CheckpointError, match=r"shape mismatches.*intermediate_dense\.weight: checkpoint \(64, 32\)"):
        Wav2Vec2CTC.from_pretrained(folder("shapes", state, json.dumps(wider)))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Wav2Vec2CTC.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at './nowhere/model'"):
        Wav2Vec2CTC.from_pretrained("./nowhere/model")


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (print, ("this ran while loading",))


def test_pickle_that_carries_code_is_refused(tmp_path: Path) -> None:
    (tmp_path / "evil").mkdir()
    with open(tmp_path / "evil" / "pytorch_model.bin", "wb") as file:
        pickle.dump({"x": _RunsCode()}, file)
    (tmp_path / "evil" / "config.json").write_text(json.dumps(small_config("xls-r").to_hf_dict()))
    with pytest.raises(CheckpointError, match="refusing to load .*pytorch_model.bin"):
        Wav2Vec2CTC.from_pretrained(tmp_path / "evil")


def test_hub_id_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not fetch 'facebook/wav2vec2-xls-r-300m'.*offline"):
        Wav2Vec2CTC.from_pretrained("facebook/wav2vec2-xls-r-300m", vocab_size=40)


# fairseq names of our keys, written here from fairseq's module layout (independent of ptasr's table) and
# checked against torchaudio's own fairseq importer below.
def _to_fairseq(key: str) -> str | None:
    rules = [
        (r"^wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
        (r"^wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.2.1."),
        (r"^wav2vec2\.feature_projection\.layer_norm\.", "layer_norm."),
        (r"^wav2vec2\.feature_projection\.projection\.", "post_extract_proj."),
        (r"^wav2vec2\.masked_spec_embed$", "mask_emb"),
        (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g"),
        (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v"),
        (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.bias$", "encoder.pos_conv.0.bias"),
        (r"^wav2vec2\.encoder\.layer_norm\.", "encoder.layer_norm."),
        (r"^wav2vec2\.encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
        (r"^wav2vec2\.encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
        (r"^wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
        (r"^wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
        (r"^wav2vec2\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
        (r"^lm_head\.", None),
    ]
    for pattern, replacement in rules:
        if re.search(pattern, key):
            return None if replacement is None else re.sub(pattern, replacement, key)
    raise AssertionError(f"no fairseq name for {key}")


def test_fairseq_checkpoint_against_hf(tmp_path: Path) -> None:
    from torchaudio.models.wav2vec2.utils import import_huggingface_model
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    hf = hf_model(small_config("xls-r"))
    state = {k: v for k, v in hf.state_dict().items()}
    fairseq_state = {_to_fairseq(k): v for k, v in state.items() if _to_fairseq(k) is not None}
    fairseq_state |= {"quantizer.vars": torch.zeros(1, 4, 8), "project_q.weight": torch.zeros(8, 8)}
    # torchaudio's importer agrees these are fairseq's names for the same tensors
    audio_model = import_huggingface_model(hf)
    audio_state = audio_model.state_dict()
    new_weight_norm = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    for key, value in _convert_state_dict(fairseq_state).items():
        key = re.sub(r"weight_[gv]$", lambda m: new_weight_norm[m.group(0)], key)
        torch.testing.assert_close(value, audio_state[key], msg=key)
    cfg = {"model": {"extractor_mode": "layer_norm", "conv_bias": True, "layer_norm_first": True,
                     "conv_feature_layers": "[(16, 10, 5)] + [(24, 3, 2)] * 4 + [(24, 2, 2)] + [(32, 2, 2)]",
                     "encoder_embed_dim": 32, "encoder_layers": 2, "encoder_attention_heads": 4,
                     "encoder_ffn_embed_dim": 64, "conv_pos": 16, "conv_pos_groups": 4}}
    torch.save({"model": fairseq_state, "cfg": cfg}, tmp_path / "xlsr2_tiny.pt")
    config, _ = read_fairseq(tmp_path / "xlsr2_tiny.pt")
    assert config.replace(vocab_size=12, pad_token_id=11) == small_config(
        "xls-r", **{k: getattr(config, k) for k in ("hidden_dropout", "attention_dropout", "activation_dropout",
                                                    "final_dropout", "layerdrop")})
    ours = Wav2Vec2CTC.from_pretrained(tmp_path / "xlsr2_tiny.pt", vocab_size=12, pad_token_id=11)
    ours.lm_head.load_state_dict(hf.lm_head.state_dict())
    waveforms, lengths = batch([4000, 2600])
    with torch.no_grad():
        logits, frame_lengths = ours.eval()(waveforms, lengths)
    assert_valid_frames_close(logits, hf_logits(hf, waveforms, lengths), frame_lengths)


# --- config --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "preset"),
    [("wav2vec2-xls-r-300m.json", "xls-r-300m"), ("wav2vec2-xls-r-1b.json", "xls-r-1b"),
     ("wav2vec2-base-960h.json", "wav2vec2-base"), ("wav2vec2-large-xlsr-53.json", "xls-r-300m")],
)
def test_presets_match_published_configs(fixture: str, preset: str) -> None:
    published = Wav2Vec2Config.from_hf_dict(json.loads((FIXTURES / fixture).read_text()))
    architecture = ("conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "hidden_size",
                    "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_conv_pos_embeddings",
                    "num_conv_pos_embedding_groups", "pre_norm", "layer_norm_eps", "hidden_act")
    ours = Wav2Vec2Config.preset(preset)
    assert {k: getattr(published, k) for k in architecture} == {k: getattr(ours, k) for k in architecture}


def test_hf_config_round_trip() -> None:
    config = small_config("xls-r", mask_feature_prob=0.25, mask_feature_length=64)
    assert Wav2Vec2Config.from_hf_dict(config.to_hf_dict()) == config
    theirs = transformers.Wav2Vec2Config(**config.to_hf_dict())
    assert theirs.do_stable_layer_norm and theirs.mask_feature_length == 64 and theirs.vocab_size == 12


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="unknown preset 'xls-r-3m'"):
        Wav2Vec2Config.preset("xls-r-3m")
    with pytest.raises(TypeError, match="hiden_size"):
        Wav2Vec2Config.preset("tiny", hiden_size=3)
    with pytest.raises(ValueError, match="add_adapter"):
        Wav2Vec2Config.from_hf_dict({"add_adapter": True})
