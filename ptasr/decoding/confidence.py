"""How sure the model is of each word it emitted: frame confidences from the CTC posteriors, aggregated over
the frames of the word's tokens.

The measures are those of Laptev & Ginsburg, "Fast Entropy-Based Methods of Word-Level Confidence Estimation
for End-to-End Automatic Speech Recognition" (SLT 2022), as NeMo implements them: a frame's confidence is one
minus its normalised entropy, so a one-hot frame scores 1 and a uniform one 0, whatever the vocabulary size V.

- ``max_prob``: the baseline, the highest probability rescaled to [0, 1]: ``(V p_max - 1) / (V - 1)``.
- ``gibbs``: Gibbs (Shannon) entropy with temperature alpha, ``H = -sum p^a ln p``, largest ``V^(1-a) ln V``.
- ``tsallis``: Tsallis entropy, ``H = (1 - sum p^a) / (a - 1)``, largest ``(1 - V^(1-a)) / (a - 1)``.

An entropy H (largest H_max) becomes a confidence linearly, ``1 - H / H_max``, or exponentially,
``(exp(-k H) - exp(-k H_max)) / (1 - exp(-k H_max))`` with k = alpha for Gibbs and 1 for Tsallis (NeMo's
``entropy_norm="exp"``), which spreads the confident end of the range. alpha < 1 flattens the distribution
before the entropy is taken, which the paper found to separate right from wrong words better.

A word's frames are those where the decoded path emits one of its tokens (a token's repeats included, the
blanks between them and the word delimiter left out); ``min`` over them says how sure the word's least sure
frame is, ``mean`` the average. ``benchmarks/confidence_auroc.py`` compares the measures on the demo's test set.

Notation: T frames, V vocabulary size; spans are ``(token, first frame, end frame)`` of each emitted token, as
``ptasr.recognition.transcript.token_spans`` gives them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ptasr.errors import SettingError

Span = tuple[int, int, int]  # (token, first frame, end frame) of one emitted token
Kind = Literal["max_prob", "gibbs", "tsallis"]
Norm = Literal["lin", "exp"]
Aggregate = Literal["min", "mean"]


@dataclass(frozen=True)
class ConfidenceMeasure:
    """One way to turn posteriors into word confidences (see the module docstring).

    >>> ConfidenceMeasure("tsallis", 0.33, "exp", "min").name
    'tsallis a=0.33 exp, min'
    """

    kind: Kind
    alpha: float = 1.0
    norm: Norm = "lin"
    aggregate: Aggregate = "min"

    def __post_init__(self) -> None:
        if self.alpha <= 0 or (self.kind == "tsallis" and self.alpha == 1.0):
            raise SettingError(f"alpha {self.alpha} for {self.kind}: give alpha > 0 (and not 1 for Tsallis, which is "
                             f"Gibbs there)")

    @property
    def name(self) -> str:
        if self.kind == "max_prob":
            return f"max_prob, {self.aggregate}"
        return f"{self.kind} a={self.alpha:g} {self.norm}, {self.aggregate}"


# NeMo's default measure; on the demo's test set it finds wrong words better than max-prob, and better than the
# measure a half of the set would choose (benchmarks/results/confidence_auroc_cpu.json, benchmarks/README.md).
DEFAULT_MEASURE = ConfidenceMeasure("tsallis", 0.33, "exp", "min")
# What ``ptasr evaluate`` compares it with: max-prob with the same aggregation, so the two differ in the frame
# measure only (and there min was the better max-prob aggregation).
BASELINE_MEASURE = ConfidenceMeasure("max_prob", aggregate="min")


def frame_confidence(log_probs: torch.Tensor, measure: ConfidenceMeasure) -> torch.Tensor:
    """Per-frame confidence in [0, 1]: (T, V) log-probabilities -> (T,).

    >>> sure, unsure = torch.tensor([1.0, 0.0, 0.0]), torch.full((3,), 1 / 3)
    >>> confidence = frame_confidence(torch.stack([sure, unsure]).log(), ConfidenceMeasure("tsallis", 0.5, "exp"))
    >>> confidence.round(decimals=6).tolist()
    [1.0, 0.0]
    """
    vocab_size = log_probs.shape[-1]
    # a probability of exactly 0 has log -inf, and 0 * -inf is nan: any large negative log is the same limit
    log_p = log_probs.float().clamp(min=-1e30)
    a = measure.alpha
    if measure.kind == "max_prob":
        return ((log_p.max(dim=-1).values.exp() * vocab_size - 1) / (vocab_size - 1)).clamp(0.0, 1.0)
    if measure.kind == "gibbs":
        entropy = -((a * log_p).exp() * log_p).sum(dim=-1)  # (T,)
        largest, k = vocab_size ** (1 - a) * math.log(vocab_size), a
    else:
        entropy = (1 - (a * log_p).exp().sum(dim=-1)) / (a - 1)
        largest, k = (1 - vocab_size ** (1 - a)) / (a - 1), 1.0
    if measure.norm == "lin":
        confidence = 1 - entropy / largest
    else:
        floor = math.exp(-k * largest)
        confidence = ((-k * entropy).exp() - floor) / (1 - floor)
    return confidence.clamp(0.0, 1.0)  # rounding can step a hair outside


def word_groups(spans: Sequence[Span], delimiter: int) -> list[list[Span]]:
    """The token spans of each word: the decoded path cut at the word delimiter (a doubled one cuts once).

    >>> word_groups([(1, 0, 2), (0, 3, 4), (2, 5, 6), (1, 6, 8), (0, 9, 10)], delimiter=0)
    [[(1, 0, 2)], [(2, 5, 6), (1, 6, 8)]]
    """
    words: list[list[Span]] = [[]]
    for span in spans:
        if span[0] != delimiter:
            words[-1].append(span)
        elif words[-1]:
            words.append([])
    return [word for word in words if word]


def aggregate(frames: torch.Tensor, how: Aggregate) -> float:
    """One word's confidence from its frames' (N,) confidences."""
    return float(frames.min() if how == "min" else frames.mean())


def word_confidences(log_probs: torch.Tensor, spans: Sequence[Span], delimiter: int,
                     measure: ConfidenceMeasure = DEFAULT_MEASURE) -> list[float]:
    """Confidence of each word of a decoded path: (T, V) log-probabilities and its token spans -> one per word,
    in the order of :func:`word_groups`.

    >>> log_probs = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.4, 0.3, 0.3], [0.05, 0.05, 0.9]]).log()
    >>> [round(c, 2) for c in word_confidences(log_probs, [(0, 0, 1), (2, 1, 2), (0, 2, 3)], delimiter=2,
    ...                                        measure=ConfidenceMeasure("max_prob"))]
    [0.85, 0.1]
    """
    frames = frame_confidence(log_probs, measure)  # (T,)
    return [aggregate(torch.cat([frames[first:end] for _, first, end in word]), measure.aggregate)
            for word in word_groups(spans, delimiter)]
