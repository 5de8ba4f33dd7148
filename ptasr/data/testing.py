"""Small Common Voice folders for tests, with the defects real releases have, built in a temporary folder.

Clips are copied from the bundled corpus (real 48 kHz MP3 speech), so building one takes milliseconds and no
espeak-ng. Any test of any part can use it::

    from ptasr.data.testing import make_corpus
    corpus = make_corpus(tmp_path, defects=("corrupt", "missing"), schema="v17", crlf=True)
    corpus.root, corpus.defects["corrupt"]  # the folder; the clip id given each defect
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ptasr.data import BUNDLED_CORPUS
from ptasr.data.commonvoice import read_tsv

OLD_COLUMNS = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "locale",
               "segment"]
# Common Voice 17.0 validated.tsv header
V17_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
               "gender", "accents", "variant", "locale", "segment"]

# what each defect does to a training row; "corrupt"/"empty"/"truncated" keep their clip_durations entry, as a
# release lists the duration it recorded before the file went bad
DEFECTS = {
    "corrupt": "the clip file holds bytes that are not audio",
    "empty": "the clip file is empty (0 bytes)",
    "truncated": "the clip file is cut to its first quarter",
    "missing": "the row's clip file does not exist",
    "empty_text": "the sentence is only punctuation, empty after normalisation",
    "quoted": "the sentence starts with an unmatched double quote",
    "long": "the sentence is far too long for its clip (CTC-infeasible)",
}


@dataclass
class Corpus:
    """A built corpus: its folder and, per defect, the id (clip path) of the training row given it."""

    root: Path
    defects: dict[str, str]
    splits: dict[str, list[str]]  # split -> clip ids


def make_corpus(directory: str | Path, clips_per_split: Mapping[str, int] | None = None,
                defects: Sequence[str] = (), schema: str = "old", crlf: bool = False,
                clip_durations: bool = True) -> Corpus:
    """Write a small release folder into ``directory``.

    Args:
        directory: created if needed; the corpus is written into it directly.
        clips_per_split: clips per split (default ``{"train": 8, "dev": 2, "test": 2}``), copied in order from
            the bundled corpus's splits.
        defects: names from :data:`DEFECTS`, each applied to its own training row (first row first).
        schema: ``"old"`` (pre-v17 columns) or ``"v17"`` (``sentence_id``, ``accents``, ``variant``, ...).
        crlf: write TSVs with CRLF line ends.
        clip_durations: write ``clip_durations.tsv`` (else durations come from audio headers).
    """
    counts = dict(clips_per_split or {"train": 8, "dev": 2, "test": 2})
    unknown = [d for d in defects if d not in DEFECTS]
    if unknown or len(defects) > counts.get("train", 0):
        raise ValueError(f"defects {list(defects)}: unknown {unknown} (known: {list(DEFECTS)}), or more defects "
                         f"than training rows ({counts.get('train', 0)})")
    root = Path(directory)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    source = Path(BUNDLED_CORPUS)
    rows = {split: _rows(source / f"{split}.tsv", n) for split, n in counts.items()}
    for split_rows in rows.values():
        for row in split_rows:
            shutil.copyfile(source / "clips" / row["path"], root / "clips" / row["path"])
    applied = {defect: _apply(defect, rows["train"][i], root / "clips") for i, defect in enumerate(defects)}
    columns = OLD_COLUMNS if schema == "old" else V17_COLUMNS
    end = "\r\n" if crlf else "\n"
    for split, split_rows in rows.items():
        _write(root / f"{split}.tsv", split_rows, columns, end)
    _write(root / "validated.tsv", [r for split_rows in rows.values() for r in split_rows], columns, end)
    if clip_durations:
        durations = _rows(source / "clip_durations.tsv", None, columns={"clip": ("clip",),
                                                                        "duration[ms]": ("duration[ms]",)})
        kept = {r["path"] for split_rows in rows.values() for r in split_rows}
        _write(root / "clip_durations.tsv", [d for d in durations if d["clip"] in kept], ["clip", "duration[ms]"],
               end)
    return Corpus(root, applied, {split: [r["path"] for r in split_rows] for split, split_rows in rows.items()})


def _rows(path: Path, n: int | None, columns: dict[str, tuple[str, ...]] | None = None) -> list[dict[str, str]]:
    table = read_tsv(path, columns or {c: (c,) for c in OLD_COLUMNS})
    names = list(table)
    total = len(table[names[0]])
    return [{name: table[name][i] for name in names} for i in range(total if n is None else min(n, total))]


def _apply(defect: str, row: dict[str, str], clips: Path) -> str:
    clip = clips / row["path"]
    if defect == "corrupt":
        clip.write_bytes(b"this is not an mp3 file\n" * 40)
    elif defect == "empty":
        clip.write_bytes(b"")
    elif defect == "truncated":
        clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 4])
    elif defect == "missing":
        clip.unlink()
    elif defect == "empty_text":
        row["sentence"] = "… — !?"
    elif defect == "quoted":
        row["sentence"] = '"' + row["sentence"]
    elif defect == "long":
        row["sentence"] = " ".join([row["sentence"]] * 8)
    return row["path"]


def _write(path: Path, rows: list[dict[str, str]], columns: list[str], end: str) -> None:
    # v17 columns the old rows lack get plausible values; "accents" carries the old "accent"
    fill = {"sentence_id": "0" * 64, "sentence_domain": "", "variant": ""}
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(columns) + end)
        for row in rows:
            values = [row.get(c, row.get("accent", "") if c == "accents" else fill.get(c, "")) for c in columns]
            f.write("\t".join(values) + end)


# --------------------------------------------------------------------------------------------------------
# Recordings of your own: audio files in several formats and a manifest listing them
# --------------------------------------------------------------------------------------------------------

# (file suffix, soundfile format, subtype, sample rate, channels): what users bring, other than CV's MP3
RECORDING_FORMATS = (
    ("wav", "WAV", "PCM_16", 8000, 1),
    ("wav", "WAV", "PCM_16", 22050, 1),
    ("wav", "WAV", "FLOAT", 44100, 1),
    ("flac", "FLAC", "PCM_16", 32000, 2),
    ("opus", "OGG", "OPUS", 48000, 1),
    ("ogg", "OGG", "VORBIS", 44100, 2),
)


@dataclass
class Recording:
    """One written clip: ``path`` relative to the folder, its transcript, duration (s), rate and channels."""

    path: str
    text: str
    duration: float
    sample_rate: int
    channels: int


def speak(text: str, voice: str = "pt-br") -> tuple[np.ndarray, int]:
    """Speech for ``text``: espeak-ng's (mono, 22.05 kHz) where installed, else a bundled clip's (48 kHz).

    The fallback keeps tests that need real speech in odd formats running without espeak-ng; its words are
    not ``text``'s, which such tests do not check.
    """
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as folder:
            wav = Path(folder) / "speech.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
            samples, rate = sf.read(wav, dtype="float32")
        return samples, rate
    clips = sorted((Path(BUNDLED_CORPUS) / "clips").iterdir())
    samples, rate = sf.read(clips[sum(map(ord, text)) % len(clips)], dtype="float32")
    return samples, rate


def make_recordings(directory: str | Path, sentences: Sequence[str], folder: str = "audio",
                    voice: str = "pt-br") -> list[Recording]:
    """Speak each sentence into ``directory/folder``, cycling through :data:`RECORDING_FORMATS`."""
    import torch

    from ptasr.data.audio import resample

    (Path(directory) / folder).mkdir(parents=True, exist_ok=True)
    recordings = []
    for i, text in enumerate(sentences):
        suffix, fmt, subtype, rate, channels = RECORDING_FORMATS[i % len(RECORDING_FORMATS)]
        samples, spoken_rate = speak(text, voice)
        mono = resample(torch.from_numpy(samples), spoken_rate, rate).numpy()
        audio = np.stack([mono, 0.8 * mono], axis=1) if channels == 2 else mono
        path = f"{folder}/clip{i:03d}.{suffix}"
        sf.write(Path(directory) / path, audio, rate, format=fmt, subtype=subtype)
        recordings.append(Recording(path, text, len(mono) / rate, rate, channels))
    return recordings


def write_manifest(path: str | Path, recordings: Sequence[Recording], durations: bool = True,
                   audio_column: str = "path", text_column: str = "text", speaker: str | None = "me") -> Path:
    """A manifest of ``recordings`` in the format its suffix names (.csv, .tsv or .jsonl)."""
    path = Path(path)
    rows = []
    for r in recordings:
        row = {audio_column: r.path, text_column: r.text}
        if durations:
            row["duration"] = round(r.duration, 3)
        if speaker is not None:
            row["speaker"] = speaker
        rows.append(row)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        return path
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
    return path
