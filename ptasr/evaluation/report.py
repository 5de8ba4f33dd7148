"""The evaluation report: every utterance of ``ptasr evaluate`` on one page that opens from disk.

``ptasr evaluate MODEL --data ... --report DIR`` writes

- ``DIR/index.html``: the page, with its style, its script and the table data (one JSON document) inlined,
  so it needs no server, no network and no other file to show the rates, the charts and the table;
- ``DIR/detail/NNNNN.js``: the word alignments, word confidences and CTC posteriors of :data:`DETAIL_SHARD`
  utterances each, loaded by a ``<script>`` tag when one of them is selected. A page opened from ``file://`` cannot ``fetch``,
  and posteriors are the bulk of the data (a few kB per utterance), so keeping them out of the page keeps its
  load time independent of the clips' length, and one selection reads one small file;
- ``DIR/audio/``: every clip, hard-linked or copied when a browser plays its format (MP3, WAV, Ogg, FLAC,
  Opus), else converted to WAV.

The script and style live in ``ptasr/assets/report/``: small vanilla JavaScript, no library. The table is
virtualised (only the rows in view exist in the document), so 10 000 utterances sort and filter at once.
``index.html#NAME`` opens the page on one utterance: NAME is its id, or its clip's file name with or without
the extension when no other clip has that name; a NAME that fits none or several is said so above the table.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import shutil
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ptasr.data.audio import SAMPLE_RATE, AudioSource
from ptasr.errors import SettingError
from ptasr.evaluation.scoring import aligned_words
from ptasr.storage import check_writable, staged_folder

if TYPE_CHECKING:
    from ptasr.evaluation.scoring import Scored
    from ptasr.recognition.recognizer import Recognizer
    from ptasr.recognition.transcript import Transcript

ASSETS = Path(__file__).parents[1] / "assets" / "report"
DETAIL_SHARD = 100  # utterances per detail/NNNNN.js file
MAX_COLUMNS = 600  # posterior columns drawn per utterance (12 s of 20 ms frames); longer clips are pooled
GENERATOR = "ptasr evaluate --report"  # marks a folder as ours, so a new report may replace an old one
# the table's columns, row for row in the page's data; the script finds them by name
COLUMNS = ("id", "reference", "prediction", "wer", "cer", "errors", "words", "duration", "gender", "age",
           "accent", "audio")
BREAKDOWNS = ("gender", "age", "accent")
# what Chromium, Firefox and Safari play from an <audio> element (by extension; soundfile's format names)
PLAYABLE = {".mp3": "MP3", ".wav": "WAV", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG", ".flac": "FLAC"}


# --- what the page shows of one utterance -------------------------------------------------------------------


@dataclass
class Posteriors:
    """A picture's worth of one utterance's CTC output, one entry per column of ``step`` frames.

    ``path``: the greedy (argmax) token; ``blank``: the blank's probability; ``top``/``top_prob``: the most
    likely non-blank token and its probability. Probabilities in whole percent; a pooled column averages the
    probabilities of its frames. Held as compact arrays (1 byte per percentage): a report keeps them for every
    utterance until it is written.
    """

    step: int
    seconds_per_column: float
    path: array
    blank: array
    top: array
    top_prob: array

    def to_dict(self) -> dict[str, Any]:
        return {name: value.tolist() if isinstance(value, array) else value for name, value in vars(self).items()}


def summarise_posteriors(log_probs: torch.Tensor, blank: int, seconds_per_frame: float,
                         max_columns: int = MAX_COLUMNS) -> Posteriors:
    """Per-frame log-probabilities (T, V) -> at most ``max_columns`` columns of greedy token and blank share.

    >>> log_probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]).log()
    >>> summarise_posteriors(log_probs, blank=2, seconds_per_frame=0.02).to_dict()
    {'step': 1, 'seconds_per_column': 0.02, 'path': [0, 1, 2], 'blank': [0, 10, 80], 'top': [0, 1, 0], 'top_prob': [90, 70, 10]}
    >>> summarise_posteriors(log_probs, blank=2, seconds_per_frame=0.02, max_columns=2).blank.tolist()  # (0, 1), (2,)
    [5, 80]
    """
    frames, vocab_size = log_probs.shape
    step = max(1, math.ceil(frames / max_columns))
    column = torch.arange(frames) // step  # (T,) the column each frame is pooled into
    columns = math.ceil(frames / step)
    probs = torch.zeros(columns, vocab_size).index_add_(0, column, log_probs.float().exp())
    probs /= torch.bincount(column, minlength=columns).clamp(min=1)[:, None]  # (C, V) mean probability
    non_blank = probs.clone()
    non_blank[:, blank] = -1.0
    top_prob, top = non_blank.max(dim=-1)

    def percent(values: torch.Tensor) -> array:
        return array("B", (values * 100).round().int().tolist())

    return Posteriors(step, round(step * seconds_per_frame, 6), array("i", probs.argmax(dim=-1).tolist()),
                      percent(probs[:, blank]), array("i", top.tolist()), percent(top_prob))


# --- the report -------------------------------------------------------------------------------------------


class EvaluationReport:
    """Collects what the page needs while ``evaluate`` transcribes, then writes the page.

    Called as ``report(index, transcript)`` for every transcribed row (``index`` into the evaluation set), in
    the order the scored utterances come; the transcripts need their log-probabilities
    (``transcribe_iter(..., keep_log_probs=True)``). The folder is checked on construction, before any work:
    it must be new, empty, or hold an earlier report (which is replaced).

    Args:
        directory: the report folder.
        recognizer: the model being evaluated (its vocabulary and frame rate).
    """

    def __init__(self, directory: str | Path, recognizer: Recognizer) -> None:
        self.directory = Path(directory).expanduser()
        check_report_dir(self.directory)
        check_writable(self.directory)
        self.tokens = list(recognizer.vocab.tokens)
        self.blank = recognizer.vocab.pad_id
        self.seconds_per_frame = recognizer.samples_per_frame / SAMPLE_RATE
        self.rows: list[int] = []
        self.durations: list[float] = []
        self.posteriors: list[Posteriors | None] = []

    def __call__(self, index: int, transcript: Transcript) -> None:
        self.rows.append(index)
        self.durations.append(transcript.duration)
        log_probs = transcript.log_probs
        self.posteriors.append(None if log_probs is None else
                               summarise_posteriors(log_probs, self.blank, self.seconds_per_frame))

    def write(self, results: dict[str, Any], scored: Sequence[Scored], audio: Sequence[AudioSource]) -> Path:
        """Write the folder; ``scored`` in the order the transcripts came, ``audio`` indexed like the data rows.

        Returns the path of ``index.html``.
        """
        if len(scored) != len(self.rows):
            raise RuntimeError(f"the report saw {len(self.rows)} transcripts but {len(scored)} scored utterances")
        # written beside (or, for an earlier report, inside) the folder and moved into place once complete: a
        # failure leaves the folder as it was, and is one line (ptasr.storage)
        with staged_folder(self.directory) as staging:
            files = self._write_audio(staging / "audio", audio)
            self._write_details(staging / "detail", scored, (results.get("confidence") or {}).get("measure", ""))
            rows = [_row(s, duration, f"audio/{name}")
                    for s, duration, name in zip(scored, self.durations, files, strict=True)]
            (staging / "index.html").write_text(render_page(self.page_data(results, rows)), encoding="utf-8")
        return self.directory / "index.html"

    def _write_audio(self, folder: Path, audio: Sequence[AudioSource]) -> list[str]:
        """``audio/NNNNN.<ext>``, one per scored row in table order; returns the file names."""
        folder.mkdir()
        return [copy_playable(audio[index], folder, f"{n:05d}") for n, index in enumerate(self.rows)]

    def _write_details(self, folder: Path, scored: Sequence[Scored], measure: str) -> None:
        """``detail/NNNNN.js``: alignments, edit counts, posteriors and the confidence of each predicted word
        (``measure``'s; null where there is none) of DETAIL_SHARD rows each."""
        folder.mkdir()
        details = [{"align": aligned_words(s.reference, s.prediction), "counts": list(s.word_counts),
                    "post": None if p is None else p.to_dict(),
                    "conf": [round(c, 3) for c in s.confidences[measure]] if measure in s.confidences else None}
                   for s, p in zip(scored, self.posteriors, strict=True)]
        for shard, start in enumerate(range(0, len(details), DETAIL_SHARD)):
            payload = json.dumps(details[start:start + DETAIL_SHARD], ensure_ascii=False, separators=(",", ":"))
            (folder / f"{shard:05d}.js").write_text(f"ptasrDetail({shard},{payload});\n", encoding="utf-8")

    def page_data(self, results: dict[str, Any], rows: list[list[Any]]) -> dict[str, Any]:
        """The JSON document inlined in the page."""
        meta = {key: results.get(key) for key in ("model", "data", "split", "decoder", "dtype", "device",
                                                  "utterances", "skipped", "audio_hours", "wer", "cer", "words")}
        meta["confidence"] = results.get("confidence")  # the measure and its AUROC, for the legend
        meta["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        by = {key: table for key, table in results.get("by", {}).items() if set(table) != {"(unknown)"}}
        return {"meta": meta, "by": by, "columns": list(COLUMNS), "rows": rows, "tokens": self.tokens,
                "blank": self.blank, "shard": DETAIL_SHARD}


def _row(scored: Scored, duration: float, audio: str) -> list[Any]:
    from ptasr.evaluation.scoring import error_rate

    values = {"id": scored.id, "reference": scored.reference, "prediction": scored.prediction,
              "wer": round(error_rate(scored.word_counts), 6), "cer": round(error_rate(scored.char_counts), 6),
              "errors": scored.word_errors, "words": scored.reference_words, "duration": round(duration, 2),
              "audio": audio,
              **{key: scored.groups.get(key) or "" for key in BREAKDOWNS}}
    return [values[column] for column in COLUMNS]


def check_report_dir(directory: Path) -> None:
    """Refuse a folder that holds anything but an earlier report: the report replaces ``audio/`` and ``detail/``."""
    if directory.exists() and not directory.is_dir():
        raise SettingError(f"--report {directory} is a file; give a folder for the report")
    # a hidden staging folder left by a killed run (ptasr.storage) is not another file
    if not directory.is_dir() or all(p.name.startswith(".ptasr-partial-") for p in directory.iterdir()):
        return
    index = directory / "index.html"
    if index.is_file() and f'<meta name="generator" content="{GENERATOR}">' in index.read_text(
            encoding="utf-8", errors="replace")[:2000]:
        return
    raise SettingError(f"--report {directory} is a folder with other files in it (no earlier ptasr report); "
                     "give a new or empty folder")


def copy_playable(source: AudioSource, directory: Path, stem: str) -> str:
    """Put ``source`` in ``directory`` as ``stem`` + a suffix a browser plays; returns the file name.

    A file in a playable format is hard-linked (copied across file systems); any other file, or audio held in
    memory in another format, is decoded and written as 16-bit WAV at its own rate.
    """
    import soundfile as sf

    from ptasr.data.audio import read_audio

    if isinstance(source, (str, Path)) and Path(source).suffix.lower() in PLAYABLE:
        target = directory / (stem + Path(source).suffix.lower())
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        return target.name
    if isinstance(source, bytes):
        fmt = sf.info(io.BytesIO(source)).format
        suffix = next((s for s, name in PLAYABLE.items() if name == fmt), None)
        if suffix is not None:
            (directory / (stem + suffix)).write_bytes(source)
            return stem + suffix
    samples, rate = read_audio(source)
    sf.write(directory / (stem + ".wav"), samples, rate, subtype="PCM_16")
    return stem + ".wav"


def render_page(data: dict[str, Any]) -> str:
    """The page: the template with the style, the script and ``data`` (JSON) inlined."""
    template = (ASSETS / "index.html").read_text(encoding="utf-8")
    meta = data["meta"]
    title = f"ptasr report: {meta.get('model')} on {meta.get('data')} ({meta.get('split')})"
    # "</" would end the <script> element early; "<\/" is the same string to JSON
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return (template.replace("{{style}}", (ASSETS / "report.css").read_text(encoding="utf-8"))
            .replace("{{script}}", (ASSETS / "report.js").read_text(encoding="utf-8"))
            .replace("{{generator}}", GENERATOR)
            .replace("{{title}}", html.escape(title))
            .replace("{{data}}", payload))  # last, so nothing in the data is read as a placeholder
