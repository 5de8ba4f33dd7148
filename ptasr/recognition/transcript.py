"""What transcription gives back: :class:`Transcript` per input, with :class:`WordSpan` word timestamps read off
the CTC path (:func:`token_spans`, then :func:`word_spans`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ptasr.data.text import Vocabulary


@dataclass
class WordSpan:
    """One word and where it was said, in seconds from the start of the recording."""

    word: str
    start: float
    end: float


@dataclass
class Transcript:
    """The transcription of one input; ``error`` is set (and ``text`` empty) when its audio could not be read.

    ``log_probs`` (T, V): the model's per-frame log-probabilities, kept when asked for (``keep_log_probs``).
    """

    source: str
    text: str
    duration: float
    words: list[WordSpan] | None = None
    error: str | None = None
    log_probs: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "text": self.text, "duration": round(self.duration, 3)}
        if self.words is not None:
            out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words]
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


def word_spans(spans: Sequence[tuple[int, int, int]], vocab: Vocabulary, seconds_per_frame: float) -> list[WordSpan]:
    """Group token spans into words at the delimiter; a word runs from its first to its last character.

    >>> vocab = Vocabulary(["|", "a", "b", "[UNK]", "[PAD]"])
    >>> word_spans([(1, 0, 2), (0, 3, 4), (2, 5, 6), (1, 6, 8)], vocab, 0.02)
    [WordSpan(word='a', start=0.0, end=0.04), WordSpan(word='ba', start=0.1, end=0.16)]
    """
    words: list[WordSpan] = []
    letters: list[tuple[int, int, int]] = []
    for span in [*spans, (vocab.word_delimiter_id, 0, 0)]:  # a final delimiter closes the last word
        if span[0] != vocab.word_delimiter_id:
            letters.append(span)
            continue
        if letters:
            text = "".join(vocab.tokens[token] for token, _, _ in letters)
            words.append(WordSpan(text, round(letters[0][1] * seconds_per_frame, 3),
                                  round(letters[-1][2] * seconds_per_frame, 3)))
            letters = []
    return words
