"""``ptasr pseudo-label``: untranscribed audio transcribed into a training manifest, each clip with its confidence,
kept where the model is sure enough (self-training, as fairseq's and NeMo's recipes do).

A clip's confidence is the mean of its words' confidences (``ptasr.decoding.confidence``: each word's least sure
frame, Tsallis entropy). The mean, not the minimum over words: a word's confidence already says how sure its
least sure frame is, and the mean over a clip follows how many of its words are likely right, which is what its
pseudo-label's word error rate counts. A clip with no words has no confidence and is left out, as is audio that
cannot be read. The manifest (``path``, ``text``, ``duration``, ``confidence``; absolute paths) is a source for
``data.train`` like any other, with a ``weight`` if pseudo-labels should count less than real ones.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptasr.errors import SettingError
from ptasr.recognition.recognizer import Recognizer
from ptasr.recognition.transcript import Transcript
from ptasr.storage import check_writable, staged_files

COLUMNS = ("path", "text", "duration", "confidence")


def clip_confidence(transcript: Transcript) -> float | None:
    """The mean confidence of a transcript's words, or None when it has none.

    >>> from ptasr.recognition.transcript import WordSpan
    >>> clip_confidence(Transcript("a.wav", "ab c", 1.0, [WordSpan("ab", 0.0, 0.2, 0.9), WordSpan("c", 0.3, 0.4, 0.5)]))
    0.7
    """
    confidences = [w.confidence for w in transcript.words or [] if w.confidence is not None]
    return round(sum(confidences) / len(confidences), 4) if confidences else None


@dataclass
class PseudoLabels:
    """What a pseudo-labelling run kept, and how many clips it left out for each reason (with a few examples of
    unreadable files)."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    below: int = 0
    no_words: int = 0
    unreadable: list[str] = field(default_factory=list)


def check_output_free(output: Path) -> None:
    """Refuse an output file that exists (never replace another run's or the user's file), or a folder that
    cannot be written, before the model runs."""
    if output.exists():
        raise SettingError(f"{output} exists: choose another -o file, or move it away (pseudo-label never replaces "
                           f"a file)")
    check_writable(output.parent)


def pseudo_label(recognizer: Recognizer, audio: Iterable[str | Path], min_confidence: float,
                 **transcribe_options: Any) -> PseudoLabels:
    """Transcribe ``audio`` (files) with word confidences and sort each clip into kept or left out.

    ``transcribe_options`` go to :meth:`Recognizer.transcribe_iter` (batch size, chunking, an LM decoder).
    """
    labels = PseudoLabels()
    for transcript in recognizer.transcribe_iter(audio, word_timestamps=True, **transcribe_options):
        if transcript.error is not None:
            labels.unreadable.append(f"{transcript.source}: {transcript.error}")
            continue
        confidence = clip_confidence(transcript)
        if confidence is None:
            labels.no_words += 1
        elif confidence < min_confidence:
            labels.below += 1
        else:
            labels.kept.append({"path": str(Path(transcript.source).resolve()), "text": transcript.text,
                                "duration": round(transcript.duration, 3), "confidence": confidence})
    return labels


def write_manifest(output: Path, rows: Sequence[dict[str, Any]]) -> None:
    """The kept clips as a CSV manifest, written whole or not at all; an existing file is refused."""
    check_output_free(output)
    with staged_files([output]) as (staged,):
        with open(staged, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
