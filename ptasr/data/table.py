"""The :class:`Manifest` every source gives: one row per clip in parallel columns (plain lists, so a
million-row corpus stays within seconds and a few hundred MB), and :class:`ClipFiles`, the reader of audio
files in one folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptasr.data.audio import AudioSource
from ptasr.errors import DataError


@dataclass
class Manifest:
    """One row per clip, column-wise.

    ``ids`` is the clip path as the release TSV writes it (``common_voice_pt_123.mp3``), for HF datasets the
    audio file name when it has one, for manifest files the audio file's path; ``keys`` is what ``reader``
    needs to fetch the audio (the same list as ``ids`` for releases and manifest files). ``durations``
    (seconds) is ``None`` until :func:`~ptasr.data.filters.build_manifest` fills it (a manifest file's listed
    durations, NaN where absent, until then).

    Rows of several sources (:meth:`concat` of manifests with different readers) keep one reader per source:
    ``part`` (N,) says which of ``readers`` fetches each row, and :meth:`audio` picks it.
    """

    ids: list[str]
    keys: list[str]
    texts: list[str]
    client_ids: list[str]
    ages: list[str]
    genders: list[str]
    accents: list[str]
    reader: Callable[[str], AudioSource]
    durations: np.ndarray | None = None  # float64 (N,), seconds
    part: np.ndarray | None = None  # int64 (N,): index into ``readers``; None when one reader serves all rows
    readers: tuple[Callable[[str], AudioSource], ...] = ()

    _COLUMNS = ("ids", "keys", "texts", "client_ids", "ages", "genders", "accents")

    def __len__(self) -> int:
        return len(self.ids)

    def audio(self, row: int) -> AudioSource:
        """What :func:`ptasr.data.audio.load_audio` reads for ``row``: a path, or bytes."""
        reader = self.reader if self.part is None else self.readers[self.part[row]]
        return reader(self.keys[row])

    def select(self, rows: Sequence[int] | np.ndarray) -> Manifest:
        """The manifest of ``rows`` (indices), in that order."""
        columns = {name: [getattr(self, name)[i] for i in rows] for name in self._COLUMNS}
        index = np.asarray(rows, dtype=np.int64)
        durations = None if self.durations is None else self.durations[index]
        part = None if self.part is None else self.part[index]
        return Manifest(**columns, reader=self.reader, durations=durations, part=part, readers=self.readers)

    @classmethod
    def concat(cls, manifests: Sequence[Manifest]) -> Manifest:
        """Rows of several manifests one after the other; ``part`` tells their readers apart where they differ."""
        if not manifests:
            raise DataError("concat needs at least one manifest")
        columns = {name: [v for m in manifests for v in getattr(m, name)] for name in cls._COLUMNS}
        durations = None
        if all(m.durations is not None for m in manifests):
            durations = np.concatenate([m.durations for m in manifests])
        readers = tuple(dict.fromkeys(r for m in manifests for r in (m.readers or (m.reader,))))
        if len(readers) == 1:
            return cls(**columns, reader=readers[0], durations=durations)
        position = {r: i for i, r in enumerate(readers)}
        part = np.concatenate([
            np.full(len(m), position[m.reader], dtype=np.int64) if m.part is None
            else np.array([position[r] for r in m.readers], dtype=np.int64)[m.part] for m in manifests])
        return cls(**columns, reader=readers[0], durations=durations, part=part, readers=readers)

    @property
    def total_seconds(self) -> float:
        return float(self.durations.sum()) if self.durations is not None else float("nan")


def not_utf8(path: Path) -> DataError:
    """The one-line error for a text file that failed to read as UTF-8: the first bad byte's line and offset in
    the file (a decoder's own offset is within its buffer), and the fix.

    Not a guess at the encoding: the file is read as UTF-8 or refused (Latin-1 is the usual culprit, from
    spreadsheets on Windows, so the fix names it as the example).
    """
    fix = f"save it as UTF-8, e.g. from Latin-1: iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return DataError(f"{path} line {line} (byte {error.start + 1}, 0x{data[error.start]:02x}) is not UTF-8; {fix}")
    return DataError(f"{path} is not UTF-8 (it changed while being read); {fix}")


class ClipFiles:
    """Audio files in one folder: ``clips_dir / key`` (a release's ``clips/``; ``""`` for absolute keys).

    A class (not a lambda) so DataLoader workers can unpickle it.
    """

    def __init__(self, clips_dir: str | Path) -> None:
        self.clips_dir = str(clips_dir)

    def __call__(self, key: str) -> AudioSource:
        return os.path.join(self.clips_dir, key)
