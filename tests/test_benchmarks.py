"""The measuring tools of benchmarks/ (train_memory.py, data_sources_scale.py): the figures they report are only
as good as these."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from helpers import HANG_S

from ptasr import Wav2Vec2Config, Wav2Vec2CTC
from ptasr.model.loss import ctc_loss
from ptasr.model.wav2vec2 import InputDtypeLayerNorm

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from train_memory import CUDA_BLOCK, PeakTensorMemory, cuda_autocast_norms  # noqa: E402


def test_peak_tensor_memory_counts_storages_once_and_sees_them_freed() -> None:
    with PeakTensorMemory() as counter:
        big = torch.empty(1000)  # 4000 bytes -> one 4096-byte block
        small = torch.ones(3)  # 12 bytes -> 512
        view = big.view(10, 100)[2:]  # shares big's storage: not counted again
        assert counter.live == 4096 + CUDA_BLOCK
        del big, view
        assert counter.live == CUDA_BLOCK  # freed once the last view let go
        total = small.sum()  # a new 4-byte result
    assert counter.peak == 4096 + CUDA_BLOCK
    assert counter.live == 2 * CUDA_BLOCK and float(total) == 3.0
    external = torch.zeros(256)  # made outside the mode (like weights read from a file)
    counter.track([external, external[:10]])
    assert counter.live == 3 * CUDA_BLOCK + 512


def test_cuda_autocast_rule_for_norms_on_cpu() -> None:
    features = torch.randn(4, 16, dtype=torch.bfloat16)
    weight = torch.ones(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(features, (16,), weight).dtype == torch.bfloat16  # CPU's own rule
        with cuda_autocast_norms():
            assert F.layer_norm(features, (16,), weight).dtype == torch.float32  # CUDA's
            assert torch.softmax(features, -1).dtype == torch.float32
            assert torch.log_softmax(features, -1, dtype=torch.float32).dtype == torch.float32
            # ptasr's pre-norms keep bf16 even under CUDA's rule; plain LayerNorm does not.
            assert InputDtypeLayerNorm(16)(features).dtype == torch.bfloat16
            assert torch.nn.LayerNorm(16)(features).dtype == torch.float32
        assert F.layer_norm(features, (16,), weight).dtype == torch.bfloat16  # the rule is gone again


def test_checkpointing_lowers_the_counted_peak_and_pre_norms_lower_it_under_cuda_rules() -> None:
    config = Wav2Vec2Config.preset("xls-r-300m", conv_dim=(32,) * 7, hidden_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, intermediate_size=256, vocab_size=12, pad_token_id=11)
    waveforms = torch.randn(4, 32000)
    lengths = torch.tensor([32000, 30000, 28000, 26000])

    def peak(checkpointing: bool, plain_norms: bool = False) -> int:
        torch.manual_seed(0)
        model = Wav2Vec2CTC(config).train()
        model.freeze_feature_encoder()
        model.set_gradient_checkpointing(checkpointing)
        if plain_norms:  # what autocast does with an ordinary LayerNorm
            for module in model.modules():
                if type(module) is InputDtypeLayerNorm:
                    module.__class__ = torch.nn.LayerNorm
        with PeakTensorMemory() as counter, cuda_autocast_norms():
            counter.track(model.state_dict(keep_vars=True).values())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, frame_lengths = model(waveforms, lengths, torch.Generator().manual_seed(0))
            loss = ctc_loss(logits, frame_lengths, torch.randint(0, 11, (4, 20)), torch.full((4,), 20), blank=11)
            loss.backward()
        return counter.peak

    plain = peak(checkpointing=False)
    assert peak(checkpointing=True) < 0.8 * plain
    assert peak(checkpointing=False, plain_norms=True) > 1.05 * plain


def test_data_sources_scale_runs_and_records_the_load_it_saw(tmp_path: Path) -> None:
    """A tiny run of benchmarks/data_sources_scale.py: the machine's state in its JSON is measured, not assumed."""
    import json
    import os
    import subprocess

    script = Path(__file__).parents[1] / "benchmarks" / "data_sources_scale.py"
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(script), "--rows", "300", "--headers", "5", "--json", str(out)],
                          capture_output=True, text=True, timeout=HANG_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["result"]["train_clips"] == 300 and report["header_path"]["clips"] == 5
    machine = report["machine"]
    assert machine["cpus"] == os.cpu_count() and "shared" not in json.dumps(machine)
    for load in (machine["load_average_before"], machine["load_average_after"]):
        assert len(load) == 3 and all(isinstance(x, float) and x >= 0 for x in load)


def test_confidence_auroc_folds_and_bootstrap_on_known_scores() -> None:
    from confidence_auroc import bootstrap_gain, two_fold

    from ptasr.decoding.confidence import BASELINE_MEASURE, DEFAULT_MEASURE
    from ptasr.evaluation.scoring import score_utterance

    scored = []
    for k in range(8):  # "a" right and sure, "x" wrong: the default measure finds it, the baseline is useless
        item = score_utterance(str(k), "a b", "a x")
        item.confidences = {DEFAULT_MEASURE.name: (0.9, 0.1), BASELINE_MEASURE.name: (0.5, 0.5)}
        scored.append(item)
    assert bootstrap_gain(scored, DEFAULT_MEASURE.name, resamples=20) == [0.5, 0.5]
    assert bootstrap_gain(scored, BASELINE_MEASURE.name, resamples=20) == [0.0, 0.0]
    for fold in two_fold(scored, [BASELINE_MEASURE, DEFAULT_MEASURE]):
        assert fold["best"] == DEFAULT_MEASURE.name and fold[DEFAULT_MEASURE.name] == 1.0
        assert fold[BASELINE_MEASURE.name] == 0.5
