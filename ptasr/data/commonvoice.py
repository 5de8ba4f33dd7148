"""A Common Voice release as a source: a language folder ``cv-corpus-<ver>/<lang>/`` (``train.tsv``,
``dev.tsv``, ``test.tsv``, ``validated.tsv``, ``clip_durations.tsv``, ``clips/``), a folder holding several,
or the ``.tar.gz`` archive Mozilla Data Collective distributes (extracted once into the cache folder), read
into a :class:`~ptasr.data.table.Manifest`.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import shutil
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ptasr.data.cache import HeaderDurationCache, default_cache_dir
from ptasr.data.table import ClipFiles, Manifest, not_utf8
from ptasr.data.text import TextNormalizer, normalize_texts
from ptasr.errors import DataError, MissingPathError, SettingError

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
    try:
        out, bad_rows, fields = _read_tsv(path, columns)
    except UnicodeDecodeError as error:
        raise not_utf8(path) from error
    if bad_rows:
        log.warning("%s: skipped %d rows whose field count differs from the header's %d", path, bad_rows, fields)
    return out


def _read_tsv(path: Path, columns: dict[str, tuple[str, ...]]) -> tuple[dict[str, list[str]], int, int]:
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
    return out, bad_rows, len(header)


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


def _row_index(keys: Sequence[str]) -> dict[str, int]:
    """``{key: row}``; its strings are the manifest's own, so this costs the dict only."""
    return {key: row for row, key in enumerate(keys)}


# ---------------------------------------------------------------------------------------------------------
# The release
# ---------------------------------------------------------------------------------------------------------


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
                                    f"(cv-corpus-<ver>/<lang>) or the release .tar.gz as the source's path")
        if root.is_file():
            root = extract_release(root, self.cache_dir / "releases")
        self._place(find_language_dir(root, language), clips_dir=None)

    @classmethod
    def around(cls, split_file: str | Path, cache_dir: str | Path | None = None) -> CommonVoiceRelease:
        """The release that one split TSV belongs to (``cv/pt/test.tsv``: split ``test``), even where the folder
        holds that TSV alone; its clips are in ``clips/`` beside it, else beside the TSV itself."""
        release = cls.__new__(cls)
        release.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        root = Path(split_file).expanduser().resolve().parent
        release._place(root, clips_dir=None if (root / "clips").is_dir() else root)
        return release

    def _place(self, root: Path, clips_dir: Path | None) -> None:
        self.root = root
        self.clips_dir = clips_dir if clips_dir is not None else root / "clips"
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
        return Manifest(ids=table["path"], keys=table["path"], texts=normalize_texts(normalizer, table["sentence"]),
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

        Unreadable headers give NaN (filtered and counted by :func:`~ptasr.data.filters.build_manifest`).
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


def extract_release(archive: Path, releases_dir: Path) -> Path:
    """Extract a release archive once; later calls (and other DDP ranks) reuse the folder.

    The folder name carries the archive's size and mtime, so a re-downloaded archive is extracted afresh.
    """
    if not tarfile.is_tarfile(archive):
        raise SettingError(f"{archive} is a file but not a tar archive; a Common Voice source is a language "
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
    raise SettingError(f"{root} holds several languages {[p.name for p in candidates]}; choose one with the source's language (language: pt)")
