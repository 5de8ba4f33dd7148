"""``ptasr align``: long recordings with their transcripts cut into one clip per sentence, and a manifest that
``train.py fit`` reads as it is (``--data.train DIR/manifest.csv``).

Per recording: its audio is decoded once (any format soundfile reads, resampled to 16 kHz); the model's
log-probabilities come in overlapping chunks (the recognizer's chunking, so memory follows the chunk, not the
recording); the transcript is cut into sentences (:func:`read_sentences`), each normalised as the model's training
text was and turned into its tokens (characters the model cannot emit are counted and left out of the alignment);
:mod:`ptasr.labelling.forced` places each sentence and scores it, and its end is moved to where its last sound
ends (:func:`extend_ends`). An accepted sentence becomes a 16 kHz FLAC clip from its first token to that end, widened by ``pad_s`` on each side (at most halfway to its neighbours), and a
manifest row with its score and where it lies in the source. Rejected sentences, and stretches of audio where the
model reads words no accepted sentence covers, go to ``rejected.csv``: nothing is forced into the manifest.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import soundfile as sf
import torch

from ptasr.data.audio import SAMPLE_RATE, read_audio, resample
from ptasr.errors import DataError, MissingPathError, SettingError
from ptasr.labelling.forced import SentenceAlignment, align_sentences, uncovered_audio
from ptasr.recognition.recognizer import Chunking, Recognizer
from ptasr.storage import check_writable, staged_folder

MANIFEST_COLUMNS = ("path", "text", "duration", "score", "start", "end", "source")
REJECTED_COLUMNS = ("kind", "source", "index", "start", "end", "score", "text", "reason")
# A sentence ends at . ! ? or … followed by white space (a line ends one too).
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass(frozen=True)
class AlignSettings:
    """How sentences are searched, judged and cut (the ``ptasr align`` options of the same names).

    ``min_score``: lowest accepted mean log-probability per frame against the model's free best path (0 is a
    perfect match; ``benchmarks/align_boundaries.py`` shows where true and missing sentences fall).
    ``search_s``: seconds of audio the text does not cover that may precede a sentence and still be skipped.
    ``pad_s``: seconds kept before the first and after the last token of a clip.
    ``min_uncovered_chars``: characters the model must read in a stretch between sentences to report it.
    """

    min_score: float = -1.0
    search_s: float = 30.0
    pad_s: float = 0.25
    min_uncovered_chars: int = 6


@dataclass
class RecordingAlignment:
    """One recording aligned: its sentences, their alignments, the uncovered stretches ``(first, end, text)`` in
    frames, its 16 kHz waveform (S,) as decoded (not normalised) and the characters it could not align."""

    source: Path
    sentences: list[str]
    alignments: list[SentenceAlignment]
    uncovered: list[tuple[int, int, str]]
    waveform: torch.Tensor
    seconds_per_frame: float
    unknown: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> list[SentenceAlignment]:
        return [a for a in self.alignments if a.accepted]


def read_sentences(path: Path) -> list[str]:
    """A transcript file's sentences: its non-empty lines, each cut after ``. ! ? …`` followed by white space.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = path.write_text("Bom dia. Como vai?\\n\\nEla mora em Lisboa\\n", encoding="utf-8")
    >>> read_sentences(path)
    ['Bom dia.', 'Como vai?', 'Ela mora em Lisboa']
    """
    if not path.is_file():
        raise MissingPathError(f"no transcript file at {path}")
    text = path.read_text(encoding="utf-8-sig")
    return [s.strip() for line in text.splitlines() for s in SENTENCE_END.split(line) if s.strip()]


def sentence_tokens(recognizer: Recognizer, sentence: str) -> tuple[list[int], Counter[str]]:
    """The token ids to align for ``sentence`` (normalised as the model's training text; characters the model
    cannot emit left out, no delimiter at either end or twice in a row), and those characters counted."""
    vocab = recognizer.vocab
    normalised = recognizer.normalizer(sentence)
    unknown = vocab.unknown_chars([normalised])
    ids = [i for i in vocab.encode(normalised) if i != vocab.unk_id]
    delimiter = vocab.word_delimiter_id
    tokens = [i for n, i in enumerate(ids) if i != delimiter or (n > 0 and ids[n - 1] != delimiter)]
    while tokens and tokens[-1] == delimiter:
        tokens.pop()
    while tokens and tokens[0] == delimiter:
        tokens.pop(0)
    return tokens, unknown


def decode_16k(path: Path) -> torch.Tensor:
    """The recording as float32 mono samples (S,) at 16 kHz, not normalised (the clips are cut from these)."""
    if not path.is_file():
        raise MissingPathError(f"no audio file at {path}")
    samples, rate = read_audio(path)
    return resample(torch.from_numpy(samples), rate)


def align_recording(recognizer: Recognizer, audio: Path, sentences: Sequence[str], settings: AlignSettings,
                    batch_size: int = 8, chunking: Chunking = Chunking()) -> RecordingAlignment:
    """Align ``sentences`` (in the order spoken) against the recording ``audio``."""
    waveform = decode_16k(audio)
    transcript = recognizer.transcribe([waveform], batch_size=batch_size, chunking=chunking, keep_log_probs=True)[0]
    log_probs = transcript.log_probs  # (T, V)
    seconds_per_frame = recognizer.samples_per_frame / SAMPLE_RATE
    unknown: Counter[str] = Counter()
    targets = []
    for sentence in sentences:
        tokens, missing = sentence_tokens(recognizer, sentence)
        targets.append(tokens)
        unknown += missing
    vocab = recognizer.vocab
    alignments = align_sentences(log_probs, targets, vocab.pad_id, settings.min_score,
                                 search_frames=round(settings.search_s / seconds_per_frame))
    alignments = extend_ends(alignments, waveform, recognizer.samples_per_frame)
    spans = [(a.first, a.end) for a in alignments if a.accepted]
    uncovered = [(first, end, vocab.decode(tokens))
                 for first, end, tokens in uncovered_audio(log_probs, spans, vocab.pad_id, vocab.word_delimiter_id,
                                                           settings.min_uncovered_chars)]
    return RecordingAlignment(audio, list(sentences), alignments, uncovered, waveform, seconds_per_frame, unknown)


# How far past its last token a sentence's speech may go on, and how loud it must stay (below the sentence's
# loudest 10 ms) to count as speech.
MAX_EXTENSION_S = 0.5
SPEECH_BELOW_PEAK_DB = 35.0
QUIET_FRAMES = 3


def extend_ends(alignments: Sequence[SentenceAlignment], waveform: torch.Tensor,
                samples_per_frame: int) -> list[SentenceAlignment]:
    """Each accepted sentence's end moved to where its speech ends in the audio.

    CTC emits a character near the start of its sound and blanks for the rest of it, so a sentence's last token
    ends before its last sound does (by 0.1-0.3 s on the demo's voices, ``benchmarks/align_boundaries.py``). The
    end goes on over the following 20 ms frames while their energy stays within :data:`SPEECH_BELOW_PEAK_DB` of
    the sentence's loudest (:data:`QUIET_FRAMES` quieter ones in a row end it), for at most
    :data:`MAX_EXTENSION_S` and never past the next sentence's first token.

    Args:
        alignments: in order, frames as :func:`~ptasr.labelling.forced.align_sentences` gives them.
        waveform: (S,) the recording at 16 kHz.
    """
    frames = waveform.shape[0] // samples_per_frame
    power = waveform[: frames * samples_per_frame].reshape(frames, samples_per_frame).pow(2).mean(dim=1)  # (T,)
    energy = 10 * torch.log10(power + 1e-12)
    accepted = [n for n, a in enumerate(alignments) if a.accepted]
    extended = list(alignments)
    most = round(MAX_EXTENSION_S * SAMPLE_RATE / samples_per_frame)
    for k, n in enumerate(accepted):
        a = alignments[n]
        limit = min(a.end + most, frames, alignments[accepted[k + 1]].first if k + 1 < len(accepted) else frames)
        if a.end >= limit or a.first >= frames:
            continue
        quiet = energy[a.end:limit] < energy[a.first:a.end].max() - SPEECH_BELOW_PEAK_DB  # (W,)
        # the speech ends where QUIET_FRAMES quiet frames in a row begin (a stop's closure is quiet, and shorter)
        runs = torch.cat([quiet, torch.ones(QUIET_FRAMES - 1, dtype=torch.bool)]).unfold(0, QUIET_FRAMES, 1).all(dim=1)
        extended[n] = replace(a, end=a.end + int(runs.nonzero().flatten()[0]) if runs.any() else limit)
    return extended


def clip_bounds(spans: Sequence[tuple[float, float]], duration: float, pad_s: float) -> list[tuple[float, float]]:
    """Each span ``(start, end)`` in seconds widened by ``pad_s`` on each side, at most halfway to its
    neighbours and within ``[0, duration]``.

    >>> clip_bounds([(1.0, 2.0), (2.2, 3.0)], duration=3.1, pad_s=0.25)
    [(0.75, 2.1), (2.1, 3.1)]
    """
    bounds = []
    for n, (start, end) in enumerate(spans):
        before = (spans[n - 1][1] + start) / 2 if n > 0 else 0.0
        after = (end + spans[n + 1][0]) / 2 if n + 1 < len(spans) else duration
        bounds.append((round(max(start - pad_s, before), 3), round(min(end + pad_s, after), 3)))
    return bounds


def check_output_free(out_dir: Path) -> None:
    """Refuse an output folder that holds an alignment already (never replace another run's files), or that
    cannot be written, before any long work."""
    for name in ("manifest.csv", "rejected.csv", "clips"):
        if (out_dir / name).exists():
            raise SettingError(f"{out_dir / name} exists (another alignment's output): choose another -o folder, "
                               f"or move it away")
    check_writable(out_dir)


def write_alignment(out_dir: Path, recordings: Sequence[RecordingAlignment], pad_s: float) -> tuple[int, int]:
    """Clips, ``manifest.csv`` and ``rejected.csv`` into ``out_dir``, all or nothing; (clips, rejected rows)."""
    check_output_free(out_dir)
    stems: Counter[str] = Counter()
    kept, rejected = [], []
    with staged_folder(out_dir) as staging:
        (staging / "clips").mkdir()
        for recording in recordings:
            stems[recording.source.stem] += 1
            stem = recording.source.stem + ("" if stems[recording.source.stem] == 1 else f"-{stems[recording.source.stem]}")
            kept += _write_clips(staging, stem, recording, pad_s)
            rejected += _rejected_rows(recording)
        _write_csv(staging / "manifest.csv", MANIFEST_COLUMNS, kept)
        _write_csv(staging / "rejected.csv", REJECTED_COLUMNS, rejected)
    return len(kept), len(rejected)


def _write_clips(folder: Path, stem: str, recording: RecordingAlignment, pad_s: float) -> list[dict[str, object]]:
    spf = recording.seconds_per_frame
    accepted = recording.accepted
    duration = recording.waveform.shape[0] / SAMPLE_RATE
    rows = []
    for alignment, (start, end) in zip(accepted, clip_bounds([(a.first * spf, a.end * spf) for a in accepted],
                                                             duration, pad_s), strict=True):
        path = f"clips/{stem}-{alignment.index:04d}.flac"
        samples = recording.waveform[round(start * SAMPLE_RATE):round(end * SAMPLE_RATE)].clamp(-1.0, 1.0)
        sf.write(folder / path, samples.numpy(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        rows.append({"path": path, "text": recording.sentences[alignment.index], "duration": round(end - start, 3),
                     "score": round(alignment.score, 4), "start": start, "end": end, "source": str(recording.source)})
    return rows


def _rejected_rows(recording: RecordingAlignment) -> list[dict[str, object]]:
    spf = recording.seconds_per_frame
    rows: list[dict[str, object]] = [
        {"kind": "sentence", "source": str(recording.source), "index": a.index, "start": round(a.first * spf, 3),
         "end": round(a.end * spf, 3), "score": round(a.score, 4) if math.isfinite(a.score) else "",
         "text": recording.sentences[a.index], "reason": a.reason}
        for a in recording.alignments if not a.accepted]
    rows += [{"kind": "audio", "source": str(recording.source), "index": "", "start": round(first * spf, 3),
              "end": round(end * spf, 3), "score": "", "text": text, "reason": "speech that no accepted sentence covers"}
             for first, end, text in recording.uncovered]
    return rows


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, object]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def read_pairs(path: Path) -> list[tuple[Path, Path]]:
    """A list of recordings: one ``audio<TAB>transcript`` pair of paths per line (relative to the list's folder).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "pairs.tsv").write_text("a.flac\\ta.txt\\n\\n/data/b.wav\\tb.txt\\n", encoding="utf-8")
    >>> [(audio.name, text.name) for audio, text in read_pairs(folder / "pairs.tsv")]
    [('a.flac', 'a.txt'), ('b.wav', 'b.txt')]
    """
    if not path.is_file():
        raise MissingPathError(f"no list of recordings at {path}")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected two tab-separated paths (audio, transcript), got {len(fields)} "
                            f"fields")
        pairs.append((path.parent / fields[0].strip(), path.parent / fields[1].strip()))
    if not pairs:
        raise DataError(f"{path} lists no recordings")
    return pairs
