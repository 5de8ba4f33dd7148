"""What transcription gives back: :class:`Transcript` per input, with :class:`WordSpan` word timestamps read off
the CTC path (:func:`token_spans`, then :func:`word_spans`), each with its confidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ptasr.data.text import Vocabulary
from ptasr.decoding.confidence import word_groups


@dataclass
class WordSpan:
    """One word, where it was said (seconds from the start of the recording) and how sure the model is of it
    (in [0, 1], ``ptasr.decoding.confidence``)."""

    word: str
    start: float
    end: float
    confidence: float | None = None


@dataclass
class Transcript:
    """The transcription of one input; ``error`` is set (and ``text`` empty) when its audio could not be read.

    ``log_probs`` (T, V): the model's per-frame log-probabilities, kept when asked for (``keep_log_probs``);
    ``spans``: ``(token, first frame, end frame)`` of each token of the decoded path, kept with them (word
    confidence under any measure is read from the two, ``ptasr.decoding.confidence.word_confidences``).
    """

    source: str
    text: str
    duration: float
    words: list[WordSpan] | None = None
    error: str | None = None
    log_probs: torch.Tensor | None = field(default=None, repr=False)
    spans: list[tuple[int, int, int]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "text": self.text, "duration": round(self.duration, 3)}
        if self.words is not None:
            out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                             "confidence": None if w.confidence is None else round(w.confidence, 4)}
                            for w in self.words]
        if self.error is not None:
            out["error"] = self.error
        return out


def token_spans(frame_ids: Sequence[int], blank: int) -> list[tuple[int, int, int]]:
    """CTC best path (one id per frame) -> (token, first frame, end frame) for each emitted token.

    >>> token_spans([3, 3, 0, 0, 4, 0, 4], blank=0)
    [(3, 0, 2), (4, 4, 5), (4, 6, 7)]
    """
    spans: list[tuple[int, int, int]] = []
    previous = blank
    for frame, token in enumerate(frame_ids):
        if token != blank and token == previous:
            spans[-1] = (token, spans[-1][1], frame + 1)
        elif token != blank:
            spans.append((token, frame, frame + 1))
        previous = token
    return spans


def word_spans(spans: Sequence[tuple[int, int, int]], vocab: Vocabulary, seconds_per_frame: float,
               confidences: Sequence[float] | None = None) -> list[WordSpan]:
    """Group token spans into words at the delimiter; a word runs from its first to its last character.

    ``confidences``: one per word (``ptasr.decoding.confidence.word_confidences`` of the same spans).

    >>> vocab = Vocabulary(["|", "a", "b", "[UNK]", "[PAD]"])
    >>> word_spans([(1, 0, 2), (0, 3, 4), (2, 5, 6), (1, 6, 8)], vocab, 0.02, [0.9, 0.5])
    [WordSpan(word='a', start=0.0, end=0.04, confidence=0.9), WordSpan(word='ba', start=0.1, end=0.16, confidence=0.5)]
    """
    words = word_groups(spans, vocab.word_delimiter_id)
    confidences = [None] * len(words) if confidences is None else confidences
    return [WordSpan("".join(vocab.tokens[token] for token, _, _ in letters),
                     round(letters[0][1] * seconds_per_frame, 3), round(letters[-1][2] * seconds_per_frame, 3), confidence)
            for letters, confidence in zip(words, confidences, strict=True)]
