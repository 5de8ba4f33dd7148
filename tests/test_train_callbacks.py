"""Metric and health helpers of the training callbacks, against independent answers."""

from __future__ import annotations

import jiwer
import pytest
import torch
import torch.nn.functional as F

from ptasr.evaluation.scoring import error_rate
from ptasr.train.callbacks import WERMetrics, ctc_infeasible


def test_wer_sums_edit_counts_over_batches_not_batch_averages() -> None:
    batches = [
        (["o gato preto", "uma casa muito grande e bonita"], ["o gato branco", "uma casa muito grande e bonita"]),
        (["sim"], ["não"]),
    ]
    metrics = WERMetrics(num_samples=2, num_worst=2)
    for references, predictions in batches:
        metrics._update({"ids": [f"clip{i}" for i in range(len(references))],
                         "references": references, "predictions": predictions})
    references = [r for refs, _ in batches for r in refs]
    predictions = [p for _, preds in batches for p in preds]
    wer = error_rate(metrics.counts[0].tolist())
    cer = error_rate(metrics.counts[1].tolist())
    assert wer == pytest.approx(jiwer.wer(references, predictions))
    assert cer == pytest.approx(jiwer.cer(references, predictions))
    mean_of_batches = sum(jiwer.wer(r, p) for r, p in batches) / len(batches)
    assert wer != pytest.approx(mean_of_batches)  # 2/9 over the set, not (1/9 + 1) / 2
    # one word error each: the higher WER first
    assert [s.prediction for s in metrics._worst] == ["não", "o gato branco"]


def test_wer_ignores_doubled_spaces_in_predictions() -> None:
    metrics = WERMetrics()
    metrics._update({"ids": ["a"], "references": ["bom dia"], "predictions": [" bom  dia "]})
    assert error_rate(metrics.counts[0].tolist()) == 0.0
    assert error_rate(metrics.counts[1].tolist()) == 0.0


def test_ctc_infeasible_agrees_with_torch_ctc_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    batch, max_labels, vocab = 64, 8, 3  # a small vocabulary makes repeated neighbours common
    label_lengths = torch.randint(1, max_labels + 1, (batch,), generator=generator)
    labels = torch.randint(0, vocab - 1, (batch, max_labels), generator=generator)  # blank = vocab - 1
    labels = labels.masked_fill(torch.arange(max_labels) >= label_lengths[:, None], -100)
    frame_lengths = torch.randint(1, 2 * max_labels, (batch,), generator=generator)
    log_probs = torch.randn(int(frame_lengths.max()), batch, vocab, generator=generator).log_softmax(-1)
    losses = F.ctc_loss(log_probs, labels.clamp(min=0), frame_lengths, label_lengths, blank=vocab - 1,
                        reduction="none")
    infeasible = ctc_infeasible(labels, label_lengths, frame_lengths)
    assert infeasible.any() and not infeasible.all()  # the test covers both cases
    assert infeasible.tolist() == torch.isinf(losses).tolist()
