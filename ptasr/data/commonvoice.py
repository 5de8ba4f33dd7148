"""Common Voice sources and manifests: which clips exist, what they say, how long they are, which to keep.

Two sources give the same :class:`Manifest` (parallel columns, one row per clip):

- :class:`CommonVoiceRelease` — a release language folder ``cv-corpus-<ver>/<lang>/`` with ``train.tsv``,
  ``dev.tsv``, ``test.tsv``, ``validated.tsv``, ``clip_durations.tsv`` and ``clips/``, or the ``.tar.gz``
  archive Mozilla Data Collective distributes (extracted once into the cache folder);
- :class:`HFDatasetSource` — a Hugging Face ``datasets`` dataset (hub id or local folder), read with audio
  decoding off; we decode the bytes ourselves (``datasets`` 4+ decodes through torchcodec and FFmpeg).

:func:`build_manifest` applies the filters (missing files, empty text, duration bounds, unreadable headers,
CTC feasibility) and returns a :class:`FilterReport` with the count of every reason, which the data module
logs once. Everything is column-wise lists so a million-row release stays within seconds and a few hundred MB.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import logging
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ptasr.compat import dataset_fingerprint
from ptasr.data.audio import SAMPLE_RATE, AudioDecodeError, AudioSource, audio_duration
from ptasr.data.text import TextNormalizer
from ptasr.errors import DataError, MissingPathError, SettingError
from ptasr.lengths import conv_output_lengths

log = logging.getLogger(__name__)

# canonical column -> the header names releases have used for it (v17+ renamed accent -> accents)
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "path": ("path",),
    "sentence": ("sentence",),
    "client_id": ("client_id",),
    "age": ("age",),
    "gender": ("gender",),
    "accent": ("accents", "accent"),
}
REQUIRED_COLUMNS = ("path", "sentence")
UNIQUE_COLUMNS = {"path", "sentence", "clip"}  # columns whose values rarely repeat (not worth sharing)
SPLIT_ALIASES = {"dev": ("dev", "validation"), "validation": ("validation", "dev")}


def default_cache_dir() -> Path:
    """``$PTASR_CACHE``, else ``$XDG_CACHE_HOME/ptasr``, else ``~/.cache/ptasr``."""
    if "PTASR_CACHE" in os.environ:
        return Path(os.environ["PTASR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptasr"


# ---------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Manifest:
    """One row per clip, column-wise.

    ``ids`` is the clip path as the release TSV writes it (``common_voice_pt_123.mp3``), for HF datasets the
    audio file name when it has one, for manifest files the audio file's path; ``keys`` is what ``reader``
    needs to fetch the audio (the same list as ``ids`` for releases and manifest files). ``durations``
    (seconds) is ``None`` until :func:`build_manifest` fills it (a manifest file's listed durations, NaN
    where absent, until then).

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


# ---------------------------------------------------------------------------------------------------------
# TSV parsing
# ---------------------------------------------------------------------------------------------------------


def read_tsv(path: str | Path, columns: dict[str, tuple[str, ...]] = COLUMN_ALIASES) -> dict[str, list[str]]:
    """Read a Common Voice TSV column-wise by header name.

    Any column order and both schemas (``accent`` before v17, ``accents`` + ``sentence_id`` + ``variant``
    + ... since) are accepted; LF or CRLF line ends; fields are taken verbatim (QUOTE_NONE: a sentence may
    start with an unmatched ``"``). Columns in ``columns`` that the file lacks come back as empty strings.
    Rows with the wrong number of fields are skipped and logged, not guessed at.

    Returns:
        ``{canonical name: list of values}`` for every key of ``columns``.
    """
    path = Path(path)
    # newline="" lets csv see "\r\n" as one line end instead of leaving "\r" in the last field; QUOTE_NONE
    # because Common Voice sentences carry unmatched quotes, and the default dialect would read from such a
    # quote across tabs and line ends up to the next quote, merging rows
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty: a Common Voice TSV starts with a header line")
        where = _column_positions(path, header, columns)
        out: dict[str, list[str]] = {name: [] for name in columns}
        # speaker, age, gender and accent repeat across rows: one string object per distinct value instead of
        # one per row saves hundreds of MB on a million-row release
        shared: dict[str, dict[str, str]] = {name: {} for name in columns if name not in UNIQUE_COLUMNS}
        bad_rows = 0
        for row in reader:
            if len(row) != len(header):
                bad_rows += bool(row)  # blank lines (e.g. a trailing one) are not worth a warning
                continue
            for name, position in where.items():
                value = row[position] if position is not None else ""
                out[name].append(shared[name].setdefault(value, value) if name in shared else value)
    if bad_rows:
        log.warning("%s: skipped %d rows whose field count differs from the header's %d", path, bad_rows, len(header))
    return out


def _column_positions(path: Path, header: list[str], columns: dict[str, tuple[str, ...]]) -> dict[str, int | None]:
    positions = {name.strip(): i for i, name in enumerate(header)}
    where = {name: next((positions[a] for a in aliases if a in positions), None) for name, aliases in columns.items()}
    missing = [name for name in REQUIRED_COLUMNS if name in columns and where[name] is None]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing}; its header is {header}. Is this a Common Voice "
                         f"split TSV (train/dev/test/validated.tsv)?")
    return where


def read_clip_durations(path: str | Path) -> dict[str, float]:
    """``clip_durations.tsv`` (``clip``, ``duration[ms]``) as ``{clip: seconds}``."""
    return dict(_clip_durations(Path(path)))


def _clip_durations(path: Path) -> Iterator[tuple[str, float]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [name.strip() for name in next(reader, [])]
        if "clip" not in header or not {"duration[ms]", "duration"} & set(header):
            raise DataError(f"{path} has the header {header}; clip_durations.tsv has clip and duration[ms]")
        clip = header.index("clip")
        ms = header.index("duration[ms]" if "duration[ms]" in header else "duration")
        for row in reader:
            if len(row) == len(header):
                yield row[clip], int(row[ms]) / 1000.0


def _normalize(normalizer: Callable[[str], str], texts: list[str]) -> list[str]:
    """Normalised ``texts``: in chunks where the normaliser can (:meth:`TextNormalizer.many`), else one by one."""
    many = getattr(normalizer, "many", None)
    return many(texts) if many is not None else [normalizer(t) for t in texts]


def first_rows(keys: Sequence[str]) -> np.ndarray:
    """Boolean (N,): the first row of each key. A clip listed twice is a duplicate row, not a missing file.

    >>> first_rows(["a.mp3", "b.mp3", "a.mp3"]).tolist()
    [True, True, False]
    """
    first: dict[str, int] = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    keep = np.zeros(len(keys), dtype=bool)
    keep[list(first.values())] = True
    return keep


def _row_index(keys: Sequence[str]) -> dict[str, int]:
    """``{key: row}``; its strings are the manifest's own, so this costs the dict only."""
    return {key: row for row, key in enumerate(keys)}


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


class ClipFiles:
    """Audio of a release: ``clips_dir / key``. A class (not a lambda) so DataLoader workers can unpickle it."""

    def __init__(self, clips_dir: str | Path) -> None:
        self.clips_dir = str(clips_dir)

    def __call__(self, key: str) -> AudioSource:
        return os.path.join(self.clips_dir, key)


class CommonVoiceRelease:
    """A Common Voice release language folder, a folder holding language folders, or a ``.tar(.gz)`` archive.

    Args:
        root: the folder with ``train.tsv`` and ``clips/``; or ``cv-corpus-<ver>/`` (then ``language`` picks
            the sub-folder); or the release archive, extracted on first use into ``cache_dir/releases``.
        language: the language folder name (e.g. ``"pt"``) where ``root`` holds more than one.
        cache_dir: where archives are extracted and header durations cached (default
            :func:`default_cache_dir`).
    """

    def __init__(self, root: str | Path, language: str | None = None, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        root = Path(root).expanduser()
        if not root.exists():
            raise MissingPathError(f"Common Voice root {root} does not exist; pass the extracted language folder "
                                    f"(cv-corpus-<ver>/<lang>) or the release .tar.gz as data.root")
        if root.is_file():
            root = extract_release(root, self.cache_dir / "releases")
        self.root = find_language_dir(root, language)
        self.clips_dir = self.root / "clips"
        self.reader = ClipFiles(self.clips_dir)

    def __repr__(self) -> str:
        return f"CommonVoiceRelease({str(self.root)!r})"

    def splits(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.tsv") if p.stem != "clip_durations")

    def read_split(self, split: str, normalizer: TextNormalizer) -> Manifest:
        """Rows of ``<split>.tsv`` with normalised texts (no durations yet)."""
        path = self.root / f"{split}.tsv"
        if not path.is_file():
            raise MissingPathError(f"{path} does not exist; splits in {self.root}: {self.splits()}")
        table = read_tsv(path)
        return Manifest(ids=table["path"], keys=table["path"], texts=_normalize(normalizer, table["sentence"]),
                        client_ids=table["client_id"], ages=table["age"], genders=table["gender"],
                        accents=table["accent"], reader=self.reader)

    def exists(self, manifest: Manifest) -> np.ndarray:
        """Boolean (N,): which clips are in ``clips/``. One directory scan, not a stat per clip."""
        present = np.zeros(len(manifest), dtype=bool)
        if self.clips_dir.is_dir():
            rows = _row_index(manifest.keys)
            with os.scandir(self.clips_dir) as entries:
                for entry in entries:
                    row = rows.get(entry.name)
                    if row is not None:
                        present[row] = True
        return present

    def durations(self, manifest: Manifest) -> np.ndarray:
        """Seconds (N,) from ``clip_durations.tsv``; clips it lacks are read from their headers (cached).

        Unreadable headers give NaN (filtered and counted by :func:`build_manifest`).
        """
        result = np.full(len(manifest), np.nan)
        table_path = self.root / "clip_durations.tsv"
        if table_path.is_file():
            # streamed into the rows we need: the table lists every clip of the release, ours are a subset
            rows = _row_index(manifest.keys)
            for clip, seconds in _clip_durations(table_path):
                row = rows.get(clip)
                if row is not None:
                    result[row] = seconds
        unknown = np.flatnonzero(np.isnan(result))
        if len(unknown):
            cache = HeaderDurationCache(self.cache_dir / "durations", self.clips_dir)
            result[unknown] = cache.durations([manifest.keys[i] for i in unknown])
        return result


class HeaderDurationCache:
    """Durations read from audio headers, cached on disk per clips folder and keyed by (name, size, mtime).

    Older Common Voice releases have no ``clip_durations.tsv``; reading a header costs about a millisecond,
    so a big release would pay minutes on every start without this cache.
    """

    def __init__(self, cache_dir: Path, clips_dir: Path) -> None:
        digest = hashlib.sha1(str(clips_dir.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir / f"{digest}.tsv"
        self.clips_dir = clips_dir

    def durations(self, names: Sequence[str]) -> np.ndarray:
        cached = self._load()
        result = np.full(len(names), np.nan)
        fresh: list[str] = []
        for i, name in enumerate(names):
            try:
                stat = os.stat(self.clips_dir / name)
            except FileNotFoundError:
                continue
            stamp = f"{stat.st_size}\t{stat.st_mtime_ns}"
            if name in cached and cached[name][0] == stamp:
                result[i] = cached[name][1]
                continue
            try:
                result[i] = audio_duration(self.clips_dir / name)
            except AudioDecodeError as error:
                log.warning("%s", error)
            cached[name] = (stamp, result[i])
            fresh.append(name)
        if fresh:
            log.info("read the headers of %d clips in %s (cached in %s)", len(fresh), self.clips_dir, self.path)
            self._save(cached)
        return result

    def _load(self) -> dict[str, tuple[str, float]]:
        if not self.path.is_file():
            return {}
        cached = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                name, size, mtime, seconds = line.rstrip("\n").split("\t")
                cached[name] = (f"{size}\t{mtime}", float(seconds))
        return cached

    def _save(self, cached: dict[str, tuple[str, float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: DDP ranks may build the same cache at once, and a reader never sees half a file
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{name}\t{stamp}\t{float(seconds)!r}\n" for name, (stamp, seconds) in cached.items())
        os.replace(tmp, self.path)


def save_array_atomically(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file, then rename: DDP ranks may write the same cache at once, and a reader
    never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def extract_release(archive: Path, releases_dir: Path) -> Path:
    """Extract a release archive once; later calls (and other DDP ranks) reuse the folder.

    The folder name carries the archive's size and mtime, so a re-downloaded archive is extracted afresh.
    """
    if not tarfile.is_tarfile(archive):
        raise SettingError(f"{archive} is a file but not a tar archive; data.root takes a Common Voice language "
                         f"folder or its .tar.gz release archive")
    stat = archive.stat()
    name = archive.name.split(".tar")[0].removesuffix(".tgz")
    target = releases_dir / f"{name}-{stat.st_size}-{stat.st_mtime_ns}"
    if target.is_dir():
        return target
    releases_dir.mkdir(parents=True, exist_ok=True)
    # DDP ranks all build the data module (LightningCLI reads data.vocab_size before any barrier): the lock
    # makes one extract while the others wait, and then find the folder
    with open(releases_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            tmp = releases_dir / f".{target.name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)  # left by an extraction that was killed
            log.info("extracting %s into %s (once)", archive, target)
            with tarfile.open(archive, "r:*") as tar:
                # filter="data" refuses absolute paths, links out of the folder and device files
                tar.extractall(tmp, filter="data")
            os.rename(tmp, target)  # atomic: a folder named `target` is always complete
    return target


def find_language_dir(root: Path, language: str | None) -> Path:
    """The folder holding the split TSVs: ``root`` itself, or one level or two below it."""
    if (root / "train.tsv").is_file() or (root / "validated.tsv").is_file():
        return root
    candidates = sorted({p.parent for pattern in ("*/validated.tsv", "*/train.tsv", "*/*/validated.tsv",
                                                  "*/*/train.tsv") for p in root.glob(pattern)})
    if language is not None:
        candidates = [p for p in candidates if p.name == language]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        which = f" for language {language!r}" if language else ""
        raise MissingPathError(f"no Common Voice split TSVs (train.tsv/validated.tsv){which} in {root} or the two "
                                f"levels below it")
    raise SettingError(f"{root} holds several languages {[p.name for p in candidates]}; choose one with data.language")


class HFAudioColumn:
    """Audio of Hugging Face datasets rows: ``key = "<split>/<row>"`` -> that row's bytes (or file path)."""

    def __init__(self, datasets: dict[str, Any], column: str) -> None:
        self.datasets = datasets
        self.column = column

    def __call__(self, key: str) -> AudioSource:
        split, row = key.rsplit("/", 1)
        audio = self.datasets[split][int(row)][self.column]
        if isinstance(audio, str):
            return audio
        return audio.get("bytes") or audio["path"]


class HFDatasetSource:
    """A Hugging Face ``datasets`` dataset with an audio column and a transcript column.

    Args:
        name: hub id, local dataset folder (e.g. of parquet files, split by file name), or a builder name
            such as ``"parquet"`` with ``data_dir``. (``"audiofolder"`` needs torchcodec in ``datasets`` 4+,
            even with decoding off.)
        config: dataset configuration (e.g. a language code), if it has several.
        data_dir: passed to ``load_dataset``.
        audio_column: column holding audio (an ``Audio`` feature or file paths).
        text_column: column holding the transcript.
        cache_dir: where header durations are cached (default :func:`default_cache_dir`).
    """

    def __init__(self, name: str, config: str | None = None, data_dir: str | None = None, audio_column: str = "audio",
                 text_column: str = "sentence", cache_dir: str | Path | None = None) -> None:
        self.name, self.config, self.data_dir = name, config, data_dir
        self.audio_column, self.text_column = audio_column, text_column
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._datasets: dict[str, Any] = {}
        self.reader = HFAudioColumn(self._datasets, audio_column)

    def __repr__(self) -> str:
        return f"HFDatasetSource({self.name!r}, config={self.config!r})"

    def _load(self, split: str) -> Any:
        if split not in self._datasets:
            import datasets  # only this source needs it; keep `import ptasr.data` light in workers

            dataset = datasets.load_dataset(self.name, self.config, data_dir=self.data_dir, split=split)
            for column in (self.audio_column, self.text_column):
                if column not in dataset.column_names:
                    raise DataError(f"{self.name} split {split!r} has no column {column!r}; its columns are "
                                     f"{dataset.column_names} (set data.hf_audio_column / data.hf_text_column)")
            if isinstance(dataset.features[self.audio_column], datasets.Audio):
                # decode=False: rows give {"bytes", "path"} and we decode with soundfile, no torchcodec/FFmpeg
                dataset = dataset.cast_column(self.audio_column, datasets.Audio(decode=False))
            self._datasets[split] = dataset
        return self._datasets[split]

    def resolve_split(self, split: str) -> str:
        """``split`` itself, or its other name (CV releases say "dev", HF copies said "validation")."""
        import datasets

        available = datasets.get_dataset_split_names(self.name, self.config, data_dir=self.data_dir)
        for name in SPLIT_ALIASES.get(split, (split,)):
            if name in available:
                return name
        raise SettingError(f"{self.name} has no split {split!r}; it has {available}. Name splits it has: train.py's "
                           f"data.train_splits (e.g. [train]), data.val_split, data.test_split; ptasr evaluate's --split")

    def read_split(self, split: str, normalizer: TextNormalizer) -> Manifest:
        split = self.resolve_split(split)
        dataset = self._load(split)
        sentences = [str(s) for s in dataset[self.text_column]]
        keys = [f"{split}/{i}" for i in range(len(dataset))]
        ids = [os.path.basename(path) or key for path, key in zip(self._audio_paths(split), keys)]
        meta = {name: self._column(dataset, COLUMN_ALIASES[name]) for name in ("client_id", "age", "gender", "accent")}
        return Manifest(ids=ids, keys=keys, texts=_normalize(normalizer, sentences),
                        client_ids=meta["client_id"], ages=meta["age"], genders=meta["gender"],
                        accents=meta["accent"], reader=self.reader)

    def _audio_batches(self, split: str) -> Iterator[Any]:
        """The audio column in batches of 256 rows: ``{"bytes", "path"}`` dicts (or plain paths)."""
        for batch in self._load(split).select_columns([self.audio_column]).iter(batch_size=256):
            yield from batch[self.audio_column]

    def _audio_paths(self, split: str) -> list[str]:
        """Per row: the audio file path it names ("" if none), read without touching the bytes twice."""
        paths = []
        for audio in self._audio_batches(split):
            paths.append(audio if isinstance(audio, str) else ((audio or {}).get("path") or ""))
        return paths

    @staticmethod
    def _column(dataset: Any, aliases: tuple[str, ...]) -> list[str]:
        for alias in aliases:
            if alias in dataset.column_names:
                return ["" if v is None else str(v) for v in dataset[alias]]
        return [""] * len(dataset)

    def exists(self, manifest: Manifest) -> np.ndarray:
        """Rows with bytes always exist; rows that only name a file exist if the file does."""
        rows = _split_rows(manifest.keys)
        present = {split: np.array([_audio_present(a) for a in self._audio_batches(split)]) for split in set(rows[0])}
        return np.array([present[split][row] for split, row in zip(*rows)], dtype=bool)

    def durations(self, manifest: Manifest) -> np.ndarray:
        """Seconds (N,) from the audio headers (HF copies of Common Voice carry none), NaN if unreadable.

        Read once per split and cached under ``cache_dir/durations`` by the dataset's fingerprint.
        """
        rows = _split_rows(manifest.keys)
        per_split = {split: self._split_durations(split) for split in set(rows[0])}
        return np.array([per_split[split][row] for split, row in zip(*rows)], dtype=np.float64)

    def _split_durations(self, split: str) -> np.ndarray:
        path = self.cache_dir / "durations" / f"hf-{dataset_fingerprint(self._load(split))}.npy"
        if path.is_file():
            return np.load(path)
        result = []
        for audio in self._audio_batches(split):
            source = audio if isinstance(audio, str) else ((audio or {}).get("bytes") or (audio or {}).get("path"))
            try:
                result.append(audio_duration(source or b""))
            except AudioDecodeError as error:
                log.warning("%s (split %s row %d)", error, split, len(result))
                result.append(np.nan)
        durations = np.array(result, dtype=np.float64)
        save_array_atomically(path, durations)
        return durations


def _split_rows(keys: Sequence[str]) -> tuple[list[str], list[int]]:
    """``["train/0", "test/3"]`` -> ``(["train", "test"], [0, 3])``."""
    pairs = [key.rsplit("/", 1) for key in keys]
    return [split for split, _ in pairs], [int(row) for _, row in pairs]


def _audio_present(audio: Any) -> bool:
    """A row's audio is usable if it carries bytes or names a file that exists."""
    if isinstance(audio, str):
        return os.path.isfile(audio)
    audio = audio or {}
    return bool(audio.get("bytes")) or os.path.isfile(audio.get("path") or "")


Source = CommonVoiceRelease | HFDatasetSource


# ---------------------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FilterReport:
    """How many rows of one split each filter removed, in the order the filters run."""

    split: str
    total: int
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.total - sum(self.removed.values())

    def __str__(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.removed.items() if count) or "none"
        return f"{self.split}: kept {self.kept} of {self.total} clips; removed: {reasons}"


@dataclass(frozen=True)
class FilterSettings:
    """Bounds that decide which clips are usable for training and evaluation."""

    min_duration: float = 0.0
    max_duration: float | None = 20.0  # the reference's max_duration_in_seconds
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    check_files: bool = True


def build_manifest(source: Source, splits: Sequence[str], normalizer: TextNormalizer,
                   settings: FilterSettings) -> tuple[Manifest, list[FilterReport]]:
    """Read, normalise and filter ``splits`` of ``source``; one report per split."""
    manifests, reports = [], []
    for split in splits:
        manifest, report = filter_manifest(source, source.read_split(split, normalizer), settings, split)
        manifests.append(manifest)
        reports.append(report)
    return Manifest.concat(manifests), reports


def filter_manifest(source: Source, manifest: Manifest, settings: FilterSettings,
                    split: str) -> tuple[Manifest, FilterReport]:
    """Drop unusable rows and fill in durations. Cheap filters run first so headers are read only when needed."""
    report = FilterReport(split, len(manifest))

    def apply(reason: str, mask: np.ndarray) -> None:
        nonlocal manifest
        report.removed[reason] = int((~mask).sum())
        if not mask.all():
            manifest = manifest.select(np.flatnonzero(mask))

    unique = first_rows(manifest.keys)
    if not unique.all():  # counted only where it happens, so that reports of clean data keep their fields
        apply("duplicate row", unique)
    if settings.check_files:
        apply("missing file", source.exists(manifest))
    apply("empty text", np.array([bool(t) for t in manifest.texts], dtype=bool))
    manifest = replace(manifest, durations=source.durations(manifest))  # a copy: the caller's rows stay as read
    apply("unreadable audio header", ~np.isnan(manifest.durations))
    too_long = manifest.durations > settings.max_duration if settings.max_duration is not None else False
    apply("outside duration bounds", ~((manifest.durations < settings.min_duration) | too_long))
    apply("CTC-infeasible", ctc_feasible(manifest.texts, manifest.durations, settings))
    return manifest, report


def ctc_feasible(texts: Sequence[str], durations: np.ndarray, settings: FilterSettings) -> np.ndarray:
    """Boolean (N,): CTC can align each text to its audio, i.e. labels + repeated neighbours <= frames.

    CTC needs a blank between two equal consecutive labels, so "ss" costs three frames. Frames come from the
    one shared formula (:func:`ptasr.lengths.conv_output_lengths`) applied to the 16 kHz sample count.
    """
    samples = torch.from_numpy(np.floor(durations * SAMPLE_RATE).astype(np.int64))
    frames = conv_output_lengths(samples, settings.conv_kernel, settings.conv_stride).numpy()
    labels = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    feasible = labels <= frames
    # repeats <= labels - 1, so only rows with 2 * labels > frames can fail on repeats: count only those
    for i in np.flatnonzero(feasible & (2 * labels > frames)):
        feasible[i] = ctc_frames_needed(texts[i]) <= frames[i]
    return feasible


def ctc_frames_needed(text: str) -> int:
    """Fewest frames CTC needs to emit ``text``: one per label, plus a blank between two equal neighbours.

    >>> ctc_frames_needed("passo")
    6
    """
    return len(text) + sum(a == b for a, b in zip(text, text[1:]))


# ---------------------------------------------------------------------------------------------------------
# Leakage guard
# ---------------------------------------------------------------------------------------------------------


def check_leakage(train: Manifest, evaluation: Manifest, eval_name: str,
                  action: Literal["warn", "raise", "ignore"] = "warn") -> tuple[int, int]:
    """Count evaluation clips whose clip id or normalised sentence also occurs in training; warn or raise.

    Returns:
        ``(shared clips, shared sentences)``, counted over evaluation rows.
    """
    if action == "ignore":
        return 0, 0
    train_ids, train_texts = set(train.ids), set(train.texts)
    shared_clips = sum(i in train_ids for i in evaluation.ids)
    shared_texts = [t for t in evaluation.texts if t in train_texts]
    if shared_clips or shared_texts:
        message = (f"leakage: {shared_clips} of {len(evaluation)} {eval_name} clips and {len(shared_texts)} of its "
                   f"sentences (e.g. {shared_texts[:3]}) also occur in training; evaluation on them overstates "
                   f"accuracy. Use disjoint splits (e.g. train_splits=[train, dev], val_split=test), or set "
                   f"data.leakage=ignore if this is intended")
        if action == "raise":
            raise DataError(message)
        log.warning(message)
    return shared_clips, len(shared_texts)
